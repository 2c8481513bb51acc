"""`budgetkit` command line: a thin layer over the public API.

Every command takes ``--redis-url`` (default ``$REDIS_URL``; ``demo`` alone falls back to an
in-process fakeredis) and ``--json`` (one JSON document on stdout: the models' wire JSON), before
or after the command. Human output is rich tables (``budgetkit.cli_output``; rich is imported only
for it).

Exit codes (``EXIT_CODES_HELP``): 0 ok (a check that says continue or warn), 1 a check that says
pause or stop (also a denied ``reserve``, drift found by ``reconcile``...), 2 a usage, input or
connection error, reported as one line on stderr: ``budgetkit: <what happened>. <what to do>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from budgetkit.client import UNSET, BudgetKit
from budgetkit.convert import budget_period
from budgetkit.errors import (
    BudgetkitError,
    BudgetNotFound,
    BudgetUnavailable,
    CorruptState,
    HoldExpired,
    HoldNotFound,
    IdempotencyConflict,
    InvalidInput,
    InvalidPeriod,
    OutcomeUnknown,
    UnpricedModel,
)
from budgetkit.models import BudgetCheckResult, BudgetEvent, BudgetPeriod, json_schemas
from budgetkit.results import Reservation
from budgetkit.scope import Scope
from budgetkit.store_errors import is_acl_refusal, reply_code, server_reply

EXIT_OK, EXIT_LIMIT, EXIT_USAGE = 0, 1, 2
EXIT_USAGE_HELP = "usage, input or connection error (one line on stderr)"
EXIT_CODES_HELP = f"""exit codes:
  0  ok; for check: continue or warn
  1  check: pause or stop; check-tool: paused or exhausted; reserve: denied;
     reconcile: drift; restore: mismatches or budgets without a snapshot;
     demo: a budget did not reconcile
  2  {EXIT_USAGE_HELP}"""
Handler = Callable[[argparse.Namespace], Awaitable[int]]

SUBJECT_TYPES = ("session", "app_channel", "app", "agent", "user", "org", "organization")
SETTABLE_STATUSES = ("active", "paused", "disabled")
SHELLS = ("bash", "zsh", "fish")
REDIS_URL_HELP = "redis://, rediss:// or unix:// URL (default: $REDIS_URL)"
JSON_HELP = "print one JSON document (the models' wire JSON) instead of tables"
SESSION_SUBJECT_HELP = (
    "A session budget is enforced for scopes whose root session is --subject-id (child sessions "
    "pool there), ignored in a scope that names another root session."
)
SCOPE_OPTIONS = (
    ("session", "session id (the budgets of --root-session apply when given)"),
    ("root-session", "root session of a delegation tree"),
    ("app-channel", "app channel id"),
    ("app", "app id"),
    ("agent", "agent id"),
    ("user", "user id"),
)


class CliError(Exception):
    """A failure reported as one line: what happened, then what to do."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) in budgetkit's error format."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"budgetkit: {message}. See `{self.prog} --help`.\n")


# -- option types (argparse reports their ArgumentTypeError as a usage error) -----------------


def _decimal(text: str) -> Decimal:
    """An exact decimal amount from the command line."""
    try:
        value = Decimal(text.replace("_", ""))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _decimal_or_none(text: str) -> Decimal | None:
    return None if text.lower() in ("none", "null") else _decimal(text)


