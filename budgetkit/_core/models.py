"""The seed's domain types (``seed/budget.rs``) as pydantic v2 models, wire-compatible with serde.

JSON from these models is what the Rust serde types produce: snake_case enum strings, optional
fields *omitted* when None (``skip_serializing_if``), fields in the Rust structs' order, and
timestamps in chrono's RFC 3339 form (``2024-01-02T03:04:05Z``, ``.123Z``, ``.123456Z``).
``model_dump(mode="json")`` and ``model_dump_json()`` give that form without extra arguments.

Deviations (SPEC §1): an unknown status or subject type is rejected with the accepted values
instead of being mapped to ``active`` / ``session``; an invalid rolling window or calendar unit
is rejected instead of never resetting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, TypeVar, get_args

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticUndefined

from budgetkit._core.errors import InvalidInput, InvalidPeriod, InvalidStatus, short_repr
from budgetkit._core.ids import (
    normalize_currency,
    parse_budget_id,
    parse_ledger_id,
    validate_identifier,
)
from budgetkit._core.periods import CALENDAR_UNITS, parse_rolling_window

__all__ = [
    "ACTION_SEVERITY",
    "PERIOD_SECONDS_MAX",
    "ActionKind",
    "Budget",
    "BudgetAction",
    "BudgetCheckResult",
    "BudgetEvent",
    "BudgetEventData",
    "BudgetEventType",
    "BudgetPeriod",
    "BudgetStatus",
    "BudgetSubjectType",
    "BudgetSummary",
    "BudgetToolResponse",
    "CalendarPeriod",
    "CalendarUnit",
    "DurationPeriod",
    "ErrorFields",
    "LedgerEntry",
    "RollingPeriod",
    "SummaryStatus",
    "ToolStatus",
    "format_timestamp",
    "json_schemas",
    "parse_period",
    "parse_timestamp",
    "trusted",
]

#: Longest period of a duration or rolling budget, in seconds (2**53, exact in a Lua double).
PERIOD_SECONDS_MAX = 2**53


def _show(value: object) -> str:
    """A short repr of a caller's value for an error message (see errors.short_repr)."""
    return short_repr(value)


# ============================================================================
# Timestamps: timezone-aware UTC datetimes, chrono's RFC 3339 form on the wire
# ============================================================================

_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)

#: Digits of a fraction of a second Python keeps (microseconds); chrono may send nanoseconds.
_FRACTION_DIGITS_MAX = 6


