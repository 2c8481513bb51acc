"""Ledger export: durable books of every ledger entry, event and budget, and reading them back.

This package owns the way budgetkit's state leaves Redis and comes back:

- ``exporter``: ``Exporter`` (configured by ``ExportOptions``), ``export_once``,
  ``run_exporter``: drain the ledger and event streams through a consumer group (at-least-once),
  write them to a sink, then acknowledge and trim them, so Redis keeps only what is not exported.
- ``sinks``: the ``ExportSink`` protocol, ``JsonlSink``, ``PostgresSink``, ``open_sink``.
- ``records``: what the books hold (``LedgerRecord``, ``EventRow``, ``BudgetSnapshotRecord``).
- ``reconcile`` (Redis balances vs the books) and ``restore`` (the books → an empty Redis), on
  the arithmetic of ``books``; the rules they apply are ``budgetkit._core.rules``'s.
- ``streams``: the Redis side (discovery of organizations, stream pages and positions).

Everything a user needs is importable from ``budgetkit.export``; the modules are its layout.
"""

from budgetkit.export.exporter import (
    Exporter,
    ExportOptions,
    ExportStats,
    export_once,
    run_exporter,
)
from budgetkit.export.reconcile import BudgetDrift, ReconcileReport, reconcile
from budgetkit.export.records import (
    BudgetSnapshotRecord,
    EventRow,
    ExportBatch,
    LedgerRecord,
    LedgerTotals,
)
from budgetkit.export.restore import RestoreConflict, RestoreReport, restore
from budgetkit.export.sinks import ExportSink, JsonlSink, PostgresSink, open_sink
from budgetkit.export.streams import DEFAULT_CONSUMER, DEFAULT_GROUP, discover_organizations

__all__ = [
    "DEFAULT_CONSUMER",
    "DEFAULT_GROUP",
    "BudgetDrift",
    "BudgetSnapshotRecord",
    "EventRow",
    "ExportBatch",
    "ExportOptions",
    "ExportSink",
    "ExportStats",
    "Exporter",
    "JsonlSink",
    "LedgerRecord",
    "LedgerTotals",
    "PostgresSink",
    "ReconcileReport",
    "RestoreConflict",
    "RestoreReport",
    "discover_organizations",
    "export_once",
    "open_sink",
    "reconcile",
    "restore",
    "run_exporter",
]
