"""The argparse tree of `budgetkit`: commands, options, option types, help and exit codes.

Pure argparse: each command's parser records its ``path`` (``"budgets create"``), and
``commands.HANDLERS`` maps a path to the function that runs it. ``--redis-url`` and ``--json``
may come before the command or after its own options.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from budgetkit import UNSET, BudgetPeriod, InvalidPeriod, __version__, json_schemas
from budgetkit._core.convert import budget_period

__all__ = ["EXIT_LIMIT", "EXIT_OK", "EXIT_USAGE", "build_parser"]

EXIT_OK, EXIT_LIMIT, EXIT_USAGE = 0, 1, 2
EXIT_USAGE_HELP = "usage, input or connection error (one line on stderr)"
EXIT_CODES_HELP = f"""exit codes:
  0  ok; for check: continue or warn
  1  check: pause or stop; check-tool: paused or exhausted; reserve: denied;
     reconcile: drift; restore: mismatches or budgets without a snapshot;
     demo: a budget did not reconcile
  2  {EXIT_USAGE_HELP}"""

SUBJECT_TYPES = ("session", "app_channel", "app", "agent", "user", "org", "organization")
SETTABLE_STATUSES = ("active", "paused", "disabled")
SHELLS = ("bash", "zsh", "fish")
REDIS_URL_HELP = "redis://, rediss:// or unix:// URL (default: $REDIS_URL)"
JSON_HELP = "print one JSON document (the models' wire JSON) instead of tables"
#: Where `budgetkit webhooks run` reads the signing secret when --secret is not given.
WEBHOOK_SECRET_ENV = "BUDGETKIT_WEBHOOK_SECRET"
SINK_HELP = "postgresql://USER@HOST:PORT/DB or jsonl:DIRECTORY (the exported books)"
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


# -- shared option groups ---------------------------------------------------------------------


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


def _scope_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("scope")
    group.add_argument("--org", required=True, metavar="ORG", help="organization id")
    for name, text in SCOPE_OPTIONS:
        group.add_argument(f"--{name}", default=None, metavar="ID", help=text)
    return p


def _org(p: argparse.ArgumentParser) -> None:
    p.add_argument("--org", required=True, metavar="ORG", help="organization id")


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
    """The ledger options debit and commit share (read by commands.usage_values)."""
    p.add_argument("--meter-source", default="manual", help="ledger meter source (manual)")
    p.add_argument("--ref-type", help="ledger reference type, e.g. llm_generation")
    p.add_argument("--ref-id", help="ledger reference id")
    p.add_argument("--description", help="ledger description")
    p.add_argument("--idempotency-key", metavar="KEY", help="apply at most once per key")


def _hold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hold", required=True, metavar="HOLD_ID", help="the id printed by reserve")


def _budget_fields(p: argparse.ArgumentParser, *, update: bool) -> None:
    """The budget fields of create (required/defaults) and update (UNSET = unchanged)."""
    keep = UNSET if update else None
    clear = " (none clears)" if update else ""
    p.add_argument(
        "--limit", type=_decimal, required=not update, default=keep, help="limit in currency units"
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
    p.add_argument(
        "--rollover-max",
        type=_decimal_or_none,
        default=keep,
        metavar="VALUE",
        help=f"periodic budgets: carry unused balance, up to this, into the next period{clear}",
    )


# -- the command tree -------------------------------------------------------------------------


def _exit_codes(zero: str, one: str) -> str:
    return f"exit codes: 0 {zero}; 1 {one}; 2 {EXIT_USAGE_HELP}."


class _Tree:
    """Adds commands under a subparsers action, each with --redis-url/--json and its path."""

    def __init__(self, common: argparse.ArgumentParser, scope: argparse.ArgumentParser) -> None:
        self.common = common
        self.scope = scope

    def add(
        self,
        into: Any,
        path: str,
        *parents: argparse.ArgumentParser,
        help: str,
        exits: tuple[str, str] | None = None,
    ) -> argparse.ArgumentParser:
        """The command at ``path``; ``exits``: what exit codes 0 and 1 mean, for those that
        exit 1."""
        epilog = None if exits is None else _exit_codes(*exits)
        p: argparse.ArgumentParser = into.add_parser(
            path.split()[-1],
            parents=[*parents, self.common],
            help=help,
            description=help,
            epilog=epilog,
        )
        p.set_defaults(path=path)
        return p


def _add_budgets(tree: _Tree, sub: Any) -> None:
    budgets = sub.add_parser("budgets", help="create, list, show, update, disable, top up budgets")
    actions = budgets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = tree.add(actions, "budgets create", help="create a budget (balance = limit)")
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
    p = tree.add(actions, "budgets list", help="list an organization's budgets, newest first")
    _org(p)
    p.add_argument("--subject-type", choices=SUBJECT_TYPES, help="only this subject type")
    p.add_argument("--subject-id", help="only this subject")
    p.add_argument("--include-disabled", action="store_true", help="list disabled budgets too")
    _page(p, 200)
    _budget_id(tree.add(actions, "budgets show", help="show one budget"))
    p = tree.add(actions, "budgets update", help="change the given fields (others stay)")
    _budget_id(p)
    p.add_argument("--status", default=UNSET, choices=SETTABLE_STATUSES, help="set the status")
    _budget_fields(p, update=True)
    _budget_id(tree.add(actions, "budgets disable", help="disable a budget"))
    p = tree.add(actions, "budgets top-up", help="credit an amount to a budget's balance")
    _budget_id(p)
    p.add_argument("--amount", type=_decimal, required=True, help="amount in the budget currency")
    p.add_argument("--description", help="ledger description")
    p.add_argument("--idempotency-key", metavar="KEY", help="apply at most once per key")
    p = tree.add(actions, "budgets ledger", help="a budget's ledger entries, newest first")
    _budget_id(p)
    _page(p, 50)


def _add_scope_commands(tree: _Tree, sub: Any) -> None:
    """The commands on a scope: check, check-tool, resume, debit, reserve, commit, release."""
    scope = tree.scope
    tree.add(
        sub,
        "check",
        scope,
        help="the most restrictive action for a scope",
        exits=("continue or warn", "pause or stop"),
    )
    tree.add(
        sub,
        "check-tool",
        scope,
        help="the check_budget tool response for a scope",
        exits=("active, warning or no_budgets", "paused or exhausted"),
    )
    tree.add(sub, "resume", scope, help="resume the paused budgets of a scope").add_argument(
        "--levels", default="session", help="comma-separated levels (default: session)"
    )
    p = tree.add(sub, "debit", scope, help="charge every budget of a scope, atomically")
    _amount_option(p, "amount to charge")
    _usage_options(p)
    p = tree.add(
        sub,
        "reserve",
        scope,
        help="hold an amount on a scope",
        exits=("granted", "denied (the printed check says why)"),
    )
    _amount_option(p, "amount to hold")
    p.add_argument("--ttl", type=float, default=60.0, metavar="SECONDS", help="hold TTL (60)")
    p.add_argument("--idempotency-key", metavar="KEY", help="apply at most once per key")
    p = tree.add(sub, "commit", scope, help="settle a hold with the actual amount")
    _hold_option(p)
    _amount_option(p, "actual amount")
    _usage_options(p)
    _hold_option(tree.add(sub, "release", scope, help="drop a hold without charging"))


def _add_events(tree: _Tree, sub: Any) -> None:
    events = sub.add_parser("events", help="read an organization's events")
    modes = events.add_subparsers(dest="mode", required=True, metavar="MODE")
    p = tree.add(modes, "events tail", help="print events (--follow: keep waiting for new ones)")
    _org(p)
    p.add_argument("--after", metavar="STREAM_ID", help="start after this event id")
    p.add_argument("--last", type=_positive_int, metavar="N", help="only the last N events")
    p.add_argument("--follow", "-f", action="store_true", help="wait for new events (Ctrl-C)")


def _add_books(tree: _Tree, sub: Any) -> None:
    """export, reconcile and restore: the durable books (budgetkit.export)."""
    p = tree.add(sub, "export", help="drain ledgers and events into durable books")
    p.add_argument("--sink", required=True, help=SINK_HELP)
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=0.5, metavar="S", help="between passes")
    p.add_argument("--stop-after", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--batch", type=_positive_int, default=500, help="entries per read (500)")
    p.add_argument("--no-trim", action="store_true", help="keep exported entries in Redis")
    reconcile = tree.add(
        sub,
        "reconcile",
        help="compare Redis balances with the books",
        exits=("the books match Redis", "drift (the report lists it)"),
    )
    restore = tree.add(
        sub,
        "restore",
        help="rebuild budgets in an empty Redis from the books",
        exits=("restored", "mismatches or budgets without a snapshot (the report lists them)"),
    )
    for p in (reconcile, restore):
        p.add_argument("--sink", required=True, help=SINK_HELP)
        p.add_argument("--org", dest="org_filter", action="append", help="only this org (repeat)")
    restore.add_argument("--ledger", action="store_true", help="also rewrite the ledgers")
    restore.add_argument("--force", action="store_true", help="even if Redis is not empty")


def _add_tools(tree: _Tree, sub: Any) -> None:
    """migrate, schema, demo, bench and completion."""
    p = tree.add(
        sub,
        "migrate",
        help="upgrade the store to this version's stored format and load its function library",
    )
    p.add_argument(
        "--prune-libraries",
        action="store_true",
        help="also delete other budgetkit versions' function libraries",
    )
    p = tree.add(sub, "schema", help="JSON Schema of the models")
    p.add_argument("--model", choices=sorted(json_schemas()), help="only this model's schema")
    tree.add(
        sub,
        "demo",
        help="simulate a fleet of agent workers (fakeredis without a URL)",
        exits=("every budget reconciled", "a budget did not reconcile"),
    )
    bench = sub.add_parser(
        "bench", help="run the benchmarks (see `budgetkit bench --help`)", add_help=False
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    bench.set_defaults(path="bench")
    p = tree.add(sub, "completion", help="print a shell completion script")
    p.add_argument("shell", choices=SHELLS, help="bash, zsh or fish")


def _add_webhooks(tree: _Tree, sub: Any) -> None:
    webhooks = sub.add_parser("webhooks", help="send budget events to an HTTP endpoint, signed")
    modes = webhooks.add_subparsers(dest="mode", required=True, metavar="MODE")
    p = tree.add(
        modes,
        "webhooks run",
        help="deliver the organizations' events (Standard Webhooks) until interrupted",
    )
    p.add_argument("--org", action="append", required=True, help="organization id (repeatable)")
    p.add_argument("--url", required=True, help="the endpoint events are POSTed to")
    p.add_argument(
        "--secret",
        default=None,
        metavar="WHSEC",
        help=f"the signing secret whsec_... (default: ${WEBHOOK_SECRET_ENV}, kept out of ps)",
    )
    p.add_argument(
        "--event-type", action="append", default=None, help="send only these (repeatable)"
    )
    p = tree.add(modes, "webhooks dead-letters", help="events an endpoint never accepted")
    _org(p)
    p.add_argument("--limit", type=_positive_int, default=50, help="newest first (default 50)")


def build_parser() -> argparse.ArgumentParser:
    """The whole `budgetkit` parser; a parsed namespace carries its command's ``path``."""
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
    tree = _Tree(_common(), _scope_options())
    _add_budgets(tree, sub)
    _add_scope_commands(tree, sub)
    _add_events(tree, sub)
    _add_books(tree, sub)
    _add_webhooks(tree, sub)
    _add_tools(tree, sub)
    return parser
