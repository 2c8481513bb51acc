"""What the CLI prints on stdout: one JSON document (``--json``), or rich tables.

``emit`` is the one way a command prints its result: the models' wire JSON on one line with
``--json``, else a table per result type (``render``). ``follow_events`` and ``with_spinner``
print as things happen.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from budgetkit import (
    Budget,
    BudgetCheckResult,
    BudgetEvent,
    BudgetPeriod,
    BudgetStatus,
    BudgetToolResponse,
    CalendarPeriod,
    DebitResult,
    DurationPeriod,
    LedgerEntry,
    Reservation,
)

T = TypeVar("T")

#: Width of the output when stdout is not a terminal and $COLUMNS is unset (ids stay whole).
PIPE_WIDTH = 160

STATUS_STYLE = {
    "active": "green",
    "warning": "yellow",
    "paused": "yellow",
    "exhausted": "bold red",
    "disabled": "dim",
    "no_budgets": "dim",
}
ACTION_STYLE = {"continue": "green", "warn": "yellow", "pause": "bold yellow", "stop": "bold red"}
EVENT_STYLE = {
    "budget.warning": "yellow",
    "budget.threshold": "yellow",
    "budget.paused": "bold yellow",
    "budget.exhausted": "bold red",
    "budget.resumed": "green",
}


@functools.cache
def console() -> Console:
    """The stdout console; wide when piped, so ids and messages are not cut."""
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, width=PIPE_WIDTH)
    return out


def to_json(value: Any) -> Any:
    """The wire JSON of a model, list of models, or plain value."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def print_json(value: Any) -> None:
    """One JSON document on one line of stdout (flushed: a follower reads it at once)."""
    print(json.dumps(to_json(value), separators=(",", ":")), flush=True)


def emit(value: Any, *, as_json: bool, title: str | None = None) -> None:
    """A command's result: one JSON document with ``as_json``, else tables."""
    if as_json:
        print_json(value)
    else:
        render(value, title=title)


def amount(value: float | None) -> str:
    """A currency amount as given (at most 6 decimals, no trailing zeros); '-' for None."""
    if value is None:
        return "-"
    text = f"{value:,.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def period_text(period: BudgetPeriod | None) -> str:
    if period is None:
        return "-"
    if isinstance(period, CalendarPeriod):
        return period.unit
    if isinstance(period, DurationPeriod):
        return f"{period.seconds}s"
    return period.window


def period_long(period: BudgetPeriod | None) -> str:
    if isinstance(period, CalendarPeriod):
        return f"calendar {period.unit} (UTC)"
    if isinstance(period, DurationPeriod):
        return f"every {period.seconds} s"
    return "-" if period is None else f"rolling {period.window}"


def styled(value: str, styles: dict[str, str]) -> Text:
    return Text(value, style=styles.get(value, ""))


