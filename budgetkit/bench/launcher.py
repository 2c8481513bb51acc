"""A private ``redis-server`` for one benchmark run: a free loopback port, no persistence.

Standard library only. The server is bound to 127.0.0.1, never on the default port 6379, with RDB
snapshots and AOF off, in a temporary directory that is removed when it stops. It is stopped on
exit of the ``with`` block, also after an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

DEFAULT_REDIS_PORT = 6379
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
PORT_ATTEMPTS_MAX = 5
PING_TIMEOUT_S = 0.5
POLL_INTERVAL_S = 0.02


class LauncherError(RuntimeError):
    """redis-server is missing, or did not start."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 other than 6379."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != DEFAULT_REDIS_PORT:
            return port
    raise LauncherError("no free port found")


def ping(port: int, timeout_s: float = PING_TIMEOUT_S) -> bool:
    """True if 127.0.0.1:port answers ``PING`` with ``+PONG`` (raw RESP)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            data = b""
            while b"\r\n" not in data and len(data) < 64:
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """A redis-server child process, as a context manager; ``url`` once started."""

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary or shutil.which("redis-server")
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        if self._binary is None:
            raise LauncherError("redis-server not found on PATH (or pass --redis-url)")
        self._dir = Path(tempfile.mkdtemp(prefix="budgetkit-bench-"))
        last = "not attempted"
        for _ in range(PORT_ATTEMPTS_MAX):
            self.port = free_port()
            try:
                self._launch(self._binary, self._dir)
                return self
            except LauncherError as error:  # e.g. the port was taken meanwhile
                last = str(error)
        self.stop()
        raise LauncherError(last)

    def _launch(self, binary: str, directory: Path) -> None:
        logfile = directory / "redis.log"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(directory), "--logfile", str(logfile)]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the server ourselves
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise LauncherError(f"redis-server exited with code {code}: {_tail(logfile)}")
            if ping(self.port):
                return
            time.sleep(POLL_INTERVAL_S)
        self._terminate()
        raise LauncherError(f"redis-server did not answer PING in {STARTUP_TIMEOUT_S}s")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Terminates the server (SIGTERM, then SIGKILL) and removes its directory."""
        try:
            self._terminate()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(logfile: Path, limit: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return logfile.read_text(errors="replace")[-limit:]
    return "(no log)"
