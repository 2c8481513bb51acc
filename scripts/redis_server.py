#!/usr/bin/env python3
"""Start and stop private ``redis-server`` instances for tests and benchmarks.

Importable module and CLI, standard library only (no redis-py needed).

Module use::

    with RedisServer(appendonly=True) as server:   # temp dir, free loopback port
        server.url        # "redis://127.0.0.1:<port>/0"
        server.kill()     # SIGKILL (crash test)
        server.restart()  # same port and dir: data kept if appendonly is on

CLI use (scripts/test.sh)::

    url=$(python3 scripts/redis_server.py start --dir "$tmpdir")   # prints the url
    python3 scripts/redis_server.py stop --dir "$tmpdir"           # reads DIR/redis.pid

The server is always bound to 127.0.0.1, never on port 6379 (so a system redis is never touched),
with RDB snapshots disabled (``--save ''``). With ``appendonly=True`` it also uses
``--appendfsync always`` so that a SIGKILL right after a reply loses nothing; pass
``extra_args=["--appendfsync", "everysec"]`` to override (later arguments win).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEFAULT_REDIS_PORT",
    "PIDFILE_NAME",
    "RedisServer",
    "RedisServerError",
    "find_free_port",
    "ping",
    "redis_server_binary",
    "stop_pid",
]

DEFAULT_REDIS_PORT = 6379
PIDFILE_NAME = "redis.pid"
LOGFILE_NAME = "redis.log"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class RedisServerError(RuntimeError):
    """The redis-server could not be found, started or stopped."""


def redis_server_binary() -> str | None:
    """Path of the ``redis-server`` binary on PATH (``$REDIS_SERVER`` overrides), or None."""
    override = os.environ.get("REDIS_SERVER")
    if override:
        return shutil.which(override) or (override if os.access(override, os.X_OK) else None)
    return shutil.which("redis-server")


def find_free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != DEFAULT_REDIS_PORT:
            return port


def ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True if a server on host:port answers ``PING`` with ``+PONG`` (raw RESP, no redis-py)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"+PONG")
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (reaped or not, a zombie no longer serves)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3, after the parenthesised command name (which may contain spaces).
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
    return state not in ("Z", "X")


def _pid_is_redis(pid: int) -> bool:
    """Best effort guard against pid reuse: the process looks like a redis-server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc access: trust the pidfile
    return b"redis-server" in cmdline


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM pid, wait up to ``timeout`` seconds, then SIGKILL; return once it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.02)
    if _pid_alive(pid):
        raise RedisServerError(f"redis-server pid {pid} did not exit after SIGKILL")


