"""The subject hierarchy of one session: session → app_channel → app → agent → user → org."""

from __future__ import annotations

from dataclasses import dataclass

from budgetkit._core.ids import validate_identifier

#: Subject levels from most specific to most general (wire names).
LEVELS = ("session", "app_channel", "app", "agent", "user", "org")


@dataclass(frozen=True, slots=True)
class Scope:
    """Who is spending: an organization and, optionally, its session, channel, app, agent, user.

    Child sessions of a delegation tree pass ``root_session_id``: they check and debit the root
    session's budgets, while ledger entries keep ``session_id`` for attribution. budgetkit never
    needs a session database: the caller supplies the whole scope.
    """

    organization_id: str
    session_id: str | None = None
    root_session_id: str | None = None
    app_channel_id: str | None = None
    app_id: str | None = None
    agent_id: str | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        validate_identifier(self.organization_id, field="organization_id")
        for name in (
            "session_id",
            "root_session_id",
            "app_channel_id",
            "app_id",
            "agent_id",
            "user_id",
        ):
            value = getattr(self, name)
            if value is not None:
                validate_identifier(value, field=name)

    @property
    def budget_session_id(self) -> str | None:
        """The session whose budgets apply: the root of the delegation tree when given."""
        return self.root_session_id or self.session_id

    def levels(self, only: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        """(subject type wire name, subject id) of each present level, most specific first."""
        ids = {
            "session": self.budget_session_id,
            "app_channel": self.app_channel_id,
            "app": self.app_id,
            "agent": self.agent_id,
            "user": self.user_id,
            "org": self.organization_id,
        }
        return [
            (level, subject_id)
            for level in LEVELS
            if (subject_id := ids[level]) is not None and (only is None or level in only)
        ]
