"""``postgres_for_update``: the reference design, budgets in PostgreSQL with a row lock per debit.

One transaction per debit (asyncpg, async): ``SELECT … ORDER BY id FOR UPDATE`` locks each of
the scope's budget rows in id order (a global order, so concurrent debits never deadlock), then
per budget an ``INSERT`` into ``usage_ledger`` and an ``UPDATE`` of ``budgets.balance`` (and the
status derived from it); ``BEGIN`` … ``COMMIT``: 2n + 3 round trips for n budgets. Same scope
sizes, concurrency and hot/spread mode as the ``debit`` rows; the pool has one connection per
task up to ``POOL_SIZE_MAX`` (tasks beyond it wait for a connection, as in a real service).

Unless ``--postgres-url`` is given, ``LocalPostgres`` runs a private cluster from the Debian
packages (``initdb``/``pg_ctl`` of ``/usr/lib/postgresql/*/bin``) on a free 127.0.0.1 port in a
temporary directory, with ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off — like
the benchmark's Redis, which persists nothing — and stops it at the end, also after an error.
PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user (else
``nobody``). Everything lives in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis_server import find_free_port

from benchmarks.context import BenchContext
from benchmarks.measure import BenchError, Op, Row
from benchmarks.workloads import DEBIT_USD, HUGE_LIMIT_USD, scope_of
from budgetkit._core.amounts import to_micros
from budgetkit._core.ids import new_budget_id, new_ledger_id
from budgetkit._core.scope import Scope

POOL_SIZE_MAX = 64
MAX_CONNECTIONS = 150
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 900.0
POLICY_RC_D = "/usr/sbin/policy-rc.d"
LOG_TAIL_CHARS = 1500
STOP_WAIT_S = 10.0
POLL_S = 0.02
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": str(MAX_CONNECTIONS),
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
}
SCHEMA_DDL = """
CREATE TABLE budgets (
    id text PRIMARY KEY,
    organization_id text NOT NULL,
    subject_type text NOT NULL,
    subject_id text NOT NULL,
    currency text NOT NULL,
    "limit" bigint NOT NULL,
    soft_limit bigint,
    balance bigint NOT NULL,
    status text NOT NULL DEFAULT 'active',
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX budgets_subject ON budgets (organization_id, subject_type, subject_id);
CREATE TABLE usage_ledger (
    id text PRIMARY KEY,
    budget_id text NOT NULL REFERENCES budgets (id),
    amount bigint NOT NULL,
    meter_source text NOT NULL,
    ref_type text,
    ref_id text,
    session_id text,
    description text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_ledger_budget ON usage_ledger (budget_id, created_at);
"""
INSERT_BUDGET = (
    'INSERT INTO budgets (id, organization_id, subject_type, subject_id, currency, "limit", '
    "balance) VALUES ($1, $2, $3, $4, 'usd', $5, $5)"
)
LOCK_SCOPE = (
    'SELECT id, balance, "limit", soft_limit, status FROM budgets '
    "WHERE organization_id = $1 AND (subject_type, subject_id) IN "
    "(SELECT * FROM unnest($2::text[], $3::text[])) AND status <> 'disabled' "
    "ORDER BY id FOR UPDATE"
)
INSERT_LEDGER = (
    "INSERT INTO usage_ledger (id, budget_id, amount, meter_source, session_id) "
    "VALUES ($1, $2, $3, 'bench', $4)"
)
UPDATE_BALANCE = "UPDATE budgets SET balance = $2, status = $3, updated_at = now() WHERE id = $1"


def bin_dir() -> Path | None:
    """The directory of initdb and pg_ctl: beside pg_ctl on PATH, else the newest Debian one."""
    found = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    versions = sorted(glob.glob(PG_BIN_GLOB), key=_version_key, reverse=True)
    candidates += [Path(path) for path in versions]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def driver_skip_reason() -> str | None:
    if importlib.util.find_spec("asyncpg") is None:
        return "asyncpg is not importable (pip install 'budgetkit[bench]')"
    return None


def server_skip_reason() -> str | None:
    """Why a private PostgreSQL cannot be started here, or None."""
    if bin_dir() is None:
        return (
            f"no initdb/pg_ctl (looked beside pg_ctl on PATH and in {PG_BIN_GLOB}); install "
            "Debian's postgresql package (scripts/bench_env.sh, or --install-postgres as root), "
            "or pass --postgres-url"
        )
    if os.geteuid() == 0 and _run_as_user() is None:
        return "running as root and neither a postgres nor a nobody user exists to run PostgreSQL"
    return None


def install_postgres() -> str:
    """``apt-get install -y postgresql`` (root only); returns what happened, for the log.

    Like scripts/test.sh for redis, a policy-rc.d that forbids starting services is in place
    during the install (when none exists), so the package does not start its own cluster.
    """
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not installing PostgreSQL: needs root and apt-get"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]]
    policy = Path(POLICY_RC_D)
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n", encoding="utf-8")
        policy.chmod(0o755)
        made_policy = True
    try:
        for argv in steps:
            done = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                return f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-300:]}"
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    return "installed Debian's postgresql package"


def _run_as_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


class LocalPostgres:
    """A private PostgreSQL cluster as a context manager; ``url`` once started."""

    def __init__(self, directory: Path | None = None) -> None:
        self._bin = directory or bin_dir()
        self._dir: Path | None = None
        self._user = _run_as_user() if os.geteuid() == 0 else None
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://bench@127.0.0.1:{self.port}/postgres"

    @property
    def directory(self) -> Path | None:
        """The cluster's temporary directory while it runs (removed by ``stop``)."""
        return self._dir

    def _cmd(self, argv: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        assert self._dir is not None
        log = self._dir / "commands.log"
        with log.open("ab") as out:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                timeout=timeout_s,
                check=False,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the cluster ourselves
                **self._as_user(),
            )
        if done.returncode != 0:
            raise BenchError(
                f"{Path(argv[0]).name} exited {done.returncode}: {self._tail(log)}"
                f"{self._tail(self._dir / 'postgres.log')}"
            )

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    @staticmethod
    def _tail(path: Path) -> str:
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return ""

    def start(self) -> LocalPostgres:
        if self._bin is None:
            raise BenchError(server_skip_reason() or "no PostgreSQL binaries")
        self._dir = Path(tempfile.mkdtemp(prefix="budgetkit-bench-pg-"))
        if self._user is not None:
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        try:
            data = self._dir / "data"
            initdb = [str(self._bin / "initdb"), "-D", str(data), "-U", "bench", "-A", "trust"]
            self._cmd([*initdb, "-E", "UTF8", "--no-locale", "--no-sync"])
            self.port = find_free_port()
            options = " ".join(f"-c {key}={value}" for key, value in SETTINGS.items())
            options += f" -p {self.port} -k {self._dir}"
            pg_ctl = [
                str(self._bin / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self._dir / "postgres.log"),
            ]
            self._cmd([*pg_ctl, "-w", "-t", str(START_TIMEOUT_S), "-o", options, "start"])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the cluster (fast, then immediate, then SIGKILL), waits until the postmaster
        is gone, and removes the directory."""
        directory = self._dir
        if directory is None:
            return
        data = directory / "data"
        pid = self.postmaster_pid()
        try:
            if pid is not None and self._bin is not None:
                for mode in ("fast", "immediate"):
                    with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
                        pg_ctl = [str(self._bin / "pg_ctl"), "-D", str(data), "-m", mode]
                        self._cmd([*pg_ctl, "-w", "-t", "30", "stop"], timeout_s=60)
                        break
            if pid is not None and not _gone(pid, STOP_WAIT_S):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                _gone(pid, STOP_WAIT_S)
        finally:
            self._dir = None
            shutil.rmtree(directory, ignore_errors=True)

    def postmaster_pid(self) -> int | None:
        if self._dir is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self._dir / "data" / "postmaster.pid").read_text().split()[0])
        return None

    async def cpu_s(self) -> float:
        """CPU time of the postmaster and its children (the backends), from /proc."""
        pid = self.postmaster_pid()
        return 0.0 if pid is None else process_tree_cpu_s(pid)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _gone(pid: int, timeout_s: float) -> bool:
    """Waits until process ``pid`` has exited (or is a zombie nobody reaps); True if so."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def process_tree_cpu_s(root_pid: int) -> float:
    """utime + stime of ``root_pid`` and its direct children, in seconds (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from 'state' on
        if int(entry.name) == root_pid or int(fields[1]) == root_pid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _asyncpg() -> Any:
    return importlib.import_module("asyncpg")


def _levels(scope: Scope) -> tuple[list[str], list[str]]:
    pairs = list(scope.levels())
    return [level for level, _ in pairs], [subject for _, subject in pairs]


def _status(balance: int, limit: int, soft: int | None) -> str:
    if balance <= 0:
        return "exhausted"
    if soft is not None and limit - balance >= soft:
        return "paused"
    return "active"


def debit_op(pool: Any, scope: Scope, amount: int) -> Op:
    """One transaction: lock the scope's rows in id order, then a ledger row + balance each."""
    org = scope.organization_id
    types, subjects = _levels(scope)
    session = scope.session_id

    async def op() -> bool:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(LOCK_SCOPE, org, types, subjects)
            if len(rows) != len(types):
                raise BenchError(f"locked {len(rows)} budget rows, expected {len(types)}")
            for row in rows:
                balance = int(row["balance"]) - amount
                await conn.execute(INSERT_LEDGER, new_ledger_id(), row["id"], amount, session)
                status = _status(balance, int(row["limit"]), row["soft_limit"])
                await conn.execute(UPDATE_BALANCE, row["id"], balance, status)
        return True

    return op


async def _create_budgets(pool: Any, scopes: Sequence[Scope]) -> None:
    limit = to_micros(HUGE_LIMIT_USD, field="limit")
    rows = []
    for scope in scopes:
        for level, subject in scope.levels():
            rows.append((new_budget_id(), scope.organization_id, level, subject, limit))
    async with pool.acquire() as conn:
        await conn.executemany(INSERT_BUDGET, rows)


async def _execute(url: str, sql: str) -> None:
    """Runs ``sql`` on a connection of its own."""
    conn = await _asyncpg().connect(url, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_schema(url: str, schema: str) -> None:
    await _execute(url, f"CREATE SCHEMA {schema}; SET search_path TO {schema};{SCHEMA_DDL}")


async def drop_schema(url: str, schema: str) -> None:
    await _execute(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def new_schema_name() -> str:
    return f"bkbench_{secrets.token_hex(4)}"


async def postgres_for_update(ctx: BenchContext, size: int, concurrency: int) -> Row:
    """One timed run of the row-locking debit over scopes of ``size`` budgets."""
    if ctx.postgres_url is None:
        raise BenchError("no PostgreSQL for this run")
    schema = new_schema_name()
    await create_schema(ctx.postgres_url, schema)
    pool_size = min(concurrency, POOL_SIZE_MAX)
    try:
        pool = await _asyncpg().create_pool(
            ctx.postgres_url,
            min_size=pool_size,
            max_size=pool_size,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"search_path": schema},
        )
        try:
            count = concurrency if ctx.settings.spread else 1
            scopes = [scope_of(f"org_{i}", size) for i in range(count)]
            await _create_budgets(pool, scopes)
            amount = to_micros(DEBIT_USD, field="amount")
            ops = [debit_op(pool, scopes[i % count], amount) for i in range(concurrency)]
            measurement = await ctx.measure(ops, server_cpu=ctx.postgres_cpu)
        finally:
            await pool.close()
    finally:
        await drop_schema(ctx.postgres_url, schema)
    measurement.used_memory_bytes = None  # Redis's; PostgreSQL's memory is not comparable
    if ctx.postgres_cpu is None:
        measurement.server_cpu_s = None  # a --postgres-url server: its CPU is not visible
    notes = (
        f"asyncpg pool {pool_size}; BEGIN, SELECT … ORDER BY id FOR UPDATE, {size} x (INSERT "
        "ledger + UPDATE balance), COMMIT; server CPU = PostgreSQL's processes"
    )
    return measurement.row("postgres_for_update", concurrency, size, mode=ctx.mode, notes=notes)
