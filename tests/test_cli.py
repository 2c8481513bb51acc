"""The `budgetkit` CLI as users run it: subprocesses against a real Redis, JSON and exit codes.

Each test batches its commands (independent ones run concurrently) to keep the file fast; the
Redis-backed ones FLUSHALL first. Setup that is not under test goes through the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis

import budgetkit as bk
from budgetkit.cli import build_parser, main
from budgetkit.cli.commands import BENCH_MISSING, HANDLERS
from budgetkit.cli.completion import completion_script, walk
from budgetkit.cli.errors import redact
from budgetkit.cli.output import SESSION_POOLING_NOTE, console

T = TypeVar("T")
TIMEOUT_S = 60


@dataclass
class Out:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.stdout.count("\n") == 1, self.stdout  # exactly one JSON document
        return json.loads(self.stdout)

    def one_line_error(self) -> str:
        assert self.code == 2, (self.code, self.stdout, self.stderr)
        assert self.stdout == ""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("budgetkit: "), lines[0]
        return lines[0]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "COLUMNS")}


def _default_sigint() -> None:
    """A child started from a background job inherits an ignored SIGINT; restore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(args: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "budgetkit.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_default_sigint,
    )


def run_all(*commands: Sequence[str]) -> list[Out]:
    """Runs the commands concurrently (they must be independent); results in order."""
    procs = [_spawn(args) for args in commands]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        outs.append(Out(proc.returncode, stdout, stderr))
    return outs


def run_here_out(*args: str) -> Out:
    """``main(args)`` in this process (fast; for variants of commands the subprocess tests
    already cover)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse: usage errors, --help
            code = stop.code if isinstance(stop.code, int) else 2
    return Out(code, stdout.getvalue(), stderr.getvalue())


def run_here(*args: str) -> str:
    """The one-line error of an in-process run that must fail with exit 2."""
    return run_here_out(*args).one_line_error()


class Cli:
    """Runs `python -m budgetkit.cli ... --redis-url URL`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def args(self, *args: str) -> list[str]:
        return [*args, "--redis-url", self.url]

    def __call__(self, *args: str) -> Out:
        return run_all(self.args(*args))[0]

    def here(self, *args: str) -> Out:
        return run_here_out(*self.args(*args))

    def many(self, *commands: Sequence[str]) -> list[Out]:
        return run_all(*(self.args(*c) for c in commands))

    def lib(self, body: Callable[[bk.BudgetKit], Awaitable[T]]) -> T:
        """Runs ``body(kit)`` with the library on the same server (setup, not under test)."""

        async def go() -> T:
            async with bk.BudgetKit.from_url(self.url) as kit:
                return await body(kit)

        return asyncio.run(go())