def listing(title: str | Text | None) -> Table:
    """A table of rows: a rule under the header, no vertical borders (narrow terminals fit
    more, and ids copy cleanly)."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )


def short(table: Table, name: str, *, right: bool = False) -> None:
    """A column of short values, never wrapped (ids and free text give way first)."""
    table.add_column(name, no_wrap=True, justify="right" if right else "left")


def wide(table: Table, name: str, *, min_width: int | None = None) -> None:
    """A column of ids or free text: folded onto more lines when the terminal is narrow."""
    table.add_column(name, overflow="fold", min_width=min_width)


def ident(table: Table, name: str) -> None:
    """A column of ids users copy into other commands: never folded."""
    table.add_column(name, no_wrap=True)


def subject(budget: Budget) -> str:
    return f"{budget.subject_type.as_wire()}:{budget.subject_id}"


#: Under a listing with session budgets: where they apply (SPEC §6).
SESSION_POOLING_NOTE = (
    "A session budget is enforced for scopes whose root session is its subject (child sessions "
    "pool there); it is ignored in a scope that names another root session."
)


def enforced_for(budget: Budget) -> str:
    """The scopes whose checks and debits use this budget (SPEC §6), as CLI scope options.

    Why: a child session's own budget is never used while its scope names a root session; the
    detail view says so instead of letting such a budget sit there silently.
    """
    sid, kind = budget.subject_id, budget.subject_type.as_wire()
    if kind == "org":
        where = f"every scope of organization {sid}"
    elif kind == "session":
        where = (
            f"scopes whose root session is {sid} (--root-session {sid}, or --session {sid} "
            f"without --root-session): child sessions of {sid} pool here; ignored in a scope "
            "that names another root session"
        )
    else:
        where = f"scopes with --{kind.replace('_', '-')} {sid}"
    if budget.status is BudgetStatus.DISABLED:
        return f"none while disabled (when active: {where})"
    return where


# -- tables -----------------------------------------------------------------------------------


def budgets_table(budgets: Sequence[Budget], title: str | None = None) -> Table:
    table = listing(title)
    ident(table, "id")
    wide(table, "subject", min_width=10)
    short(table, "cur")
    short(table, "limit", right=True)
    short(table, "balance", right=True)
    short(table, "soft", right=True)
    short(table, "status")
    short(table, "period")
    for b in budgets:
        table.add_row(
            b.id,
            subject(b),
            b.currency,
            amount(b.limit),
            amount(b.balance),
            amount(b.soft_limit),
            styled(b.status.value, STATUS_STYLE),
            period_text(b.period),
        )
    if any(b.subject_type.as_wire() == "session" for b in budgets):
        table.caption = SESSION_POOLING_NOTE
        table.caption_justify = "left"
    return table


def budget_detail(b: Budget, title: str | None = None) -> Table:
    table = _pairs(title)
    rows: list[tuple[str, str | Text]] = [
        ("id", b.id),
        ("organization", b.organization_id),
        ("subject", subject(b)),
        ("enforced for", enforced_for(b)),
        ("currency", b.currency),
        ("limit", amount(b.limit)),
        ("balance", amount(b.balance)),
        ("spent", amount(b.limit - b.balance)),
        ("soft limit", amount(b.soft_limit)),
        ("status", styled(b.status.value, STATUS_STYLE)),
        ("period", period_long(b.period)),
        ("period started", when(b.period_started_at)),
        ("rollover max", amount(b.rollover_max)),
        ("metadata", "-" if b.metadata is None else json.dumps(b.metadata)),
        ("created", when(b.created_at)),
        ("updated", when(b.updated_at)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def ledger_table(entries: Sequence[LedgerEntry], title: str | None = None) -> Table:
    """A budget's ledger entries (+ debit, - credit)."""
    table = listing(title)
    short(table, "created")
    short(table, "amount", right=True)
    wide(table, "meter", min_width=6)
    wide(table, "ref", min_width=6)
    wide(table, "session", min_width=7)
    wide(table, "description", min_width=6)
    wide(table, "entry id")
    for e in entries:
        table.add_row(
            when(e.created_at),
            _signed(e.amount),
            e.meter_source,
            ":".join(part for part in (e.ref_type, e.ref_id) if part) or "-",
            e.session_id or "-",
            e.description or "-",
            e.id,
        )
    return table


def entries_table(entries: Sequence[LedgerEntry], title: str | None = None) -> Table:
    """The entries one call wrote, on several budgets (one per budget, plus period resets)."""
    table = listing(title)
    ident(table, "budget")
    short(table, "amount", right=True)
    wide(table, "meter", min_width=6)
    wide(table, "entry id")
    for e in entries:
        table.add_row(e.budget_id, _signed(e.amount), e.meter_source, e.id)
    return table


def _signed(value: float) -> Text:
    return Text(amount(value), style="red" if value > 0 else "green")


def events_table(events: Sequence[BudgetEvent], title: str | None = None) -> Table:
    table = listing(title)
    short(table, "created")
    short(table, "type")
    wide(table, "budget", min_width=19)
    short(table, "balance/limit", right=True)
    wide(table, "message", min_width=20)
    wide(table, "event id", min_width=8)
    for ev in events:
        d = ev.data
        table.add_row(
            when(ev.created_at),
            styled(ev.type, EVENT_STYLE),
            d.budget_id,
            f"{amount(d.balance)} / {amount(d.limit)} {d.currency}",
            d.message or "-",
            ev.id,
        )
    return table


def event_line(ev: BudgetEvent) -> Text:
    d = ev.data
    line = Text(f"{when(ev.created_at)}  ")
    line.append(f"{ev.type:<17}", style=EVENT_STYLE.get(ev.type, ""))
    line.append(f"  {d.budget_id}  {amount(d.balance)} / {amount(d.limit)} {d.currency}")
    if d.message:
        line.append(f"  {d.message}")
    line.append(f"  [{ev.id}]", style="dim")
    return line