# Servers started in this process and not yet stopped: killed at interpreter exit so that an
# aborted test run leaves no redis-server behind.
_LIVE: set[RedisServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.kill()


class RedisServer:
    """A private redis-server on 127.0.0.1, as a context manager.

    ``dir`` holds the log, the pidfile and any AOF files; when None a temporary directory is
    created on ``start()`` and removed on ``stop()`` (not on ``kill()``/``restart()``).
    ``port`` None means a free port is chosen (and retried if another process grabs it first).
    """

    def __init__(
        self,
        dir: Path | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        appendonly: bool = False,
        startup_timeout: float = STARTUP_TIMEOUT,
        binary: str | None = None,
    ) -> None:
        if port == DEFAULT_REDIS_PORT:
            raise ValueError("refusing to use port 6379 (the default port of a system redis)")
        self._given_dir = Path(dir) if dir is not None else None
        self._tmpdir: Path | None = None
        self._port = port
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        d = self._given_dir or self._tmpdir
        if d is None:
            raise RedisServerError("server has no directory yet (not started)")
        return d

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("server has no port yet (not started)")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RedisServerError("server is not running")
        return self._proc.pid

    @property
    def pidfile(self) -> Path:
        return self.dir / PIDFILE_NAME

    @property
    def logfile(self) -> Path:
        return self.dir / LOGFILE_NAME

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The argv used to launch redis-server."""
        binary = self._binary or redis_server_binary()
        if binary is None:
            raise RedisServerError(
                "redis-server not found on PATH; install it, e.g. "
                "`apt-get install -y redis-server` (Debian/Ubuntu)"
            )
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.logfile),
        ]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        return args + list(self.extra_args)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Launch the server and wait until it answers PING. Returns self."""
        if self.running:
            raise RedisServerError(f"already running (pid {self.pid})")
        if self._given_dir is None and self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="budgetkit-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        choose_port = self._port is None
        attempts = 5 if choose_port else 1
        last_error: RedisServerError | None = None
        for _ in range(attempts):
            if choose_port:
                self._port = find_free_port()
            try:
                self._launch()
                return self
            except RedisServerError as exc:  # e.g. the free port was taken meanwhile
                last_error = exc
        assert last_error is not None
        raise last_error

    def _launch(self) -> None:
        if ping(self.port, timeout=0.2):
            raise RedisServerError(f"something already answers PING on 127.0.0.1:{self.port}")
        log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal does not reach it; we stop it
            close_fds=True,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                raise RedisServerError(
                    f"redis-server exited with code {code} during startup on port "
                    f"{self.port}:\n{self._log_tail(log_offset)}"
                )
            if ping(self.port, timeout=0.5):
                self.pidfile.write_text(f"{self._proc.pid}\n")
                return
            time.sleep(0.02)
        with contextlib.suppress(Exception):
            self.kill()
        raise RedisServerError(
            f"redis-server did not answer PING within {self.startup_timeout}s on port "
            f"{self.port}:\n{self._log_tail(log_offset)}"
        )

    def _log_tail(self, offset: int = 0, limit: int = 4000) -> str:
        try:
            with self.logfile.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return "(no log)"
        return data[-limit:].decode(errors="replace") or "(empty log)"

    def _forget(self) -> None:
        self._proc = None
        _LIVE.discard(self)
        with contextlib.suppress(OSError):
            self.pidfile.unlink()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Removes an owned temp dir."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
            self._forget()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def kill(self) -> None:
        """SIGKILL the server (crash simulation). Keeps dir and port for ``restart()``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(5.0)
        self._forget()

    def restart(self) -> RedisServer:
        """Stop (SIGTERM) if running, then start again on the same port and dir."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
            self._forget()
        if self._port is None or (self._given_dir is None and self._tmpdir is None):
            return self.start()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._launch()
        return self

    def detach(self) -> int:
        """Leave the server running after this object is gone (CLI use). Returns its pid."""
        proc = self._proc
        if proc is None:
            raise RedisServerError("server is not running")
        pid = proc.pid
        # Keep Popen.__del__ from warning about / reaping a child we deliberately leave behind.
        proc.returncode = 0
        self._proc = None
        self._tmpdir = None  # never remove a directory the detached server uses
        _LIVE.discard(self)
        return pid

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self._proc is not None else "stopped"
        return f"RedisServer(port={self._port}, dir={self._given_dir or self._tmpdir}, {state})"


# -- CLI ----------------------------------------------------------------------------------------


def _cli_start(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    pidfile = directory / PIDFILE_NAME
    if pidfile.exists():
        with contextlib.suppress(ValueError, OSError):
            old = int(pidfile.read_text().strip())
            if _pid_alive(old) and _pid_is_redis(old):
                print(f"a redis-server (pid {old}) already runs from {directory}", file=sys.stderr)
                return 1
    try:
        server = RedisServer(
            directory,
            port=args.port,
            appendonly=args.appendonly,
            startup_timeout=args.timeout,
            extra_args=args.extra,
        )
        server.start()
    except (RedisServerError, ValueError) as exc:
        print(f"redis_server.py: {exc}", file=sys.stderr)
        return 1
    server.detach()
    print(server.url, flush=True)
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    pidfile = Path(args.dir) / PIDFILE_NAME
    try:
        pid = int(pidfile.read_text().strip())
    except FileNotFoundError:
        print(f"redis_server.py: no pidfile {pidfile}; nothing to stop", file=sys.stderr)
        return 0
    except (ValueError, OSError) as exc:
        print(f"redis_server.py: unreadable pidfile {pidfile}: {exc}", file=sys.stderr)
        return 1
    if _pid_alive(pid) and _pid_is_redis(pid):
        try:
            stop_pid(pid, timeout=args.timeout)
        except RedisServerError as exc:
            print(f"redis_server.py: {exc}", file=sys.stderr)
            return 1
    elif _pid_alive(pid):
        print(f"redis_server.py: pid {pid} is not a redis-server; not touching it", file=sys.stderr)
    with contextlib.suppress(OSError):
        pidfile.unlink()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a detached server; print its url")
    start.add_argument("--dir", required=True, help="directory for pidfile, log and AOF")
    start.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    start.add_argument("--appendonly", action="store_true", help="enable AOF (fsync always)")
    start.add_argument("--timeout", type=float, default=STARTUP_TIMEOUT)
    start.add_argument("extra", nargs=argparse.REMAINDER, help="extra redis-server args after `--`")
    stop = sub.add_parser("stop", help="stop the server whose pidfile is in --dir")
    stop.add_argument("--dir", required=True)
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT)
    args = parser.parse_args(argv)
    if args.command == "start":
        if args.extra and args.extra[0] == "--":
            args.extra = args.extra[1:]
        return _cli_start(args)
    return _cli_stop(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
