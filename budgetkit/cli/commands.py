"""The `budgetkit` commands: each a short function over the public API, and ``run``.

A command takes the parsed options, opens a client (``open_kit``: pings first, so an
unreachable server is a clean exit-2 error), makes one or a few API calls, prints the result
(``output.emit``) and returns its exit code. ``HANDLERS`` maps each command's path to its
function; ``run`` parses, dispatches, and turns every reported failure into one line
(``errors.explain``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict
from decimal import Decimal
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisClusterException, RedisError

from budgetkit import UNSET, BudgetEvent, BudgetKit, InvalidInput, Scope, json_schemas
from budgetkit.cli.completion import completion_script
from budgetkit.cli.demo import in_process_redis, run_demo
from budgetkit.cli.errors import (
    REPORTED_ERRORS,
    CliError,
    StoreFailures,
    explain,
    redact,
    redis_url,
    unreachable,
)
from budgetkit.cli.output import emit, follow_events, print_json, with_spinner
from budgetkit.cli.parser import (
    EXIT_LIMIT,
    EXIT_OK,
    EXIT_USAGE,
    WEBHOOK_SECRET_ENV,
    build_parser,
)
from budgetkit.export import (
    ExportOptions,
    ExportSink,
    ReconcileReport,
    RestoreReport,
    export_once,
    open_sink,
    reconcile,
    restore,
    run_exporter,
)
from budgetkit.webhooks import dead_letters, run_webhooks

__all__ = ["HANDLERS", "run", "run_bench"]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
T = TypeVar("T")

BENCH_MISSING = (
    "the benchmark harness lives in the repository: clone it and run python -m benchmarks"
)
#: The options of `budgets update` (each unchanged when not given: UNSET).
BUDGET_FIELDS = (
    "limit",
    "soft_limit",
    "status",
    "period",
    "metadata",
    "warn_fraction",
    "thresholds",
    "rollover_max",
)
#: The ledger options debit and commit share (parser._usage_options).
USAGE_FIELDS = ("meter_source", "ref_type", "ref_id", "description", "idempotency_key")

_STORE_FAILURES = StoreFailures()


# -- plumbing ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_kit(a: argparse.Namespace) -> AsyncIterator[BudgetKit]:
    """A connected client: pings first, so an unreachable server is a clean exit-2 error."""
    url = redis_url(a)
    try:
        kit = BudgetKit.from_url(url)
    except InvalidInput as error:
        raise CliError(f"{error}. Pass --redis-url redis://HOST:PORT/0") from error
    try:
        try:
            await kit.redis.ping()
        except NoPermissionError:
            pass  # an ACL user without PING: the command itself will tell
        except (RedisError, RedisClusterException, OSError) as error:
            raise unreachable(url, error) from error  # also a refusal: DB index, credentials
        yield kit
    finally:
        with contextlib.suppress(RedisError, OSError):
            await kit.aclose()


def scope_of(a: argparse.Namespace) -> Scope:
    return Scope(
        organization_id=a.org,
        session_id=a.session,
        root_session_id=a.root_session,
        app_channel_id=a.app_channel,
        app_id=a.app,
        agent_id=a.agent,
        user_id=a.user,
    )


def amounts_of(a: argparse.Namespace) -> dict[str, Decimal]:
    """The repeated ``--amount CUR=VALUE`` options as one mapping (each currency once)."""
    out: dict[str, Decimal] = {}
    for currency, value in a.amount:
        key = currency.lower()
        if key in out:
            raise CliError(f"--amount gives {key} twice. Give each currency once")
        out[key] = value
    return out


def usage_values(a: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(a, name) for name in USAGE_FIELDS}


def _check_failed_closed(kit: BudgetKit, a: argparse.Namespace) -> None:
    """A check answered by the failure policy (store unavailable) is an error here, not a stop."""
    if kit.counters.fail_closed or kit.counters.fail_open:
        url = redis_url(a)
        if _STORE_FAILURES.last is not None:
            raise unreachable(url, _STORE_FAILURES.last)
        raise CliError(
            f"cannot reach Redis at {redact(url)} (the check could not run). "
            "Start it or pass --redis-url (or set REDIS_URL)"
        )


# -- scope commands ---------------------------------------------------------------------------


async def _asked(a: argparse.Namespace, ask: Callable[[BudgetKit], Awaitable[T]]) -> T:
    """A check's answer, printed; an error when the failure policy gave it (store down)."""
    async with open_kit(a) as kit:
        answer = await ask(kit)
        _check_failed_closed(kit, a)
    emit(answer, as_json=a.json)
    return answer