def check_table(result: BudgetCheckResult, title: str | None = "check") -> Table:
    table = _pairs(title)
    table.add_row("action", styled(result.action, ACTION_STYLE))
    if result.message:
        table.add_row("message", result.message)
    if result.budget_id:
        table.add_row("budget", result.budget_id)
    if result.balance is not None:
        table.add_row("balance", f"{amount(result.balance)} {result.currency or ''}".strip())
    if result.error_code:
        table.add_row("error code", result.error_code)
    fields = result.error_fields
    if fields is not None:
        if fields.limit is not None:
            table.add_row("limit", amount(fields.limit))
        if fields.spent is not None:
            table.add_row("spent", amount(fields.spent))
        if fields.soft_limit is not None:
            table.add_row("soft limit", amount(fields.soft_limit))
    if result.fail_open:
        table.add_row("fail open", "yes: the store was unreachable")
    return table


def tool_table(response: BudgetToolResponse) -> Table:
    title = Text.assemble("check_budget: ", styled(response.status, STATUS_STYLE))
    table = listing(title)
    if response.hint:
        table.caption = response.hint
        table.caption_justify = "left"
    short(table, "currency")
    short(table, "limit", right=True)
    short(table, "balance", right=True)
    short(table, "soft", right=True)
    short(table, "remaining", right=True)
    short(table, "status")
    for s in response.budgets:
        table.add_row(
            s.currency,
            amount(s.limit),
            amount(s.balance),
            amount(s.soft_limit),
            f"{s.percent_remaining:.1f}%",
            styled(s.status, STATUS_STYLE),
        )
    return table


def reservation_table(hold: Reservation) -> Table:
    table = _pairs("reservation")
    table.add_row("granted", Text("yes", "green") if hold.granted else Text("no", "bold red"))
    table.add_row("hold id", hold.id or "-")
    held = ", ".join(f"{amount(value)} {c}" for c, value in hold.amounts.items())
    table.add_row("amounts", held or "-")
    table.add_row("expires", when(hold.expires_at))
    if hold.replayed:
        table.add_row("replayed", "yes (idempotency key matched)")
    return table


def _pairs(title: str | None) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    return table


# -- dispatch ---------------------------------------------------------------------------------


def render(value: object, *, title: str | None = None) -> None:
    """Prints a command's result as tables."""
    out = console()
    if isinstance(value, Budget):
        out.print(budget_detail(value, title))
    elif isinstance(value, BudgetCheckResult):
        out.print(check_table(value))
    elif isinstance(value, BudgetToolResponse):
        out.print(tool_table(value))
    elif isinstance(value, DebitResult):
        if value.replayed:
            out.print("replayed: the idempotency key matched; nothing new was written")
        if value.entries:
            out.print(entries_table(value.entries, "ledger entries written"))
        if value.events:
            out.print(events_table(value.events, "events"))
        out.print(check_table(value.check, "check after the debit"))
    elif isinstance(value, Reservation):
        out.print(reservation_table(value))
        if not value.granted or value.check.action != "continue":
            out.print(check_table(value.check, "why" if not value.granted else "check"))
    elif isinstance(value, list) and not value:
        out.print(f"{title or 'result'}: none", style="dim")
    elif isinstance(value, list) and all(isinstance(v, Budget) for v in value):
        out.print(budgets_table(value, title))
    elif isinstance(value, list) and all(isinstance(v, LedgerEntry) for v in value):
        out.print(ledger_table(value, title))
    elif isinstance(value, list) and all(isinstance(v, BudgetEvent) for v in value):
        out.print(events_table(value, title))
    else:
        out.print_json(json.dumps(to_json(value), default=str))


async def follow_events(
    org: str, backlog: Sequence[BudgetEvent], stream: AsyncIterator[BudgetEvent]
) -> None:
    """Prints events as they arrive (a spinner on a terminal) until interrupted."""
    out = console()
    for ev in backlog:
        out.print(event_line(ev), soft_wrap=True)
    if not out.is_terminal:
        async for ev in stream:
            out.print(event_line(ev), soft_wrap=True)
            out.file.flush()
        return
    with out.status(f"following events of {org} (Ctrl-C to stop)"):
        async for ev in stream:
            out.print(event_line(ev), soft_wrap=True)


async def with_spinner(label: str, run: Callable[[Callable[[str], None]], Awaitable[T]]) -> T:
    """Runs ``run(say)`` under a spinner; ``say`` prints a line above it."""
    out = console()

    def say(line: str) -> None:
        out.print(line, markup=False, highlight=False)

    with out.status(label):
        return await run(say)
