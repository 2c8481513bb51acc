"""`budgetkit` command line: a thin layer over the public API.

Exit codes: 0 ok (a check that says continue or warn), 1 a check that says pause or stop,
2 usage or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel

from budgetkit.client import UNSET, BudgetKit
from budgetkit.errors import BudgetkitError, BudgetUnavailable
from budgetkit.models import json_schemas
from budgetkit.scope import Scope

EXIT_OK, EXIT_LIMIT, EXIT_USAGE = 0, 1, 2
Handler = Callable[[argparse.Namespace], Awaitable[int]]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL"), help="Redis URL (default: $REDIS_URL)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def _scope_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--org", required=True, help="organization id")
    for name in ("session", "root-session", "app-channel", "app", "agent", "user"):
        p.add_argument(f"--{name}", default=None)
    return p


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


def _emit(a: argparse.Namespace, value: Any) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(indent=None if a.json else 2)
    elif isinstance(value, list):
        items = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        text = json.dumps(items, indent=None if a.json else 2)
    else:
        text = json.dumps(value, indent=None if a.json else 2)
    print(text)


def _kit(a: argparse.Namespace) -> BudgetKit:
    if not a.redis_url:
        raise BudgetUnavailable("no Redis URL: pass --redis-url or set REDIS_URL")
    return BudgetKit.from_url(a.redis_url)


async def _check(a: argparse.Namespace) -> int:
    async with _kit(a) as kit:
        result = await kit.check(_scope(a))
    _emit(a, result)
    return EXIT_LIMIT if result.action in ("pause", "stop") else EXIT_OK


async def _check_tool(a: argparse.Namespace) -> int:
    async with _kit(a) as kit:
        response = await kit.check_tool(_scope(a))
    _emit(a, response)
    return EXIT_LIMIT if response.status in ("paused", "exhausted") else EXIT_OK


async def _resume(a: argparse.Namespace) -> int:
    async with _kit(a) as kit:
        _emit(a, await kit.resume(_scope(a), levels=tuple(a.levels.split(","))))
    return EXIT_OK


async def _budgets(a: argparse.Namespace) -> int:
    async with _kit(a) as kit:
        if a.action == "list":
            result: Any = await kit.list_budgets(
                a.org, a.subject_type, a.subject_id, a.include_disabled, a.limit, a.offset
            )
        elif a.action == "show":
            result = await kit.get_budget(a.org, a.id)
        elif a.action == "create":
            result = await kit.create_budget(
                a.org,
                a.subject_type,
                a.subject_id,
                a.currency,
                _num(a.limit),
                soft_limit=_num(a.soft_limit),
                period=_json(a.period),
                metadata=_json(a.metadata),
            )
        elif a.action == "update":
            result = await kit.update_budget(
                a.org,
                a.id,
                limit=UNSET if a.limit is None else _num(a.limit),
                soft_limit=UNSET if a.soft_limit is None else _num(a.soft_limit),
                status=UNSET if a.status is None else a.status,
                period=UNSET if a.period is None else _json(a.period),
            )
        elif a.action == "disable":
            result = await kit.disable_budget(a.org, a.id)
        elif a.action == "top-up":
            result = await kit.top_up(a.org, a.id, _num(a.amount), a.description, a.idempotency_key)
        else:
            result = await kit.ledger(a.org, a.id, a.limit, a.offset)
    _emit(a, result)
    return EXIT_OK


def _num(text: str | None) -> Any:
    """A decimal amount from the command line, kept exact (Decimal), or None."""
    from decimal import Decimal, InvalidOperation

    if text is None or text == "none":
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise BudgetkitError(f"not a number: {text!r}") from None


def _json(text: str | None) -> Any:
    if text is None or text == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BudgetkitError(f"not JSON: {text!r} ({error})") from None


async def _events_tail(a: argparse.Namespace) -> int:
    async with _kit(a) as kit:
        async for event in kit.events(a.org, after=a.after, follow=a.follow):
            print(event.model_dump_json())
    return EXIT_OK


async def _schema(a: argparse.Namespace) -> int:
    print(json.dumps(json_schemas(), indent=None if a.json else 2))
    return EXIT_OK


async def _demo(a: argparse.Namespace) -> int:
    from budgetkit.demo import run_demo

    if a.redis_url:
        async with BudgetKit.from_url(a.redis_url) as kit:
            ok = await run_demo(kit.redis)
    else:
        import fakeredis

        print("no --redis-url / REDIS_URL: running on an in-process fakeredis server")
        ok = await run_demo(fakeredis.FakeAsyncRedis())
    return EXIT_OK if ok else EXIT_LIMIT


def build_parser() -> argparse.ArgumentParser:
    common, scope = _common(), _scope_options()
    parser = argparse.ArgumentParser(prog="budgetkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, *parents: argparse.ArgumentParser, **kw: Any) -> Any:
        p = sub.add_parser(name, parents=[*parents, common], **kw)
        p.set_defaults(handler=handler)
        return p

    add("check", _check, scope, help="most restrictive action for a scope")
    add("check-tool", _check_tool, scope, help="the check_budget tool response for a scope")
    add("resume", _resume, scope, help="resume paused budgets").add_argument(
        "--levels", default="session", help="comma-separated levels (default: session)"
    )
    add("schema", _schema, help="JSON Schema of the models")
    add("demo", _demo, help="simulate a fleet of agent workers")
    sub.add_parser("bench", help="run the benchmarks (budgetkit bench --help)")
    events = add("events", _events_tail, help="tail an organization's events")
    events.add_argument("mode", choices=["tail"])
    events.add_argument("--org", required=True)
    events.add_argument("--after", default=None, help="stream id to start after")
    events.add_argument("--follow", action="store_true", help="wait for new events")
    budgets = add("budgets", _budgets, help="manage budgets")
    budgets.add_argument(
        "action", choices=["list", "show", "create", "update", "disable", "top-up", "ledger"]
    )
    budgets.add_argument("--org", required=True)
    budgets.add_argument("--id", help="budget id (show, update, disable, top-up, ledger)")
    budgets.add_argument("--subject-type")
    budgets.add_argument("--subject-id")
    budgets.add_argument("--currency", default="usd")
    budgets.add_argument("--limit", help="budget limit (create/update) or page size (list/ledger)")
    budgets.add_argument("--soft-limit")
    budgets.add_argument("--status")
    budgets.add_argument("--period", help='JSON, e.g. {"type":"rolling","window":"5h"}')
    budgets.add_argument("--metadata", help="JSON")
    budgets.add_argument("--amount")
    budgets.add_argument("--description")
    budgets.add_argument("--idempotency-key")
    budgets.add_argument("--include-disabled", action="store_true")
    budgets.add_argument("--offset", type=int, default=0)
    return parser


def _fix_page_limit(a: argparse.Namespace) -> None:
    if getattr(a, "action", None) in ("list", "ledger"):
        a.limit = int(a.limit) if a.limit else (200 if a.action == "list" else 50)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:  # the harness parses its own options (--quick, --json PATH, ...)
        from budgetkit.bench import main as bench_main

        return int(bench_main(args[1:]))
    parser = build_parser()
    a = parser.parse_args(args)
    try:
        _fix_page_limit(a)
        code: int = asyncio.run(a.handler(a))
    except BudgetUnavailable as error:
        print(f"budgetkit: cannot reach Redis: {error}. Check --redis-url.", file=sys.stderr)
        return EXIT_USAGE
    except (BudgetkitError, ValueError) as error:
        print(f"budgetkit: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
