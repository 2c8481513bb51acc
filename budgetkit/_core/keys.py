"""The one place that builds Redis key names in Python.

Every key of one organization carries the organization id as its hash tag (``bk:{org_1}:…``), so
every script that touches one scope runs on one Redis Cluster slot. Identifiers are validated by
``budgetkit._core.ids`` before they get here: they never contain ``{``/``}`` or whitespace, so a key
cannot break out of its tag. The subject type is one of a fixed set without ``:``, and the subject
id is the last component, so two different (type, id) pairs never share a key.

Every key a call touches is built here and passed to its script in KEYS, except the keys a
script finds by a budget id it reads from an index (a budget's hash, ledger and hold index and
amounts): those it builds from the organization's prefix and the suffixes of KEY_SUFFIXES,
named once in lua/_lib.lua too (tests/test_shared_constants.py keeps the tables equal).

Layout (``P`` = prefix, default ``bk``):

    P:{org}:b:<budget_id>          hash    the budget (fields in lua/_lib.lua)
    P:{org}:s:<subject_type>:<id>  set     ids of the budgets of one subject
    P:{org}:all                    zset    ids of all the org's budgets, score = created ms
    P:{org}:l:<budget_id>          stream  the budget's ledger
    P:{org}:events                 stream  the org's budget events
    P:{org}:idem:<operation>:<key> list    idempotency record: fingerprint, expiry ms, reply
    P:{org}:rq:<request id>        string  one call's receipt, 'expires|now|tags|budgets|entries|
                                           events' (lua/_lib.lua; budgetkit._core.redelivery)
    P:{org}:h:<hold_id>            hash    a reservation: exp (ms), sess, b:<budget_id> amounts
    P:{org}:hz:<budget_id>         zset    a budget's outstanding holds, score = expiry ms
    P:{org}:ha:<budget_id>         hash    a budget's outstanding holds: hold id -> amount
    P:{org}:webhooks:dead          stream  events a webhook endpoint never accepted
    P:format                       string  the stored-format version (budgetkit._core.storeformat)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from budgetkit._core.errors import InvalidIdentifier
from budgetkit._core.scope import Scope

#: Every key suffix after the organization's prefix ``P:{org}:``. The scripts build the keys they
#: find by a budget id themselves (lua/_lib.lua: BUDGET_KEY, LEDGER_KEY, HOLD_INDEX_KEY,
#: HOLD_AMOUNTS_KEY); tests/test_shared_constants.py keeps the two tables equal.
KEY_SUFFIXES: Final[Mapping[str, str]] = {
    "budget": "b:",
    "subject": "s:",
    "org_index": "all",
    "ledger": "l:",
    "events": "events",
    "idempotency": "idem:",
    "request": "rq:",
    "hold": "h:",
    "hold_index": "hz:",
    "hold_amounts": "ha:",
    "webhook_dead_letters": "webhooks:dead",
}
_S = KEY_SUFFIXES
#: The one key outside every organization: ``P:format``.
FORMAT_SUFFIX: Final = "format"

#: How many scopes' keys are kept (per process, least recently used dropped first).
SCOPES_CACHED_MAX = 4096


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    """The keys of one scope under one prefix, computed once (Keyspace.scope).

    ``subjects``: the subject keys of the scope's levels, most specific first; ``levels``: those
    levels as (subject type wire name, subject id), in the same order; ``org``: the
    organization's key prefix; ``events``: its event stream.
    """

    org: str
    subjects: tuple[str, ...]
    levels: tuple[tuple[str, str], ...]
    events: str


@functools.lru_cache(maxsize=SCOPES_CACHED_MAX)
def _scope_keys(prefix: str, scope: Scope) -> ScopeKeys:
    keyspace = Keyspace(prefix)
    org = scope.organization_id
    levels = tuple(scope.levels())
    subjects = tuple(keyspace.subject(org, kind, sid) for kind, sid in levels)
    return ScopeKeys(keyspace.org(org), subjects, levels, keyspace.events(org))


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key names under one prefix."""

    prefix: str = "bk"

    def __post_init__(self) -> None:
        bad = any(c in "{}" or c.isspace() for c in self.prefix)
        if not self.prefix or bad or len(self.prefix) > 64:
            raise InvalidIdentifier("prefix must be 1-64 characters without braces or whitespace")

    def scope(self, scope: Scope) -> ScopeKeys:
        """The keys of a scope's levels and organization (cached: a scope is immutable, and the
        hot path asks for the same scopes again and again)."""
        return _scope_keys(self.prefix, scope)

    def org(self, organization_id: str) -> str:
        """The key prefix of one organization (``P:{org}:``); scripts append to it."""
        return f"{self.prefix}:{{{organization_id}}}:"

    def budget(self, organization_id: str, budget_id: str) -> str:
        return f"{self.org(organization_id)}{_S['budget']}{budget_id}"

    @staticmethod
    def budget_under(org_key: str, budget_id: str) -> str:
        """A budget's key from its organization's prefix (``org``'s result)."""
        return f"{org_key}{_S['budget']}{budget_id}"

    def subject(self, organization_id: str, subject_type_wire: str, subject_id: str) -> str:
        return f"{self.org(organization_id)}{_S['subject']}{subject_type_wire}:{subject_id}"

    def org_index(self, organization_id: str) -> str:
        return f"{self.org(organization_id)}{_S['org_index']}"

    def ledger(self, organization_id: str, budget_id: str) -> str:
        return f"{self.org(organization_id)}{_S['ledger']}{budget_id}"

    def events(self, organization_id: str) -> str:
        return f"{self.org(organization_id)}{_S['events']}"

    def store_format(self) -> str:
        """The stored-format version of everything under the prefix (``P:format``, in no
        organization's slot; budgetkit._core.storeformat)."""
        return f"{self.prefix}:{FORMAT_SUFFIX}"

    def hold(self, organization_id: str, hold_id: str) -> str:
        return f"{self.org(organization_id)}{_S['hold']}{hold_id}"

    def hold_index(self, organization_id: str, budget_id: str) -> str:
        return f"{self.org(organization_id)}{_S['hold_index']}{budget_id}"

    def hold_amounts(self, organization_id: str, budget_id: str) -> str:
        return f"{self.org(organization_id)}{_S['hold_amounts']}{budget_id}"

    def idempotency(self, organization_id: str, operation: str, key: str) -> str:
        return f"{self.org(organization_id)}{_S['idempotency']}{operation}:{key}"

    def webhook_dead_letters(self, organization_id: str) -> str:
        return f"{self.org(organization_id)}{_S['webhook_dead_letters']}"

    def request(self, organization_id: str, request_id: str) -> str:
        return f"{self.org(organization_id)}{_S['request']}{request_id}"
