"""budgetkit's internals: everything behind the public API of ``budgetkit`` (its ``__init__``),
``budgetkit.sync``, ``budgetkit.metering``, ``budgetkit.export``, ``budgetkit.webhooks`` and the
CLI. Nothing here is a stable API; the modules, one responsibility each:

- ``client``: the async BudgetKit — validates, converts, builds keys, runs one script per call.
- ``runtime``: loads ``lua/*.lua`` as one Redis Functions library and calls it (FCALL, loading
  the library when the server lacks it, Cluster guard, failover retries, resends of lost
  replies); ``batching``: concurrent calls share pipelines; ``durability``: the WAIT mode;
  ``redelivery``: request records (exactly once); ``storeformat``: the stored-format version and
  ``migrate``; ``checkcache``: the check cache (server-invalidated).
- ``store_errors``: the one seam that sorts Redis errors into budgetkit's (``errors``).
- ``convert`` and ``amounts``: arguments into exact script arguments; ``ids``: ids and
  identifiers; ``keys``: every key name; ``periods``: windows and calendar buckets.
- ``replies``: script replies into models; ``rules``: check results, messages and the rules
  Python states once (status, warn zone, thresholds, rollover start); ``models``, ``results``,
  ``scope``: the types; ``spend``: the spend guard; ``pricing``: price tables;
  ``observability``: metrics and traces.
"""
