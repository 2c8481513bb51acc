"""The one place that builds Redis key names.

Every key of one organization carries the organization id as its hash tag (``bk:{org_1}:…``), so
every script that touches one scope runs on one Redis Cluster slot. Identifiers are validated by
``budgetkit.ids`` before they get here: they never contain ``{``/``}`` or whitespace, so a key
cannot break out of its tag. The subject type is one of a fixed set without ``:``, and the subject
id is the last component, so two different (type, id) pairs never share a key.

Layout (``P`` = prefix, default ``bk``):

    P:{org}:b:<budget_id>          hash    the budget (fields in lua/_lib.lua)
    P:{org}:s:<subject_type>:<id>  set     ids of the budgets of one subject
    P:{org}:all                    zset    ids of all the org's budgets, score = created ms
    P:{org}:l:<budget_id>          stream  the budget's ledger
    P:{org}:events                 stream  the org's budget events
    P:{org}:idem:<operation>:<key> list    idempotency record: fingerprint, expiry ms, reply
    P:{org}:rq:<request id>        string  one call's receipt, 'expires|now|tags|budgets|entries|
                                           events' (lua/_lib.lua; budgetkit.redelivery)
    P:{org}:h:<hold_id>            hash    a reservation: exp (ms), sess, b:<budget_id> amounts
    P:{org}:hz:<budget_id>         zset    a budget's outstanding holds, score = expiry ms
    P:{org}:ha:<budget_id>         hash    a budget's outstanding holds: hold id -> amount
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetkit.errors import InvalidIdentifier


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key names under one prefix."""

    prefix: str = "bk"

    def __post_init__(self) -> None:
        bad = any(c in "{}" or c.isspace() for c in self.prefix)
        if not self.prefix or bad or len(self.prefix) > 64:
            raise InvalidIdentifier("prefix must be 1-64 characters without braces or whitespace")

    def org(self, organization_id: str) -> str:
        """The key prefix of one organization (``P:{org}:``); scripts append to it."""
        return f"{self.prefix}:{{{organization_id}}}:"

    def budget(self, organization_id: str, budget_id: str) -> str:
        return f"{self.org(organization_id)}b:{budget_id}"

    def subject(self, organization_id: str, subject_type_wire: str, subject_id: str) -> str:
        return f"{self.org(organization_id)}s:{subject_type_wire}:{subject_id}"

    def org_index(self, organization_id: str) -> str:
        return f"{self.org(organization_id)}all"

    def ledger(self, organization_id: str, budget_id: str) -> str:
        return f"{self.org(organization_id)}l:{budget_id}"

    def events(self, organization_id: str) -> str:
        return f"{self.org(organization_id)}events"

    def hold(self, organization_id: str, hold_id: str) -> str:
        return f"{self.org(organization_id)}h:{hold_id}"

    def idempotency(self, organization_id: str, operation: str, key: str) -> str:
        return f"{self.org(organization_id)}idem:{operation}:{key}"

    def request(self, organization_id: str, request_id: str) -> str:
        return f"{self.org(organization_id)}rq:{request_id}"