def _json_or_none(text: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({error.msg})") from None


def _period(text: str) -> BudgetPeriod | None:
    """A period: ``none``, JSON, or a period string read as the API reads it (``month``, ``5h``)."""
    if text.lower() in ("none", "null"):
        return None
    value: object = _json_or_none(text) if text.lstrip().startswith("{") else text
    try:
        return budget_period(value)
    except InvalidPeriod as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _thresholds(text: str) -> list[Decimal] | None:
    if text.lower() in ("none", "null", ""):
        return None
    return [_decimal(part.strip()) for part in text.split(",")]


def _amount_pair(text: str) -> tuple[str, Decimal]:
    currency, sep, value = text.partition("=")
    if not sep or not currency.strip():
        raise argparse.ArgumentTypeError(f"expected CURRENCY=VALUE (e.g. usd=0.25), got {text!r}")
    return currency.strip(), _decimal(value.strip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


# -- plumbing ---------------------------------------------------------------------------------


def redact(url: str) -> str:
    """The URL without its password (``redis://:***@host:port/0``), for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "the given URL"


def _redis_url(a: argparse.Namespace) -> str:
    url: str | None = a.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise CliError("no Redis URL given. Pass --redis-url redis://HOST:PORT/0 or set REDIS_URL")
    return url


def _reason(error: BaseException) -> str:
    if isinstance(error, RedisTimeoutError | TimeoutError):
        return "timed out"
    text = str(error)
    if "Error 111 " in text or "refused" in text.lower():
        return "connection refused"
    if "Error -2 " in text or "Error -3 " in text or "not known" in text:
        return "unknown host"
    return text.rstrip(".") or type(error).__name__


AUTH_HINTS = ("authenticat", "noauth", "wrongpass", "username-password", "invalid password")
ACL_HINT = "Grant its user the commands and keys budgetkit needs (docs/acl.md)"
#: What to do when Redis refused a request, by the code of its reply (budgetkit.store_errors).
REFUSAL_HINTS = {
    "READONLY": "Point --redis-url at the primary, not a replica",
    "OOM": "Free memory on the server or raise its maxmemory",
    "LOADING": "Wait until it has loaded its data, then retry",
    "MISCONF": "Fix its persistence (see the server's log), then retry",
}
REFUSAL_HINT = "Fix the server or --redis-url, then retry"


def _refusal_hint(reply: str) -> str:
    if is_acl_refusal(reply):
        return ACL_HINT
    if "DB index" in reply:
        return "Use a database the server has (redis://HOST:PORT/0)"
    return REFUSAL_HINTS.get(reply_code(reply), REFUSAL_HINT)


def _unreachable(url: str, error: BaseException) -> CliError:
    """The one-line error of a store that could not serve a command: unreachable, refusing the
    credentials, or refusing the command (its reply names why: ACL, DB index, read-only...)."""
    text = str(error).lower()
    if isinstance(error, AuthenticationError) or any(hint in text for hint in AUTH_HINTS):
        return CliError(
            f"Redis at {redact(url)} refused the connection's credentials "
            f"({str(error).rstrip('.')}). Put the right user and password in --redis-url "
            "(redis://USER:PASSWORD@HOST:PORT/0)"
        )
    if isinstance(error, BudgetUnavailable):
        reply = error.server_error
    else:
        reply = server_reply(error) if isinstance(error, RedisError) else None
    if reply is not None:
        reason = reply.split(" script: ", 1)[0].rstrip(".")  # without Redis's script suffix
        return CliError(
            f"Redis at {redact(url)} refused the command ({reason}). {_refusal_hint(reply)}"
        )
    return CliError(
        f"cannot reach Redis at {redact(url)} ({_reason(error)}). "
        "Start it or pass --redis-url (or set REDIS_URL)"
    )


@contextlib.asynccontextmanager
async def _open(a: argparse.Namespace) -> AsyncIterator[BudgetKit]:
    """A connected client: pings first, so an unreachable server is a clean exit-2 error."""
    url = _redis_url(a)
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
            raise _unreachable(url, error) from error  # also a refusal: DB index, credentials
        yield kit
    finally:
        with contextlib.suppress(RedisError, OSError):
            await kit.aclose()


def _scope(a: argparse.Namespace) -> Scope:
    return Scope(
        organization_id=a.org,
        session_id=a.session,
        root_session_id=a.root_session,
        app_channel_id=a.app_channel,
        app_id=a.app,
        agent_id=a.agent,
        user_id=a.user,
    )


def _amounts(a: argparse.Namespace) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for currency, value in a.amount:
        key = currency.lower()
        if key in out:
            raise CliError(f"--amount gives {key} twice. Give each currency once")
        out[key] = value
    return out


def to_json(value: Any) -> Any:
    """The wire JSON of a model, list of models, or plain value."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(to_json(value), separators=(",", ":")), flush=True)


def _emit(a: argparse.Namespace, value: Any, *, title: str | None = None) -> None:
    """One JSON document with --json, else a rich rendering of the value."""
    if a.json:
        _print_json(value)
        return
    from budgetkit.cli_output import render

    render(value, title=title)


class _StoreFailures(logging.Handler):
    """Keeps the last store failure budgetkit logged (logger ``budgetkit``), so that a check
    answered by the failure policy names its cause; prints nothing."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: BudgetUnavailable | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BudgetUnavailable):
                self.last = arg


_STORE_FAILURES = _StoreFailures()


def _check_failed_closed(kit: BudgetKit, a: argparse.Namespace) -> None:
    """A check answered by the failure policy (store unavailable) is an error here, not a stop."""
    if kit.counters.fail_closed or kit.counters.fail_open:
        url = _redis_url(a)
        if _STORE_FAILURES.last is not None:
            raise _unreachable(url, _STORE_FAILURES.last)
        raise CliError(
            f"cannot reach Redis at {redact(url)} (the check could not run). "
            "Start it or pass --redis-url (or set REDIS_URL)"
        )


# -- commands ---------------------------------------------------------------------------------


async def _check(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        result = await kit.check(_scope(a))
        _check_failed_closed(kit, a)
    _emit(a, result)
    return EXIT_LIMIT if result.action in ("pause", "stop") else EXIT_OK


async def _check_tool(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        response = await kit.check_tool(_scope(a))
        _check_failed_closed(kit, a)
    _emit(a, response)
    return EXIT_LIMIT if response.status in ("paused", "exhausted") else EXIT_OK


async def _resume(a: argparse.Namespace) -> int:
    levels = tuple(level.strip() for level in a.levels.split(",") if level.strip())
    async with _open(a) as kit:
        resumed = await kit.resume(_scope(a), levels=levels)
    _emit(a, resumed, title=f"resumed ({len(resumed)})")
    return EXIT_OK


def _usage_values(a: argparse.Namespace) -> dict[str, Any]:
    """The ledger options debit and commit share (declared by _usage_options)."""
    names = ("meter_source", "ref_type", "ref_id", "description", "idempotency_key")
    return {name: getattr(a, name) for name in names}


async def _debit(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        result = await kit.debit(_scope(a), _amounts(a), **_usage_values(a))
    _emit(a, result)
    return EXIT_OK


async def _reserve(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        hold = await kit.reserve(
            _scope(a), _amounts(a), ttl_seconds=a.ttl, idempotency_key=a.idempotency_key
        )
    _emit(a, hold)
    return EXIT_OK if hold.granted else EXIT_LIMIT


def _hold(a: argparse.Namespace) -> Reservation:
    return Reservation(granted=True, id=a.hold, scope=_scope(a), check=BudgetCheckResult.ok())


async def _commit(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        result = await kit.commit(_hold(a), _amounts(a), **_usage_values(a))
    _emit(a, result)
    return EXIT_OK


async def _release(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        budgets = await kit.release(_hold(a))
    _emit(a, budgets, title=f"released {a.hold}")
    return EXIT_OK


async def _budgets_list(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        budgets = await kit.list_budgets(
            a.org, a.subject_type, a.subject_id, a.include_disabled, a.limit, a.offset
        )
    _emit(a, budgets, title=f"budgets of {a.org}")
    return EXIT_OK


async def _budgets_show(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        budget = await kit.get_budget(a.org, a.id)
    _emit(a, budget)
    return EXIT_OK


async def _budgets_create(a: argparse.Namespace) -> int:
    subject_id = a.subject_id
    if subject_id is None:
        if a.subject_type not in ("org", "organization"):
            raise CliError(f"--subject-id is required for a {a.subject_type} budget. Pass it")
        subject_id = a.org
    async with _open(a) as kit:
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
        )
    _emit(a, budget, title="created")
    return EXIT_OK


async def _budgets_update(a: argparse.Namespace) -> int:
    changes = {
        name: getattr(a, name)
        for name in (
            "limit",
            "soft_limit",
            "status",
            "period",
            "metadata",
            "warn_fraction",
            "thresholds",
        )
        if getattr(a, name) is not UNSET
    }
    if not changes:
        raise CliError(
            "nothing to update. Pass at least one of --limit --soft-limit --status --period "
            "--metadata --warn-fraction --thresholds"
        )
    async with _open(a) as kit:
        budget = await kit.update_budget(a.org, a.id, **changes)
    _emit(a, budget, title="updated")
    return EXIT_OK


async def _budgets_disable(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        budget = await kit.disable_budget(a.org, a.id)
    _emit(a, budget, title="disabled")
    return EXIT_OK


async def _budgets_top_up(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        budget = await kit.top_up(a.org, a.id, a.amount, a.description, a.idempotency_key)
    _emit(a, budget, title="topped up")
    return EXIT_OK


async def _budgets_ledger(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        entries = await kit.ledger(a.org, a.id, a.limit, a.offset)
    _emit(a, entries, title=f"ledger of {a.id} (newest first)")
    return EXIT_OK


async def _events_tail(a: argparse.Namespace) -> int:
    async with _open(a) as kit:
        backlog: deque[BudgetEvent] = deque(maxlen=a.last)
        async for event in kit.events(a.org, after=a.after, follow=False):
            backlog.append(event)
        if not a.follow:
            _emit(a, list(backlog), title=f"events of {a.org}")
            return EXIT_OK
        after = backlog[-1].id if backlog else a.after
        if a.json:
            for event in backlog:
                _print_json(event)
            async for event in kit.events(a.org, after=after, follow=True):
                _print_json(event)
            return EXIT_OK  # pragma: no cover - follow only ends by an interrupt
        from budgetkit.cli_output import follow_events

        await follow_events(a.org, list(backlog), kit.events(a.org, after=after, follow=True))
    return EXIT_OK


@contextlib.asynccontextmanager
async def _sink(a: argparse.Namespace) -> AsyncIterator[Any]:
    from budgetkit.export import open_sink

    sink = await open_sink(a.sink)
    try:
        yield sink
    finally:
        await sink.aclose()


async def _export(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from budgetkit.export import export_once, run_exporter

    async with _open(a) as kit, _sink(a) as sink:
        if a.once:
            stats = await export_once(kit, sink, batch=a.batch, trim=not a.no_trim)
        else:
            stats = await run_exporter(
                kit,
                sink,
                batch=a.batch,
                trim=not a.no_trim,
                interval_s=a.interval,
                stop_after_s=a.stop_after,
            )
    _emit(a, asdict(stats), title="export")
    return EXIT_OK


async def _reconcile(a: argparse.Namespace) -> int:
    from budgetkit.export import reconcile

    async with _open(a) as kit, _sink(a) as sink:
        report = await reconcile(kit, sink, a.org_filter or None)
    if a.json:
        _print_json(report.to_json())
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_LIMIT


async def _restore(a: argparse.Namespace) -> int:
    from budgetkit.export import restore

    async with _open(a) as kit, _sink(a) as sink:
        report = await restore(kit, sink, a.org_filter or None, ledger=a.ledger, force=a.force)
    if a.json:
        _print_json(report.to_json())
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_LIMIT


async def _schema(a: argparse.Namespace) -> int:
    schemas = json_schemas()
    document: Any = schemas[a.model] if a.model else schemas
    print(json.dumps(document, indent=None if a.json else 2))
    return EXIT_OK


async def _demo(a: argparse.Namespace) -> int:
    from budgetkit.demo import run_demo

    lines: list[str] = []
    say: Callable[[str], None] = lines.append if a.json else print
    url = a.redis_url or os.environ.get("REDIS_URL")
    if url:
        async with _open(a) as kit:
            ok = await _run_demo(a, run_demo, kit.redis, say)
    else:
        import fakeredis

        say("no --redis-url / REDIS_URL: running on an in-process fakeredis server")
        ok = await _run_demo(a, run_demo, fakeredis.FakeAsyncRedis(), say)
    if a.json:
        _print_json({"reconciled": ok, "output": lines})
    return EXIT_OK if ok else EXIT_LIMIT


async def _run_demo(
    a: argparse.Namespace, run: Any, client: Any, say: Callable[[str], None]
) -> bool:
    if a.json or not sys.stdout.isatty():
        return bool(await run(client, say=say))
    from budgetkit.cli_output import with_spinner

    return bool(await with_spinner("running the demo", lambda s: run(client, say=s)))


async def _completion(a: argparse.Namespace) -> int:
    from budgetkit.cli_completion import completion_script

    print(completion_script(build_parser(), a.shell), end="")
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """--redis-url and --json on every command (defaults live on the top-level parser)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"{REDIS_URL_HELP}; may also precede the command",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"{JSON_HELP}; may also precede the command",
    )
    return common


def _org(p: argparse.ArgumentParser) -> None:
    p.add_argument("--org", required=True, metavar="ORG", help="organization id")


def _scope_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("scope")
    group.add_argument("--org", required=True, metavar="ORG", help="organization id")
    for name, text in SCOPE_OPTIONS:
        group.add_argument(f"--{name}", default=None, metavar="ID", help=text)
    return p


def _budget_id(p: argparse.ArgumentParser) -> None:
    _org(p)
    p.add_argument("--id", required=True, metavar="BUDGET_ID", help="budget id (bdgt_...)")


def _page(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--limit", type=_positive_int, default=default, help=f"page size (default {default})"
    )
    p.add_argument("--offset", type=_positive_int, default=0, help="entries to skip")


def _amount_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--amount",
        type=_amount_pair,
        action="append",
        required=True,
        metavar="CUR=VALUE",
        help=f"{what}, e.g. usd=0.25 (repeat for several currencies)",
    )