async def check(a: argparse.Namespace) -> int:
    result = await _asked(a, lambda kit: kit.check(scope_of(a)))
    return EXIT_LIMIT if result.action in ("pause", "stop") else EXIT_OK


async def check_tool(a: argparse.Namespace) -> int:
    response = await _asked(a, lambda kit: kit.check_tool(scope_of(a)))
    return EXIT_LIMIT if response.status in ("paused", "exhausted") else EXIT_OK


async def resume(a: argparse.Namespace) -> int:
    levels = tuple(level.strip() for level in a.levels.split(",") if level.strip())
    async with open_kit(a) as kit:
        resumed = await kit.resume(scope_of(a), levels=levels)
    emit(resumed, as_json=a.json, title=f"resumed ({len(resumed)})")
    return EXIT_OK


async def debit(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        result = await kit.debit(scope_of(a), amounts_of(a), **usage_values(a))
    emit(result, as_json=a.json)
    return EXIT_OK


async def reserve(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        hold = await kit.reserve(
            scope_of(a), amounts_of(a), ttl_seconds=a.ttl, idempotency_key=a.idempotency_key
        )
    emit(hold, as_json=a.json)
    return EXIT_OK if hold.granted else EXIT_LIMIT


async def commit(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        result = await kit.commit(a.hold, amounts_of(a), **usage_values(a), scope=scope_of(a))
    emit(result, as_json=a.json)
    return EXIT_OK


async def release(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        budgets = await kit.release(a.hold, organization_id=a.org)
    emit(budgets, as_json=a.json, title=f"released {a.hold}")
    return EXIT_OK


# -- budgets ----------------------------------------------------------------------------------


async def budgets_list(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        budgets = await kit.list_budgets(
            a.org, a.subject_type, a.subject_id, a.include_disabled, a.limit, a.offset
        )
    emit(budgets, as_json=a.json, title=f"budgets of {a.org}")
    return EXIT_OK


async def budgets_show(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        budget = await kit.get_budget(a.org, a.id)
    emit(budget, as_json=a.json)
    return EXIT_OK


async def budgets_create(a: argparse.Namespace) -> int:
    subject_id = a.subject_id
    if subject_id is None:
        if a.subject_type not in ("org", "organization"):
            raise CliError(f"--subject-id is required for a {a.subject_type} budget. Pass it")
        subject_id = a.org
    async with open_kit(a) as kit:
        budget = await kit.create_budget(
            a.org,
            a.subject_type,
            subject_id,
            a.currency,
            a.limit,
            soft_limit=a.soft_limit,
            period=a.period,
            metadata=a.metadata,
            warn_fraction=a.warn_fraction,
            thresholds=a.thresholds,
            rollover_max=a.rollover_max,
        )
    emit(budget, as_json=a.json, title="created")
    return EXIT_OK


async def budgets_update(a: argparse.Namespace) -> int:
    changes = {name: getattr(a, name) for name in BUDGET_FIELDS if getattr(a, name) is not UNSET}
    if not changes:
        raise CliError(
            "nothing to update. Pass at least one of --limit --soft-limit --status --period "
            "--metadata --warn-fraction --thresholds --rollover-max"
        )
    async with open_kit(a) as kit:
        budget = await kit.update_budget(a.org, a.id, **changes)
    emit(budget, as_json=a.json, title="updated")
    return EXIT_OK


async def budgets_disable(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        budget = await kit.disable_budget(a.org, a.id)
    emit(budget, as_json=a.json, title="disabled")
    return EXIT_OK


async def budgets_top_up(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        budget = await kit.top_up(a.org, a.id, a.amount, a.description, a.idempotency_key)
    emit(budget, as_json=a.json, title="topped up")
    return EXIT_OK


async def budgets_ledger(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        entries = await kit.ledger(a.org, a.id, a.limit, a.offset)
    emit(entries, as_json=a.json, title=f"ledger of {a.id} (newest first)")
    return EXIT_OK


# -- events -----------------------------------------------------------------------------------


async def events_tail(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        backlog: deque[BudgetEvent] = deque(maxlen=a.last)
        async for event in kit.events(a.org, after=a.after, follow=False):
            backlog.append(event)
        if not a.follow:
            emit(list(backlog), as_json=a.json, title=f"events of {a.org}")
            return EXIT_OK
        after = backlog[-1].id if backlog else a.after
        live = kit.events(a.org, after=after, follow=True)
        if not a.json:
            await follow_events(a.org, list(backlog), live)
            return EXIT_OK
        for event in backlog:
            print_json(event)
        async for event in live:
            print_json(event)
    return EXIT_OK  # pragma: no cover - follow only ends by an interrupt


# -- the books (budgetkit.export) -------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_books(a: argparse.Namespace) -> AsyncIterator[ExportSink]:
    sink = await open_sink(a.sink)
    try:
        yield sink
    finally:
        await sink.aclose()


async def export(a: argparse.Namespace) -> int:
    options = ExportOptions(batch=a.batch, trim=not a.no_trim)
    async with open_kit(a) as kit, open_books(a) as sink:
        if a.once:
            stats = await export_once(kit, sink, options=options)
        else:
            stats = await run_exporter(
                kit, sink, options=options, interval_s=a.interval, stop_after_s=a.stop_after
            )
    emit(asdict(stats), as_json=a.json, title="export")
    return EXIT_OK


async def reconcile_books(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit, open_books(a) as sink:
        report = await reconcile(kit, sink, a.org_filter or None)
    return _report(a, report)


async def restore_books(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit, open_books(a) as sink:
        report = await restore(kit, sink, a.org_filter or None, ledger=a.ledger, force=a.force)
    return _report(a, report)


def _report(a: argparse.Namespace, report: ReconcileReport | RestoreReport) -> int:
    """A books report: its JSON or its summary line; exit 1 when it found a problem."""
    if a.json:
        print_json(report.to_json())
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_LIMIT


# -- tools ------------------------------------------------------------------------------------


async def migrate(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        result = await kit.migrate(prune_libraries=a.prune_libraries)
    if a.json:
        print_json(result)
        return EXIT_OK
    before = "not recorded (format 1)" if result.format_before is None else result.format_before
    print(f"stored format: {before} -> {result.format_after}")
    print(f"function library loaded: {result.library}")
    if a.prune_libraries:
        print(f"libraries deleted: {', '.join(result.pruned) or 'none'}")
    return EXIT_OK


async def schema(a: argparse.Namespace) -> int:
    schemas = json_schemas()
    document: Any = schemas[a.model] if a.model else schemas
    print(json.dumps(document, indent=None if a.json else 2))
    return EXIT_OK


async def demo(a: argparse.Namespace) -> int:
    """The demo fleet on --redis-url / $REDIS_URL, else on an in-process fakeredis."""
    lines: list[str] = []
    say: Callable[[str], None] = lines.append if a.json else print
    if a.redis_url or os.environ.get("REDIS_URL"):
        async with open_kit(a) as kit:
            ok = await _run_demo(a, kit.redis, say)
    else:
        say("no --redis-url / REDIS_URL: running on an in-process fakeredis server")
        ok = await _run_demo(a, in_process_redis(), say, embedded=True)
    if a.json:
        print_json({"reconciled": ok, "output": lines})
    return EXIT_OK if ok else EXIT_LIMIT


async def _run_demo(
    a: argparse.Namespace, client: Redis, say: Callable[[str], None], *, embedded: bool = False
) -> bool:
    """Plain lines when printing JSON or piped; a spinner under the lines on a terminal."""
    batching = not embedded
    if a.json or not sys.stdout.isatty():
        return await run_demo(client, say=say, batching=batching)
    return await with_spinner(
        "running the demo", lambda s: run_demo(client, say=s, batching=batching)
    )


async def completion(a: argparse.Namespace) -> int:
    print(completion_script(build_parser(), a.shell), end="")
    return EXIT_OK


def run_bench(argv: Sequence[str]) -> int:
    """`budgetkit bench ARGS`: ``python -m benchmarks ARGS`` when the harness is importable (a
    checkout of the repository: it does not ship in the wheel); else says where it lives."""
    try:
        benchmarks = importlib.import_module("benchmarks")
    except ModuleNotFoundError as error:
        if error.name != "benchmarks":
            raise
        benchmarks = None
    bench_main = getattr(benchmarks, "main", None)
    if bench_main is None:  # before the harness moved: its main was budgetkit.bench.main
        with contextlib.suppress(ModuleNotFoundError):
            bench_main = importlib.import_module("budgetkit.bench").main
    if bench_main is None:
        print(f"budgetkit: {BENCH_MISSING}.", file=sys.stderr)
        return EXIT_USAGE
    return int(bench_main(list(argv)))


async def webhooks_run(a: argparse.Namespace) -> int:
    secret = a.secret or os.environ.get(WEBHOOK_SECRET_ENV)
    if not secret:
        raise CliError(f"the signing secret: pass --secret or set ${WEBHOOK_SECRET_ENV}")
    async with open_kit(a) as kit:
        stats = await run_webhooks(kit, a.org, url=a.url, secret=secret, event_types=a.event_type)
    emit(stats, as_json=a.json, title="webhooks")
    return EXIT_OK


async def webhooks_dead_letters(a: argparse.Namespace) -> int:
    async with open_kit(a) as kit:
        letters = await dead_letters(kit, a.org, limit=a.limit)
    emit(letters, as_json=a.json, title=f"dead letters of {a.org}")
    return EXIT_OK


HANDLERS: dict[str, Handler] = {
    "budgets create": budgets_create,
    "budgets list": budgets_list,
    "budgets show": budgets_show,
    "budgets update": budgets_update,
    "budgets disable": budgets_disable,
    "budgets top-up": budgets_top_up,
    "budgets ledger": budgets_ledger,
    "check": check,
    "check-tool": check_tool,
    "resume": resume,
    "debit": debit,
    "reserve": reserve,
    "commit": commit,
    "release": release,
    "events tail": events_tail,
    "export": export,
    "reconcile": reconcile_books,
    "restore": restore_books,
    "webhooks run": webhooks_run,
    "webhooks dead-letters": webhooks_dead_letters,
    "migrate": migrate,
    "schema": schema,
    "demo": demo,
    "completion": completion,
}


# -- running a command ------------------------------------------------------------------------


def _watch_store_failures() -> None:
    """budgetkit logs store failures as warnings; the CLI reports them as its one-line error, so
    Python's last-resort handler must not print them too (configured handlers still get them)."""
    log = logging.getLogger("budgetkit")
    if _STORE_FAILURES not in log.handlers:
        log.addHandler(_STORE_FAILURES)
    _STORE_FAILURES.last = None


def _bench_args(args: Sequence[str]) -> list[str] | None:
    """The harness's arguments when the command is ``bench``, also after top-level options
    (``budgetkit --json bench --quick``); the harness parses them itself (argparse would take
    ``--quick`` for an unknown option of its own)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("-h", "--help", "--version"):
            return None
        i += 2 if args[i] == "--redis-url" else 1
    return list(args[i + 1 :]) if args[i : i + 1] == ["bench"] else None


def run(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` (default: the process's arguments), runs the command, returns its exit
    code; a reported failure is one line on stderr and exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    bench_args = _bench_args(args)
    if bench_args is not None:
        return run_bench(bench_args)
    a = build_parser().parse_args(args)
    _watch_store_failures()
    try:
        code: int = asyncio.run(HANDLERS[a.path](a))
    except KeyboardInterrupt:
        return EXIT_OK if getattr(a, "follow", False) else EXIT_USAGE
    except BrokenPipeError:  # `budgetkit ... | head`: the reader left; not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except REPORTED_ERRORS as error:
        print(f"budgetkit: {explain(error, a)}.", file=sys.stderr)
        return EXIT_USAGE
    return code