@pytest.fixture
def cli(redis_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushall()
    client.close()
    # In-process tables: wide enough for whole ids whatever the terminal running pytest.
    monkeypatch.setenv("COLUMNS", "200")
    console.cache_clear()
    yield Cli(redis_server_url)
    console.cache_clear()


def _budget(cli: Cli, subject_type: str, subject_id: str, limit: float, **kw: Any) -> bk.Budget:
    return cli.lib(
        lambda kit: kit.create_budget("org_1", subject_type, subject_id, "usd", limit, **kw)
    )


SESSION_FIELDS = ["--limit", "10", "--soft-limit", "8", "--period", "month"]
SESSION_FIELDS += ["--metadata", '{"team":"a"}', "--thresholds", "0.5,0.8"]


# -- budgets ----------------------------------------------------------------------------------


@pytest.mark.real
def test_budgets_create_list_show_update_disable_top_up_ledger(cli: Cli) -> None:
    create = ["budgets", "create", "--org", "org_1", "--subject-type"]
    session = cli(*create, "session", "--subject-id", "s1", *SESSION_FIELDS, "--json")
    org = cli.here(*create, "org", "--limit", "100", "--currency", "USD", "--json")
    assert session.code == 0 and org.code == 0, (session.stderr, org.stderr)
    s = bk.Budget.model_validate(session.json())
    o = bk.Budget.model_validate(org.json())
    assert (s.subject_id, s.limit, s.soft_limit, s.balance) == ("s1", 10, 8, 10)
    assert s.period == bk.CalendarPeriod(unit="month") and s.metadata == {"team": "a"}
    assert o.subject_type == bk.BudgetSubjectType.ORGANIZATION
    assert (o.subject_id, o.currency) == ("org_1", "usd")

    listed, shown = cli.many(
        ["budgets", "list", "--org", "org_1", "--json"],
        ["budgets", "show", "--org", "org_1", "--id", s.id, "--json"],
    )
    table = cli.here("budgets", "list", "--org", "org_1")
    assert {b["id"] for b in listed.json()} == {s.id, o.id}
    assert bk.Budget.model_validate(shown.json()) == s
    assert table.code == 0 and s.id in table.stdout and o.id in table.stdout
    assert "session:s1" in table.stdout and "  month" in table.stdout
    filtered = cli.here("budgets", "list", "--org", "org_1", "--subject-type", "session", "--json")
    assert [b["id"] for b in filtered.json()] == [s.id]

    updated = cli(
        *["budgets", "update", "--org", "org_1", "--id", s.id, "--limit", "20"],
        *["--soft-limit", "15", "--status", "paused", "--period", "5h", "--warn-fraction", "0.1"],
        *["--thresholds", "0.9", "--metadata", "[1,2]", "--json"],
    )
    u = bk.Budget.model_validate(updated.json())
    assert (u.limit, u.soft_limit, u.status) == (20, 15, bk.BudgetStatus.PAUSED)
    assert u.period == bk.RollingPeriod(window="5h") and u.metadata == [1, 2]
    cleared = cli.here(
        *["budgets", "update", "--org", "org_1", "--id", s.id, "--soft-limit", "none"],
        *["--period", "none", "--metadata", "none", "--status", "active", "--json"],
    ).json()
    assert "soft_limit" not in cleared and "period" not in cleared and "metadata" not in cleared
    assert cleared["status"] == "active"

    topped = cli("budgets", "top-up", "--org", "org_1", "--id", s.id, "--amount", "2.5", "--json")
    assert bk.Budget.model_validate(topped.json()).balance == 22.5
    disabled, ledger = cli.many(
        ["budgets", "disable", "--org", "org_1", "--id", s.id, "--json"],
        ["budgets", "ledger", "--org", "org_1", "--id", s.id, "--limit", "10", "--json"],
    )
    assert disabled.json()["status"] == "disabled"
    entries = [bk.LedgerEntry.model_validate(e) for e in ledger.json()]
    assert entries[0].amount == -2.5 and all(e.budget_id == s.id for e in entries)
    ledger_table = cli.here("budgets", "ledger", "--org", "org_1", "--id", s.id)
    assert ledger_table.code == 0 and entries[0].id in ledger_table.stdout
    active = cli.here("budgets", "list", "--org", "org_1", "--json")
    everything = cli.here("budgets", "list", "--org", "org_1", "--include-disabled", "--json")
    assert [b["id"] for b in active.json()] == [o.id]
    assert len(everything.json()) == 2


@pytest.mark.real
def test_budgets_show_and_list_say_which_session_a_budget_is_enforced_for(cli: Cli) -> None:
    """SPEC §6: a child session's own budget is ignored while its scope names a root session."""
    child = _budget(cli, "session", "c1", 1)
    org = _budget(cli, "org", "org_1", 100)
    cli.lib(lambda kit: kit.debit(bk.Scope("org_1", session_id="c1"), {"usd": 1}))
    shown, org_shown = (
        cli.here("budgets", "show", "--org", "org_1", "--id", b.id) for b in (child, org)
    )
    listed = cli.here("budgets", "list", "--org", "org_1")
    assert shown.code == 0 and org_shown.code == 0 and listed.code == 0
    [row] = [line for line in shown.stdout.splitlines() if "enforced for" in line]
    assert (
        "scopes whose root session is c1 (--root-session c1, or --session c1 without "
        "--root-session): child sessions of c1 pool here; ignored in a scope that names another "
        "root session"
    ) in row
    assert "every scope of organization org_1" in org_shown.stdout
    assert " ".join(SESSION_POOLING_NOTE.split()) in " ".join(listed.stdout.split())
    # What the text claims: stop for c1 as its own root; its budget ignored under root r1.
    own, under_root = cli.many(
        ["check", "--org", "org_1", "--session", "c1", "--json"],
        ["check", "--org", "org_1", "--session", "c1", "--root-session", "r1", "--json"],
    )
    assert (own.code, own.json()["action"], own.json()["budget_id"]) == (1, "stop", child.id)
    assert (under_root.code, under_root.json()["action"]) == (0, "continue")


# -- check, check-tool, debit, resume --------------------------------------------------------


SCOPE = ["--org", "org_1", "--session", "s1", "--user", "u1"]


@pytest.mark.real
def test_check_exits_1_when_a_debit_exhausts_the_budget(cli: Cli) -> None:
    budget = _budget(cli, "session", "s1", 1)
    check, tool = cli.many(["check", *SCOPE, "--json"], ["check-tool", *SCOPE, "--json"])
    assert check.code == 0
    assert bk.BudgetCheckResult.model_validate(check.json()).action == "continue"
    assert tool.code == 0 and bk.BudgetToolResponse.model_validate(tool.json()).status == "active"

    debit = ["debit", *SCOPE, "--amount", "usd=0.4", "--amount", "tokens=1500"]
    debit += ["--meter-source", "llm_tokens", "--ref-type", "llm_generation", "--ref-id", "g1"]
    debit += ["--idempotency-key", "k1", "--json"]
    first = bk.DebitResult.model_validate(cli(*debit).json())
    assert [(e.budget_id, e.amount, e.ref_id) for e in first.entries] == [(budget.id, 0.4, "g1")]
    assert not first.replayed and first.check.action == "continue"
    assert bk.DebitResult.model_validate(cli.here(*debit).json()).replayed

    out = cli.here("debit", *SCOPE, "--amount", "usd=0.7", "--json")
    assert out.code == 0 and bk.DebitResult.model_validate(out.json()).check.action == "stop"
    check, tool = cli.many(
        ["check", "--org", "org_1", "--session", "s1", "--json"], ["check-tool", *SCOPE, "--json"]
    )
    human = cli.here("check", *SCOPE)
    result = bk.BudgetCheckResult.model_validate(check.json())
    assert check.code == 1 and result.action == "stop" and result.budget_id == budget.id
    assert result.error_code == "budget_exhausted"
    assert tool.code == 1
    assert bk.BudgetToolResponse.model_validate(tool.json()).status == "exhausted"
    assert human.code == 1 and "stop" in human.stdout and budget.id in human.stdout
    tool_human = cli.here("check-tool", *SCOPE)
    assert tool_human.code == 1 and "exhausted" in tool_human.stdout


@pytest.mark.real
def test_pause_then_resume(cli: Cli) -> None:
    _budget(cli, "session", "s1", 1, soft_limit=0.5)
    cli.lib(lambda kit: kit.debit(bk.Scope("org_1", session_id="s1"), {"usd": 0.6}))
    paused, resumed = cli.here("check", *SCOPE, "--json"), cli("resume", *SCOPE, "--json")
    assert paused.code == 1 and paused.json()["action"] == "pause"
    assert resumed.code == 0
    assert [bk.Budget.model_validate(b).status for b in resumed.json()] == [bk.BudgetStatus.ACTIVE]
    again = cli.here("check", *SCOPE, "--json")
    assert again.code == 0 and again.json()["action"] in ("continue", "warn")
    nothing = cli.here("resume", *SCOPE, "--levels", "session,user")
    assert nothing.code == 0 and "none" in nothing.stdout


# -- reserve, commit, release -----------------------------------------------------------------


@pytest.mark.real
def test_reserve_commit_release(cli: Cli) -> None:
    budget = _budget(cli, "session", "s1", 1)
    held = cli("reserve", *SCOPE, "--amount", "usd=0.6", "--ttl", "30", "--json")
    hold = bk.Reservation.model_validate(held.json())
    assert held.code == 0 and hold.granted and hold.id is not None
    assert hold.amounts == {"usd": 0.6}
    denied = cli.here("reserve", *SCOPE, "--amount", "usd=0.6", "--json")
    assert denied.code == 1 and denied.json()["granted"] is False

    commit = ["commit", *SCOPE, "--hold", hold.id, "--amount", "usd=0.5", "--ref-id", "g2"]
    committed = cli(*commit, "--json")
    result = bk.DebitResult.model_validate(committed.json())
    assert committed.code == 0
    assert [(e.budget_id, e.amount) for e in result.entries] == [(budget.id, 0.5)]
    again = cli.here(*commit, "--json").one_line_error()
    assert hold.id in again and "--hold" in again

    second = cli.here("reserve", *SCOPE, "--amount", "usd=0.25", "--json").json()
    released = cli("release", "--org", "org_1", "--hold", second["id"], "--json")
    assert released.code == 0
    [after] = [bk.Budget.model_validate(b) for b in released.json()]
    assert after.id == budget.id and after.balance == 0.5
    assert (
        "already" in cli.here("release", "--org", "org_1", "--hold", second["id"]).one_line_error()
    )
    shown = cli.here("budgets", "show", "--org", "org_1", "--id", budget.id, "--json")
    assert shown.json()["balance"] == 0.5


# -- events -----------------------------------------------------------------------------------


@pytest.mark.real
def test_events_tail(cli: Cli) -> None:
    budget = _budget(cli, "session", "s1", 1, thresholds=[0.5])
    cli.lib(lambda kit: kit.debit(bk.Scope("org_1", session_id="s1"), {"usd": 2}))
    every = cli("events", "tail", "--org", "org_1", "--json")
    table = cli.here("events", "tail", "--org", "org_1")
    last = cli.here("events", "tail", "--org", "org_1", "--last", "1", "--json")
    events = [bk.BudgetEvent.model_validate(e) for e in every.json()]
    assert {e.type for e in events} == {"budget.exhausted", "budget.threshold"}
    assert all(e.data.budget_id == budget.id for e in events)
    assert [e["id"] for e in last.json()] == [events[-1].id]
    assert table.code == 0 and "budget.exhausted" in table.stdout
    after = cli.here("events", "tail", "--org", "org_1", "--after", events[-1].id, "--json")
    assert after.code == 0 and after.json() == []


@pytest.mark.real
def test_events_tail_follow_streams_until_interrupted(cli: Cli) -> None:
    _budget(cli, "session", "s1", 1, thresholds=[0.5])
    scope = bk.Scope("org_1", session_id="s1")
    cli.lib(lambda kit: kit.debit(scope, {"usd": 0.6}))  # budget.threshold: the backlog
    follower = _spawn(cli.args("events", "tail", "--org", "org_1", "--follow", "--json"))
    try:
        assert follower.stdout is not None
        backlog = bk.BudgetEvent.model_validate_json(follower.stdout.readline())
        assert backlog.type == "budget.threshold"  # caught up: now following
        cli.lib(lambda kit: kit.debit(scope, {"usd": 1}))
        live = bk.BudgetEvent.model_validate_json(follower.stdout.readline())
        assert live.type == "budget.exhausted"
        follower.send_signal(signal.SIGINT)
        rest, stderr = follower.communicate(timeout=TIMEOUT_S)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        for stream in (follower.stdout, follower.stderr):
            if stream is not None:
                stream.close()  # a killed follower's pipes must not leak into later tests
    assert follower.returncode == 0, stderr
    assert rest == "" and stderr == ""


# -- schema, completion, demo, bench (one batch) ----------------------------------------------


@pytest.mark.real
def test_schema_completion_demo_bench(cli: Cli) -> None:
    schema, bash = cli.many(["schema", "--json"], ["completion", "bash"])
    budget_schema = run_here_out("schema", "--model", "Budget")
    # In-process: test_runtime runs the demo as a subprocess; these only need the dispatch.
    zsh, fish = run_here_out("completion", "zsh"), run_here_out("completion", "fish")
    demo, bench = cli.here("demo", "--json"), run_here_out("bench", "--help")
    names = set(schema.json())
    assert {"Budget", "LedgerEntry", "BudgetCheckResult", "BudgetToolResponse"} <= names
    assert {"BudgetEvent", "BudgetPeriod", "BudgetStatus", "BudgetSubjectType"} <= names
    assert json.loads(budget_schema.stdout)["title"] == "Budget"
    assert bash.code == 0 and "complete -F _budgetkit_complete budgetkit" in bash.stdout
    assert zsh.code == 0 and "bashcompinit" in zsh.stdout
    assert fish.code == 0 and "complete -c budgetkit" in fish.stdout
    report = demo.json()
    assert demo.code == 0 and report["reconciled"] is True
    output = report["output"]
    assert any("budget.warning" in line for line in output)
    assert any("stops (usd: budget_insufficient)" in line for line in output)  # no overspend
    assert any("rollover" in line and "carried" in line for line in output)  # SPEC §11
    assert bench.code == 0 and "--quick" in bench.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_commands_options_and_choices() -> None:
    script = completion_script(build_parser(), "bash")
    probe = (
        script
        + 'c() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _budgetkit_complete;'
        + ' echo "${COMPREPLY[*]}"; }\n'
        + 'c budgetkit bud\nc budgetkit budgets ""\nc budgetkit budgets create --subject-t\n'
        + 'c budgetkit budgets update --status p\nc budgetkit check --org ""\n'
        + 'c budgetkit --json events tail --fo\nc budgetkit completion ""\n'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "budgets",
        "create list show update disable top-up ledger --help",
        "--subject-type",
        "paused",
        "",
        "--follow",
        "bash zsh fish --help --redis-url --json",
    ]


def test_completion_covers_every_command() -> None:
    paths = {" ".join(node.path) for node in walk(build_parser())}
    for command in (
        "budgets create",
        "budgets list",
        "budgets show",
        "budgets update",
        "budgets disable",
        "budgets top-up",
        "budgets ledger",
        "check",
        "check-tool",
        "resume",
        "debit",
        "reserve",
        "commit",
        "release",
        "events tail",
        "schema",
        "demo",
        "bench",
        "completion",
    ):
        assert command in paths


def test_every_command_of_the_parser_has_a_handler() -> None:
    leaves = {" ".join(node.path) for node in walk(build_parser()) if not node.subcommands}
    assert leaves - {"bench"} == set(HANDLERS)  # bench runs the harness, before parsing


def test_bench_without_the_harness_says_where_it_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness is not in the wheel: outside a checkout, `budgetkit bench` says so."""
    monkeypatch.setitem(sys.modules, "benchmarks", None)
    monkeypatch.setitem(sys.modules, "budgetkit.bench", None)
    for args in (["bench", "--quick"], ["--json", "--redis-url", "redis://h/0", "bench", "-q"]):
        line = run_here(*args)
        assert BENCH_MISSING in line and "python -m benchmarks" in line


# -- the cli extra ----------------------------------------------------------------------------


def _python(code: str) -> Out:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, env=_env()
    )
    return Out(done.returncode, done.stdout, done.stderr)


def test_the_library_never_imports_the_cli_extra() -> None:
    out = _python(
        "import sys, budgetkit, budgetkit.sync, budgetkit.metering, budgetkit.export\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'fakeredis'}))"
    )
    assert (out.code, out.stdout, out.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("missing", ["rich", "fakeredis"])
def test_without_the_cli_extra_the_command_says_how_to_install_it(missing: str) -> None:
    out = _python(
        f"import sys; sys.modules[{missing!r}] = None\n"
        "from budgetkit.cli import main\n"
        "sys.exit(main(['check', '--org', 'o']))"
    )
    assert (out.code, out.stdout) == (2, "")
    assert out.stderr == "budgetkit's CLI needs its extra: pip install 'budgetkit[cli]'\n"


# -- help -------------------------------------------------------------------------------------


def _help(*command: str) -> str:
    """A command's --help, whitespace collapsed (argparse wraps to the terminal width)."""
    out = run_here_out(*command, "--help")
    assert out.code == 0 and out.stderr == "", out.stderr
    return " ".join(out.stdout.split())


EXIT_2 = "2 usage, input or connection error (one line on stderr)"


def test_help_states_each_exit_code() -> None:
    top = run_here_out("--help").stdout.splitlines()
    assert "exit codes:" in top
    assert "  0  ok; for check: continue or warn" in top
    assert any(line.startswith("  1  check: pause or stop; check-tool: paused or ") for line in top)
    assert f"  {EXIT_2.replace(' ', '  ', 1)}" in top
    assert "exit codes: 0 continue or warn; 1 pause or stop; " + EXIT_2 in _help("check")
    tool = _help("check-tool")
    assert "exit codes: 0 active, warning or no_budgets; 1 paused or exhausted; " + EXIT_2 in tool
    assert "exit codes: 0 granted; 1 denied (the printed check says why); " + EXIT_2 in _help(
        "reserve"
    )
    assert "exit codes: 0 the books match Redis; 1 drift" in _help("reconcile")
    for command in (("check",), ("reserve",), ("reconcile",), ("--help",)):
        assert "exit 1: stop" not in _help(*command)


def test_help_says_json_and_redis_url_may_precede_the_command() -> None:
    top = run_here_out("--help").stdout
    assert "--redis-url and --json may come before the command or after it:" in top.splitlines()
    assert "`budgetkit --json check --org O` is `budgetkit check --org O --json`." in top
    options = " ".join(top.split())
    placed = "; before or after the command"
    assert f"--redis-url URL redis://, rediss:// or unix:// URL (default: $REDIS_URL){placed}" in (
        options
    )
    assert f"--json print one JSON document (the models' wire JSON) instead of tables{placed}" in (
        options
    )
    assert "instead of tables; may also precede the command" in _help("check")
    parse = build_parser().parse_args
    scope = ["--org", "o"]
    for args in (
        ["--json", "--redis-url", "redis://h/0", "check", *scope],
        ["check", *scope, "--json", "--redis-url", "redis://h/0"],
        ["--json", "check", *scope, "--redis-url", "redis://h/0"],
        ["--redis-url", "redis://other/0", "check", *scope, "--redis-url", "redis://h/0", "--json"],
    ):
        a = parse(args)
        assert (a.json, a.redis_url, a.command) == (True, "redis://h/0", "check"), args
    a = parse(["check", *scope])
    assert (a.json, a.redis_url) == (False, None)


@pytest.mark.real
def test_json_and_redis_url_before_the_command_run_it(cli: Cli) -> None:
    create = ["budgets", "create", "--org", "org_1", "--subject-type", "session"]
    before = run_here_out(
        "--json", "--redis-url", cli.url, *create, "--subject-id", "s1", "--limit", "1"
    )
    assert before.code == 0, before.stderr
    budget = bk.Budget.model_validate(before.json())
    check = run_here_out("--redis-url", cli.url, "--json", "check", *SCOPE)
    assert check.code == 0 and check.json()["action"] == "continue"
    shown = run_all(
        ["--json", "budgets", "show", "--org", "org_1", "--id", budget.id, "--redis-url", cli.url]
    )[0]
    assert bk.Budget.model_validate(shown.json()) == budget


def test_update_help_claims_no_default() -> None:
    update, create = _help("budgets", "update"), _help("budgets", "create")
    fraction = "--warn-fraction F warn when this fraction of the limit remains"
    assert f"{fraction} (unchanged when not given)" in update
    assert "default" not in update.split("--warn-fraction F", 1)[1].split("--thresholds")[0]
    assert "change the given fields (others stay)" in update
    assert f"{fraction} (default 0.2)" in create


def test_create_help_says_where_a_session_budget_applies() -> None:
    create = _help("budgets", "create")
    assert (
        "what it limits. A session budget is enforced for scopes whose root session is "
        "--subject-id (child sessions pool there), ignored in a scope that names another root "
        "session."
    ) in create
    assert "hour, day, week, month or year (calendar, UTC), a rolling window such as 30d" in create


def test_invalid_period_is_a_usage_error_listing_what_is_accepted() -> None:
    create = ["budgets", "create", "--org", "o", "--subject-type", "org", "--limit", "1"]
    line = run_here(*create, "--period", "fortnight")  # no Redis URL: argparse rejects it first
    assert (
        "argument --period: invalid period 'fortnight': expected a calendar unit (hour, day, "
        "week, month or year) or a rolling window: a whole number and an optional unit"
    ) in line
    assert "`budgetkit budgets create --help`" in line


# -- errors -----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.real
def test_errors_are_one_line_with_exit_2(cli: Cli) -> None:
    unknown_id = "bdgt_" + "0" * 32
    dead = f"redis://127.0.0.1:{_closed_port()}/0"
    unknown, unreachable, usage = run_all(
        cli.args("budgets", "show", "--org", "org_1", "--id", unknown_id, "--json"),
        ["check", "--org", "org_1", "--redis-url", dead, "--json"],
        cli.args("check", "--json"),  # --org missing
    )
    line = unknown.one_line_error()
    assert f"budget {unknown_id} not found in organization org_1" in line
    assert "budgets list --org org_1" in line
    line = unreachable.one_line_error()
    assert f"cannot reach Redis at {dead} (connection refused)" in line
    assert "Start it or pass --redis-url" in line
    line = usage.one_line_error()
    assert "required: --org" in line and "budgetkit check --help" in line

    assert "cannot reach Redis" in run_here("budgets", "list", "--org", "o", "--redis-url", dead)
    assert "no Redis URL" in run_here("check", "--org", "org_1")
    assert "unsupported Redis URL" in run_here("check", "--org", "o", "--redis-url", "http://h")
    assert "CURRENCY=VALUE" in cli.here("debit", "--org", "o", "--amount", "usd").one_line_error()
    line = cli.here("debit", "--org", "org_1", "--amount", "usd=-1").one_line_error()
    assert "invalid input" in line and "debit --help" in line
    line = cli.here("budgets", "show", "--org", "org_1", "--id", "nope").one_line_error()
    assert "invalid budget id" in line
    line = cli.here("budgets", "update", "--org", "org_1", "--id", unknown_id).one_line_error()
    assert "nothing to update" in line
    hold = "hold_" + "1" * 32
    line = cli.here("commit", "--org", "o", "--hold", hold, "--amount", "usd=1").one_line_error()
    assert "is unknown or already committed or released" in line
    out = cli.here("budgets", "create", "--org", "o", "--subject-type", "user", "--limit", "1")
    assert "--subject-id is required" in out.one_line_error()


def test_redact_hides_the_password() -> None:
    assert redact("redis://:s3cret@host:6380/0") == "redis://:***@host:6380/0"
    assert redact("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.real
def test_export_reconcile_restore_commands(cli: Cli, tmp_path: pathlib.Path) -> None:
    """The books round trip through the CLI: export, reconcile (0 drift), flush, restore."""
    budget = _budget(cli, "session", "s1", 10)
    assert cli("debit", *SCOPE, "--amount", "usd=2.5").code == 0
    sink = f"jsonl:{tmp_path / 'books'}"
    exported = cli("export", "--sink", sink, "--once", "--json")
    assert exported.code == 0 and exported.json()["entries"] >= 1
    report = cli.here("reconcile", "--sink", sink, "--json")
    assert report.code == 0 and report.json()["ok"]
    client = redis.Redis.from_url(cli.url)
    client.flushall()
    client.close()
    restored = cli("restore", "--sink", sink, "--json")
    assert restored.code == 0 and restored.json()["ok"]
    shown = cli.here("budgets", "show", "--org", "org_1", "--id", budget.id, "--json")
    assert shown.json()["balance"] == 7.5


# -- webhooks -------------------------------------------------------------------------------


@pytest.mark.real
def test_webhooks_dead_letters_and_a_missing_secret(cli: Cli) -> None:
    listed = cli("webhooks", "dead-letters", "--org", "org_1", "--json")
    assert listed.code == 0 and json.loads(listed.stdout) == []
    table = cli("webhooks", "dead-letters", "--org", "org_1")
    assert table.code == 0 and "none" in table.stdout
    run = cli("webhooks", "run", "--org", "org_1", "--url", "http://127.0.0.1:9/hook")
    assert run.code == 2
    assert "pass --secret or set $BUDGETKIT_WEBHOOK_SECRET" in run.stderr