def _usage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meter-source", default="manual", help="ledger meter source (manual)")
    p.add_argument("--ref-type", help="ledger reference type, e.g. llm_generation")
    p.add_argument("--ref-id", help="ledger reference id")
    p.add_argument("--description", help="ledger description")
    p.add_argument("--idempotency-key", metavar="KEY", help="apply at most once per key")


def _budget_fields(p: argparse.ArgumentParser, *, update: bool) -> None:
    """The budget fields of create (required/defaults) and update (UNSET = unchanged)."""
    keep = UNSET if update else None
    clear = " (none clears)" if update else ""
    p.add_argument(
        "--limit",
        type=_decimal,
        required=not update,
        default=keep,
        help="limit in currency units",
    )
    p.add_argument(
        "--soft-limit",
        type=_decimal_or_none,
        default=keep,
        metavar="VALUE",
        help=f"soft limit: pause at this spend{clear}",
    )
    p.add_argument(
        "--period",
        type=_period,
        default=keep,
        metavar="PERIOD",
        help="reset period: hour, day, week, month or year (calendar, UTC), a rolling window "
        "such as 30d, 12h, 90m, 3600s, or JSON such as "
        f'\'{{"type":"duration","seconds":3600}}\'{clear}',
    )
    p.add_argument(
        "--metadata", type=_json_or_none, default=keep, metavar="JSON", help=f"JSON value{clear}"
    )
    p.add_argument(
        "--warn-fraction",
        type=_decimal,
        default=UNSET if update else Decimal("0.2"),
        metavar="F",
        help="warn when this fraction of the limit remains"
        + (" (unchanged when not given)" if update else " (default 0.2)"),
    )
    p.add_argument(
        "--thresholds",
        type=_thresholds,
        default=keep,
        metavar="F,F,...",
        help=f"extra warning levels as spent fractions, e.g. 0.5,0.8{clear}",
    )