def _rfc3339_offset(sign: str, hours: str, minutes: str) -> timezone:
    """Return the fixed offset ``±hh:mm`` of an RFC 3339 timestamp."""
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    return timezone(-delta if sign == "-" else delta)


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or ``±hh:mm`` offset) into an aware UTC datetime.

    Why: the wire carries chrono's RFC 3339 strings; any offset is accepted and converted to UTC.
    Fractions beyond microseconds (chrono's nanoseconds) are truncated. Raises ValueError.
    """
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid RFC 3339 timestamp {_show(text)}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micros = int((fraction or "")[:_FRACTION_DIGITS_MAX].ljust(_FRACTION_DIGITS_MAX, "0"))
    try:
        tz = UTC if zulu else _rfc3339_offset(sign, off_h, off_m)
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tz
        )
    except ValueError as err:
        raise ValueError(f"invalid RFC 3339 timestamp {_show(text)}: {err}") from None
    return parsed.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime as chrono's RFC 3339 ``Z`` form (AutoSi fraction).

    Why: wire compatibility with serde's ``DateTime<Utc>``: no fraction when whole seconds,
    3 digits when whole milliseconds, else 6 digits (Python has no nanoseconds).
    """
    utc = value.astimezone(UTC)
    text = f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
    text += f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    if utc.microsecond == 0:
        return text + "Z"
    if utc.microsecond % 1000 == 0:
        return text + f".{utc.microsecond // 1000:03d}Z"
    return text + f".{utc.microsecond:06d}Z"


def _to_utc(value: object) -> datetime:
    """Validate a timestamp: an aware datetime or an RFC 3339 string, returned in UTC.

    Why: a naive datetime has no defined instant, so it is rejected rather than guessed.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware (UTC)")
        return value.astimezone(UTC)
    if isinstance(value, str):
        return parse_timestamp(value)
    raise ValueError(
        f"expected an aware datetime or an RFC 3339 string, got {type(value).__name__}"
    )


Timestamp: TypeAlias = Annotated[
    datetime,
    BeforeValidator(_to_utc),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]

# ============================================================================
# Field types
# ============================================================================

#: An amount in currency units: a finite float (JSON integers accepted, strings and bools not).
Amount: TypeAlias = Annotated[float, Strict(), AllowInfNan(False)]

Text: TypeAlias = Annotated[str, Strict()]


def _identifier(value: str, info: ValidationInfo) -> str:
    """Validate a caller-supplied opaque identifier field (see ``ids.validate_identifier``)."""
    return validate_identifier(value, field=info.field_name or "identifier")


Identifier: TypeAlias = Annotated[str, Strict(), AfterValidator(_identifier)]
BudgetId: TypeAlias = Annotated[str, Strict(), AfterValidator(parse_budget_id)]
LedgerId: TypeAlias = Annotated[str, Strict(), AfterValidator(parse_ledger_id)]
Currency: TypeAlias = Annotated[str, Strict(), AfterValidator(normalize_currency)]

# ============================================================================
# Enums
# ============================================================================


#: Every string ``BudgetSubjectType.parse`` accepts, in the seed's order.
_SUBJECT_TYPE_NAMES = ("session", "agent", "user", "org", "organization", "app", "app_channel")


class BudgetStatus(StrEnum):
    """Budget status; JSON ``active | paused | exhausted | disabled``."""

    ACTIVE = "active"
    PAUSED = "paused"
    EXHAUSTED = "exhausted"
    DISABLED = "disabled"

    @classmethod
    def parse(cls, value: object) -> BudgetStatus:
        """Return the status named ``value``, or raise InvalidStatus listing the accepted values.

        Why (deviation): the seed maps an unknown string to ``active``, which hides typos and
        corrupt records; budgetkit rejects it.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        accepted = ", ".join(member.value for member in cls)
        raise InvalidStatus(f"unknown budget status {_show(value)}; accepted: {accepted}")


class BudgetSubjectType(StrEnum):
    """What a budget constrains: session, agent, user, organization, app or app channel.

    The value is the serde JSON form (``organization``); ``as_wire()`` is the storage form
    (``org``). ``parse`` accepts both.
    """

    SESSION = "session"
    AGENT = "agent"
    USER = "user"
    ORGANIZATION = "organization"
    APP = "app"
    APP_CHANNEL = "app_channel"

    def as_wire(self) -> str:
        """Return the storage/API string: ``org`` for ORGANIZATION, else the JSON value."""
        return "org" if self is BudgetSubjectType.ORGANIZATION else self.value

    @classmethod
    def parse(cls, value: object) -> BudgetSubjectType:
        """Return the subject type named ``value`` (JSON or wire form), or raise InvalidInput.

        ``org`` and ``organization`` both name ORGANIZATION; the error lists accepted values.

        Why (deviation): the seed maps an unknown string to ``session``; budgetkit rejects it.
        """
        if isinstance(value, cls):
            return value
        if value == "org":
            return cls.ORGANIZATION
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        accepted = ", ".join(_SUBJECT_TYPE_NAMES)
        raise InvalidInput(f"unknown subject type {_show(value)}; accepted: {accepted}")


def _parse_status(value: object) -> BudgetStatus:
    """Pydantic hook: validate a status field with ``BudgetStatus.parse``'s clear message."""
    return BudgetStatus.parse(value)


def _parse_subject_type(value: object) -> BudgetSubjectType:
    """Pydantic hook: validate a subject type field; accepts ``org`` as well."""
    return BudgetSubjectType.parse(value)


StatusField: TypeAlias = Annotated[BudgetStatus, BeforeValidator(_parse_status)]
SubjectTypeField: TypeAlias = Annotated[BudgetSubjectType, BeforeValidator(_parse_subject_type)]

# ============================================================================
# Base model: serde's skip_serializing_if = "Option::is_none"
# ============================================================================


class _WireModel(BaseModel):
    """Base of every wire model: frozen, no unknown fields, optional None fields omitted.

    Why: serde omits ``None`` options; doing it here (only for top-level optional fields) keeps
    ``null`` values inside free-form JSON such as ``metadata`` and needs no caller arguments.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Python-only boolean fields omitted from the output while False (not part of the seed).
    omitted_when_false: ClassVar[frozenset[str]] = frozenset()

    def _is_omitted(self, key: str, value: object) -> bool:
        """Whether ``key`` is left out of the serialized output, as serde would."""
        field = type(self).model_fields.get(key)
        if field is None:
            return False
        if value is None:
            return not field.is_required()
        return value is False and key in self.omitted_when_false

    def _without_absent(self, data: object) -> dict[str, Any]:
        """Drop top-level optional fields that are None (serde's form) from serialized data."""
        assert isinstance(data, dict), "a model serializes to a dict"
        return {key: value for key, value in data.items() if not self._is_omitted(key, value)}

    # A lambda, because pydantic takes a serializer's return annotation as the schema of its
    # output: annotated ``dict[str, Any]``, every serialization-mode JSON Schema would lose its
    # fields. Unannotated, pydantic keeps the model's own schema for both modes.
    _serialize = model_serializer(mode="wrap")(
        lambda self, handler: self._without_absent(handler(self))
    )


_Model = TypeVar("_Model", bound=BaseModel)

#: Per model class: (field name, default, default factory) in declaration order.
_FieldPlan: TypeAlias = tuple[tuple[str, Any, Any], ...]
_FIELD_PLANS: dict[type[BaseModel], _FieldPlan] = {}
#: Per model class: its field names in declaration order, and as a set.
_FIELD_NAMES: dict[type[BaseModel], tuple[tuple[str, ...], frozenset[str]]] = {}
_object_setattr = object.__setattr__


#: Defaults ``trusted`` shares between instances as they are (pydantic copies others).
_IMMUTABLE_DEFAULTS = (type(None), bool, int, float, str)


def _field_plan(cls: type[BaseModel]) -> _FieldPlan:
    """The fields of a model ``trusted`` can build: plain fields, immutable defaults, no
    post-init hook, no private attributes, no extra fields (TypeError otherwise)."""
    plan = _FIELD_PLANS.get(cls)
    if plan is None:
        hooks = cls.__pydantic_post_init__ or cls.__private_attributes__
        if hooks or cls.model_config.get("extra") == "allow" or cls.__pydantic_root_model__:
            raise TypeError(f"trusted() cannot build a {cls.__name__}")
        for name, field in cls.model_fields.items():
            default = field.default
            plain = default is PydanticUndefined or isinstance(default, _IMMUTABLE_DEFAULTS)
            if field.alias not in (None, name) or not plain:
                raise TypeError(f"trusted() cannot build {cls.__name__}.{name}")
        fields = cls.model_fields.items()
        plan = tuple((name, f.default, f.default_factory) for name, f in fields)
        names = tuple(name for name, _, _ in plan)
        _FIELD_NAMES[cls] = names, frozenset(names)
        _FIELD_PLANS[cls] = plan
    return plan


def _with_defaults(
    cls: type[BaseModel], plan: _FieldPlan, values: dict[str, Any]
) -> dict[str, Any]:
    """The fields' values in declaration order, defaults filled in (see ``trusted``)."""
    data: dict[str, Any] = {}
    given = 0
    for name, default, factory in plan:
        if name in values:
            data[name] = values[name]
            given += 1
        elif factory is not None:
            data[name] = factory()
        elif default is PydanticUndefined:
            raise TypeError(f"{cls.__name__}: missing required field {name!r}")
        else:
            data[name] = default
    if given != len(values):
        unknown = sorted(set(values) - set(data))
        raise TypeError(f"{cls.__name__}: unknown fields {unknown}")
    return data


def trusted(cls: type[_Model], /, **values: Any) -> _Model:
    """A model of values that are already exactly what validating them would produce.

    Why: the hot path builds its results from replies the scripts just produced and values
    budgetkit just computed (floats of integer micros, UTC datetimes, ids the scripts checked);
    validating them again costs more than the rest of the reply's decoding. The object is the
    one ``cls(**values)`` builds: the same ``__dict__`` (declaration order, defaults filled in),
    fields set, equality, ``model_dump`` and JSON (tests/test_lean_client.py compares them).
    Never for a caller's input. Raises TypeError for an unknown or a missing required field.
    """
    plan = _FIELD_PLANS.get(cls) or _field_plan(cls)
    names, every = _FIELD_NAMES[cls]
    if values.keys() == every:  # every field given: the values in the fields' order
        data = {name: values[name] for name in names}
    else:
        data = _with_defaults(cls, plan, values)
    model = cls.__new__(cls)
    _object_setattr(model, "__dict__", data)
    _object_setattr(model, "__pydantic_fields_set__", set(values))
    _object_setattr(model, "__pydantic_extra__", None)
    _object_setattr(model, "__pydantic_private__", None)
    return model


# ============================================================================
# Periods
# ============================================================================

CalendarUnit: TypeAlias = Literal["hour", "day", "week", "month", "year"]
assert get_args(CalendarUnit) == CALENDAR_UNITS, "CalendarUnit must list periods.CALENDAR_UNITS"


class DurationPeriod(_WireModel):
    """A fixed-length period of ``seconds`` from ``period_started_at``; ``{"type":"duration",...}``.

    ``seconds``: 1..2**53.
    """

    type: Literal["duration"] = "duration"
    seconds: Annotated[int, Strict(), Field(gt=0, le=PERIOD_SECONDS_MAX)]

    def duration_seconds(self) -> int | None:
        """Return the period length in seconds."""
        return self.seconds


class RollingPeriod(_WireModel):
    """A period given as shorthand (``"5h"``, ``"30d"``); ``{"type":"rolling","window":"5h"}``.

    The window is kept exactly as given; it must parse to 1..2**53 seconds (deviation: the seed
    accepts an unparsable window and never resets).
    """

    type: Literal["rolling"] = "rolling"
    window: Text

    @field_validator("window")
    @classmethod
    def _check_window(cls, window: str) -> str:
        """Reject a window that does not parse, or parses to 0 or more than 2**53 seconds."""
        seconds = parse_rolling_window(window)
        if seconds is None:
            raise InvalidPeriod(
                f"invalid rolling window {_show(window)}: expected a whole number and an "
                "optional unit s, m, h, d or w (e.g. '5h', '30d', '90')"
            )
        if not 0 < seconds <= PERIOD_SECONDS_MAX:
            raise InvalidPeriod(
                f"rolling window {_show(window)} is {seconds} seconds; "
                f"expected 1..{PERIOD_SECONDS_MAX}"
            )
        return window

    def duration_seconds(self) -> int | None:
        """Return the parsed window in seconds (never None once validated)."""
        return parse_rolling_window(self.window)


class CalendarPeriod(_WireModel):
    """A period aligned to a UTC calendar unit; ``{"type":"calendar","unit":"month"}``."""

    type: Literal["calendar"] = "calendar"
    unit: CalendarUnit

    def duration_seconds(self) -> int | None:
        """Return None: calendar periods have no fixed length (months and years vary)."""
        return None


BudgetPeriod: TypeAlias = Annotated[
    DurationPeriod | RollingPeriod | CalendarPeriod, Field(discriminator="type")
]

_PERIOD_ADAPTER: TypeAdapter[DurationPeriod | RollingPeriod | CalendarPeriod] = TypeAdapter(
    BudgetPeriod
)


def _describe(err: ValidationError) -> str:
    """Return a one-line summary of a pydantic ValidationError (``loc: message; ...``)."""
    parts = []
    for item in err.errors(include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        location = ".".join(str(part) for part in item["loc"])
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def parse_period(value: object) -> BudgetPeriod:
    """Return a validated BudgetPeriod from a period model or its JSON-shaped dict.

    Why: the API accepts ``{"type":"rolling","window":"5h"}`` as well as ``RollingPeriod(...)``;
    an invalid period is rejected when the budget is created or updated. Raises InvalidPeriod.
    """
    if isinstance(value, DurationPeriod | RollingPeriod | CalendarPeriod):
        return value
    if not isinstance(value, Mapping):
        raise InvalidPeriod(
            f"period must be a BudgetPeriod or a dict like {{'type': 'rolling', 'window': '5h'}}, "
            f"got {type(value).__name__}"
        )
    try:
        return _PERIOD_ADAPTER.validate_python(dict(value))
    except ValidationError as err:
        raise InvalidPeriod(f"invalid period {_show(dict(value))}: {_describe(err)}") from err


# ============================================================================
# Budget and ledger
# ============================================================================


class Budget(_WireModel):
    """A spending cap for a subject in a currency (the seed's ``Budget`` API DTO).

    Amounts are floats in currency units (exact to 1e-6: they come from integer micros).
    ``rollover_max`` (SPEC §11; not in the seed, omitted from JSON when None): at each period
    reset the unused balance, up to this, is carried into the next period.
    """

    id: BudgetId
    organization_id: Identifier
    subject_type: SubjectTypeField
    subject_id: Identifier
    currency: Currency
    limit: Amount
    soft_limit: Amount | None = None
    balance: Amount
    period: BudgetPeriod | None = None
    period_started_at: Timestamp | None = None
    metadata: JsonValue | None = None
    status: StatusField
    created_at: Timestamp
    updated_at: Timestamp
    rollover_max: Amount | None = None


class LedgerEntry(_WireModel):
    """One immutable change of a budget's balance: + debit (consumption), - credit (top-up).

    ``balance == initial limit - sum(amount)`` over a budget's entries, exactly (SPEC §2).
    ``currency`` (Python-only, not in the seed's JSON) is the budget's currency, so the entries
    of one multi-currency debit can be told apart.
    """

    id: LedgerId
    budget_id: BudgetId
    amount: Amount
    meter_source: Text
    ref_type: Text | None = None
    ref_id: Text | None = None
    session_id: Identifier | None = None
    description: Text | None = None
    created_at: Timestamp
    currency: Text | None = Field(default=None, exclude=True)


# ============================================================================
# Actions and check results
# ============================================================================

ActionKind: TypeAlias = Literal["continue", "warn", "pause", "stop"]

#: Restrictiveness of each action: the most severe one wins a check.
ACTION_SEVERITY: Final[Mapping[str, int]] = {"continue": 0, "warn": 1, "pause": 2, "stop": 3}


@dataclass(frozen=True, slots=True)
class BudgetAction:
    """What a rule decides: continue, or warn / pause / stop with a message (the seed's enum).

    Not serialized (the seed's type has no serde derive); ``severity`` orders actions.
    """

    kind: ActionKind
    message: str | None = None

    def __post_init__(self) -> None:
        """Reject an unknown kind or a non-str message."""
        if self.kind not in ACTION_SEVERITY:
            accepted = ", ".join(ACTION_SEVERITY)
            raise InvalidInput(f"unknown action {_show(self.kind)}; accepted: {accepted}")
        if self.message is not None and not isinstance(self.message, str):
            raise InvalidInput(f"action message must be a str, got {type(self.message).__name__}")

    @classmethod
    def continue_(cls) -> BudgetAction:
        """No action needed: continue execution."""
        return cls("continue")

    @classmethod
    def warn(cls, message: str) -> BudgetAction:
        """Emit a warning but keep running."""
        return cls("warn", message)

    @classmethod
    def pause(cls, message: str) -> BudgetAction:
        """Pause: requires the user (or operator) to resume."""
        return cls("pause", message)

    @classmethod
    def stop(cls, message: str) -> BudgetAction:
        """Hard stop: terminate the current turn."""
        return cls("stop", message)

    @property
    def severity(self) -> int:
        """Restrictiveness: continue 0 < warn 1 < pause 2 < stop 3."""
        return ACTION_SEVERITY[self.kind]


class ErrorFields(_WireModel):
    """Interpolation fields of a user-facing budget error (the seed's UserFacingErrorFields).

    ``limit``, ``spent``, ``soft_limit`` in currency units; ``held`` (SPEC §10): the budget's
    outstanding reservations, set when they are part of why a check stops or pauses.
    """

    budget_id: Text | None = None
    currency: Text | None = None
    limit: Amount | None = None
    spent: Amount | None = None
    soft_limit: Amount | None = None
    held: Amount | None = None


class BudgetCheckResult(_WireModel):
    """The most restrictive action over the budgets of a scope, and why.

    ``fail_open`` (Python-only, omitted from JSON while False) marks a ``continue`` returned
    because the store was unreachable under a fail-open policy. ``subject_type`` and
    ``subject_id`` (Python-only, never in JSON: the seed has no such fields) name the level of
    the scope whose budget decided a warn, pause or stop — e.g. resume that level with
    ``kit.resume(scope, levels=[result.subject_type])``.
    """

    omitted_when_false: ClassVar[frozenset[str]] = frozenset({"fail_open"})

    action: ActionKind
    message: Text | None = None
    budget_id: BudgetId | None = None
    balance: Amount | None = None
    currency: Text | None = None
    error_code: Text | None = None
    error_fields: ErrorFields | None = None
    fail_open: Annotated[bool, Strict()] = False
    subject_type: BudgetSubjectType | None = Field(default=None, exclude=True)
    subject_id: Text | None = Field(default=None, exclude=True)

    @classmethod
    def ok(cls) -> BudgetCheckResult:
        """Return the result with nothing to report: ``{"action":"continue"}``."""
        return cls(action="continue")

    def should_stop(self) -> bool:
        """Whether the caller must stop (the action is ``stop``)."""
        return self.action == "stop"

    def should_pause(self) -> bool:
        """Whether the caller must pause (the action is ``pause``)."""
        return self.action == "pause"

    @property
    def severity(self) -> int:
        """Restrictiveness of the action: continue 0 < warn 1 < pause 2 < stop 3."""
        return ACTION_SEVERITY[self.action]

    def to_action(self) -> BudgetAction:
        """Return the action as a BudgetAction (message dropped for ``continue``)."""
        return BudgetAction(self.action, None if self.action == "continue" else self.message)


# ============================================================================
# check_budget tool response
# ============================================================================

SummaryStatus: TypeAlias = Literal["active", "warning", "paused", "exhausted"]
ToolStatus: TypeAlias = Literal["active", "warning", "paused", "exhausted", "no_budgets"]


class BudgetSummary(_WireModel):
    """One budget as the check_budget tool reports it; ``percent_remaining`` in 0..100."""

    currency: Text
    limit: Amount
    balance: Amount
    soft_limit: Amount | None = None
    percent_remaining: Amount
    status: SummaryStatus


class BudgetToolResponse(_WireModel):
    """The check_budget tool's answer: overall status, one summary per budget, a hint."""

    status: ToolStatus
    budgets: list[BudgetSummary]
    hint: Text | None = None


# ============================================================================
# Events
# ============================================================================

BudgetEventType: TypeAlias = Literal[
    "budget.warning", "budget.paused", "budget.exhausted", "budget.resumed", "budget.threshold"
]


class BudgetEventData(_WireModel):
    """The payload of a budget event: the budget's state when it entered or left a zone."""

    budget_id: BudgetId
    balance: Amount
    limit: Amount
    currency: Text
    message: Text | None = None
    soft_limit: Amount | None = None
    #: For ``budget.threshold``: the share of the limit (spent) that was reached, e.g. 0.8.
    threshold: Amount | None = None


class BudgetEvent(_WireModel):
    """An edge-triggered budget event, as read from the organization's stream.

    ``id`` is the Redis stream entry id (``<ms>-<seq>``), usable as ``after`` to resume reading.
    """

    id: Annotated[str, Strict(), Field(min_length=1)]
    type: BudgetEventType
    organization_id: Identifier
    created_at: Timestamp
    data: BudgetEventData


# ============================================================================
# JSON Schemas
# ============================================================================

_SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    Budget,
    LedgerEntry,
    BudgetCheckResult,
    ErrorFields,
    BudgetSummary,
    BudgetToolResponse,
    BudgetEventData,
    BudgetEvent,
    DurationPeriod,
    RollingPeriod,
    CalendarPeriod,
)


def json_schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schema of each public wire type, by name (for ``budgetkit schema``).

    Why: consumers in other languages can validate budgetkit's JSON without reading Python.
    """
    schemas: dict[str, dict[str, Any]] = {
        model.__name__: model.model_json_schema() for model in _SCHEMA_MODELS
    }
    schemas["BudgetPeriod"] = _PERIOD_ADAPTER.json_schema()
    schemas["BudgetStatus"] = TypeAdapter(BudgetStatus).json_schema()
    schemas["BudgetSubjectType"] = TypeAdapter(BudgetSubjectType).json_schema()
    return dict(sorted(schemas.items()))