def _exit_codes(zero: str, one: str) -> str:
    return f"exit codes: 0 {zero}; 1 {one}; 2 {EXIT_USAGE_HELP}."


def build_parser() -> argparse.ArgumentParser:
    from budgetkit import __version__

    common, scope = _common(), _scope_options()
    parser = _Parser(
        prog="budgetkit",
        description="Redis-native budget enforcement.\n\n--redis-url and --json may come "
        "before the command or after it:\n`budgetkit --json check --org O` is "
        "`budgetkit check --org O --json`.",
        epilog=f"{EXIT_CODES_HELP}\n\nRun `budgetkit COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"budgetkit {__version__}")
    parser.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help=f"{REDIS_URL_HELP}; before or after the command",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False,
        help=f"{JSON_HELP}; before or after the command",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        into: Any,
        name: str,
        handler: Handler,
        *parents: argparse.ArgumentParser,
        help: str,
        exits: tuple[str, str] | None = None,
    ) -> argparse.ArgumentParser:
        """A command; ``exits``: what exit codes 0 and 1 mean, for those that exit 1."""
        epilog = None if exits is None else _exit_codes(*exits)
        p: argparse.ArgumentParser = into.add_parser(
            name, parents=[*parents, common], help=help, description=help, epilog=epilog
        )
        p.set_defaults(handler=handler)
        return p

    budgets = sub.add_parser("budgets", help="create, list, show, update, disable, top up budgets")
    actions = budgets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add(actions, "create", _budgets_create, help="create a budget (balance = limit)")
    _org(p)
    p.add_argument(
        "--subject-type",
        required=True,
        choices=SUBJECT_TYPES,
        help=f"what it limits. {SESSION_SUBJECT_HELP}",
    )
    p.add_argument("--subject-id", help="the subject's id (default: --org for an org budget)")
    p.add_argument("--currency", default="usd", help="currency code (default usd)")
    _budget_fields(p, update=False)
    p = add(actions, "list", _budgets_list, help="list an organization's budgets, newest first")
    _org(p)
    p.add_argument("--subject-type", choices=SUBJECT_TYPES, help="only this subject type")
    p.add_argument("--subject-id", help="only this subject")
    p.add_argument("--include-disabled", action="store_true", help="list disabled budgets too")
    _page(p, 200)
    _budget_id(add(actions, "show", _budgets_show, help="show one budget"))
    p = add(actions, "update", _budgets_update, help="change the given fields (others stay)")
    _budget_id(p)
    p.add_argument("--status", default=UNSET, choices=SETTABLE_STATUSES, help="set the status")
    _budget_fields(p, update=True)
    _budget_id(add(actions, "disable", _budgets_disable, help="disable a budget"))
    p = add(actions, "top-up", _budgets_top_up, help="credit an amount to a budget's balance")
    _budget_id(p)
    p.add_argument("--amount", type=_decimal, required=True, help="amount in the budget currency")
    p.add_argument("--description", help="ledger description")
    p.add_argument("--idempotency-key", metavar="KEY", help="apply at most once per key")
    p = add(actions, "ledger", _budgets_ledger, help="a budget's ledger entries, newest first")
    _budget_id(p)
    _page(p, 50)

    add(
        sub,
        "check",
        _check,
        scope,
        help="the most restrictive action for a scope",
        exits=("continue or warn", "pause or stop"),
    )
    add(
        sub,
        "check-tool",
        _check_tool,
        scope,
        help="the check_budget tool response for a scope",
        exits=("active, warning or no_budgets", "paused or exhausted"),
    )
    add(sub, "resume", _resume, scope, help="resume the paused budgets of a scope").add_argument(
        "--levels", default="session", help="comma-separated levels (default: session)"
    )
    p = add(sub, "debit", _debit, scope, help="charge every budget of a scope, atomically")
    _amount_option(p, "amount to charge")
    _usage_options(p)
    p = add(
        sub,
        "reserve",
        _reserve,
        scope,
        help="hold an amount on a scope",
        exits=("granted", "denied (the printed check says why)"),
    )
    _amount_option(p, "amount to hold")
    p.add_argument("--ttl", type=float, default=60.0, metavar="SECONDS", help="hold TTL (60)")
    p.add_argument("--idempotency-key", metavar="KEY", help="apply at most once per key")
    p = add(sub, "commit", _commit, scope, help="settle a hold with the actual amount")
    p.add_argument("--hold", required=True, metavar="HOLD_ID", help="the id printed by reserve")
    _amount_option(p, "actual amount")
    _usage_options(p)
    p = add(sub, "release", _release, scope, help="drop a hold without charging")
    p.add_argument("--hold", required=True, metavar="HOLD_ID", help="the id printed by reserve")

    events = sub.add_parser("events", help="read an organization's events")
    modes = events.add_subparsers(dest="mode", required=True, metavar="MODE")
    p = add(modes, "tail", _events_tail, help="print events (--follow: keep waiting for new ones)")
    _org(p)
    p.add_argument("--after", metavar="STREAM_ID", help="start after this event id")
    p.add_argument("--last", type=_positive_int, metavar="N", help="only the last N events")
    p.add_argument("--follow", "-f", action="store_true", help="wait for new events (Ctrl-C)")

    sink_help = "postgresql://USER@HOST:PORT/DB or jsonl:DIRECTORY (the exported books)"
    p = add(sub, "export", _export, help="drain ledgers and events into durable books")
    p.add_argument("--sink", required=True, help=sink_help)
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=0.5, metavar="S", help="between passes")
    p.add_argument("--stop-after", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--batch", type=_positive_int, default=500, help="entries per read (500)")
    p.add_argument("--no-trim", action="store_true", help="keep exported entries in Redis")
    for name, handler, what, exits in (
        (
            "reconcile",
            _reconcile,
            "compare Redis balances with the books",
            ("the books match Redis", "drift (the report lists it)"),
        ),
        (
            "restore",
            _restore,
            "rebuild budgets in an empty Redis from the books",
            ("restored", "mismatches or budgets without a snapshot (the report lists them)"),
        ),
    ):
        p = add(sub, name, handler, help=what, exits=exits)
        p.add_argument("--sink", required=True, help=sink_help)
        p.add_argument("--org", dest="org_filter", action="append", help="only this org (repeat)")
        if name == "restore":
            p.add_argument("--ledger", action="store_true", help="also rewrite the ledgers")
            p.add_argument("--force", action="store_true", help="even if Redis is not empty")

    p = add(sub, "schema", _schema, help="JSON Schema of the models")
    p.add_argument("--model", choices=sorted(json_schemas()), help="only this model's schema")
    add(
        sub,
        "demo",
        _demo,
        help="simulate a fleet of agent workers (fakeredis without a URL)",
        exits=("every budget reconciled", "a budget did not reconcile"),
    )
    bench = sub.add_parser(
        "bench", help="run the benchmarks (see `budgetkit bench --help`)", add_help=False
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p = add(sub, "completion", _completion, help="print a shell completion script")
    p.add_argument("shell", choices=SHELLS, help="bash, zsh or fish")
    return parser


# -- errors -----------------------------------------------------------------------------------


def explain(error: BaseException, a: argparse.Namespace) -> str:
    """One line for a failure: what happened, then what to do."""
    org = getattr(a, "org", None)
    if isinstance(error, CliError):
        return str(error)
    if isinstance(error, BudgetNotFound):
        bid = getattr(a, "id", None)
        return (
            f"budget {bid} not found in organization {org}. Check --id and --org "
            f"(`budgetkit budgets list --org {org}` lists them)"
        )
    if isinstance(error, HoldNotFound):
        return (
            f"hold {getattr(a, 'hold', '')} is unknown or already committed or released. "
            "Check --hold and --org; record the usage with `budgetkit debit` if it is gone"
        )
    if isinstance(error, HoldExpired):
        hold = getattr(a, "hold", "")
        if getattr(a, "command", None) == "release":
            return f"hold {hold} already expired. Nothing is held any more; nothing to release"
        return (
            f"hold {hold} expired (it outlived its --ttl). Record the usage with `budgetkit debit`"
        )
    if isinstance(error, IdempotencyConflict):
        return f"{error}. Use a new --idempotency-key for a different request"
    if isinstance(error, OutcomeUnknown):
        return (
            f"the connection failed after the request was sent: it may have been applied "
            f"({error}). Retry with the same --idempotency-key"
        )
    if isinstance(error, BudgetUnavailable):
        return str(_unreachable(_redis_url(a), error))
    if isinstance(error, UnpricedModel):
        return f"{error}. Pass the usd amount explicitly"
    if isinstance(error, CorruptState):
        return f"a stored record is corrupt ({error}). Nothing was written; inspect the key"
    if isinstance(error, InvalidInput | ValueError):
        command = " ".join(
            part for part in (getattr(a, "command", None), getattr(a, "action", None)) if part
        )
        return f"invalid input: {error}. Fix the option (see `budgetkit {command} --help`)"
    if isinstance(error, RedisError | RedisClusterException | OSError):
        return str(_unreachable(_redis_url(a), error))
    return f"{error}. This is unexpected: please report it"


#: Failures reported as one line (exit 2).
REPORTED_ERRORS = (CliError, BudgetkitError, RedisError, RedisClusterException, OSError, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:  # the harness parses its own options (--quick, --json PATH, ...)
        from budgetkit.bench import main as bench_main

        return int(bench_main(args[1:]))
    a = build_parser().parse_args(args)
    if a.command == "bench":  # after top-level options: `budgetkit --json bench ...`
        from budgetkit.bench import main as bench_main

        return int(bench_main(a.args))
    # budgetkit logs store failures as warnings; the CLI reports them as its one-line error, so
    # Python's last-resort handler must not print them too (configured handlers still get them).
    log = logging.getLogger("budgetkit")
    if _STORE_FAILURES not in log.handlers:
        log.addHandler(_STORE_FAILURES)
    _STORE_FAILURES.last = None
    try:
        code: int = asyncio.run(a.handler(a))
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


if __name__ == "__main__":
    sys.exit(main())
