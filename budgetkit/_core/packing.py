"""budgetkit's own commands packed by hiredis on the connections budgetkit opens.

redis-py's asyncio connections pack every command in Python (its blocking connections use
hiredis when it is installed): for the 22 arguments of a debit's ``FCALL`` that is 11.9 µs of
client CPU against 1.5 µs with ``hiredis.pack_command``, the same bytes
(``python3 scripts/profile_client.py``; tests/test_lean_client.py compares the bytes).
``fast_packing(cls)`` is ``cls`` with ``pack_command`` taking that path for ``FCALL`` and
``FCALL_RO`` only: the runtime builds those from ``str`` and ``int`` arguments alone
(budgetkit._core.runtime.ScriptRuntime.command), which both packers encode alike (UTF-8,
decimal). Every other command (the user's, redis-py's own) is packed by redis-py as before.
Applied by ``client_from_url`` to the clients budgetkit creates; a client passed in by the
user is left as it is.
"""

from __future__ import annotations

from typing import Any, Final

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis ships with redis[hiredis], a dependency
    hiredis = None  # type: ignore[assignment]

#: The commands packed by hiredis: the script runtime's calls.
OWN_COMMANDS: Final = frozenset({"FCALL", "FCALL_RO"})

_classes: dict[type, type] = {}


def fast_packing(cls: type) -> type:
    """``cls`` (a redis-py asyncio connection class) packing budgetkit's FCALLs with hiredis;
    ``cls`` itself when hiredis is missing or ``cls`` packs that way already."""
    if hiredis is None or getattr(cls, "_budgetkit_fast_packing", False):
        return cls
    made = _classes.get(cls)
    if made is None:
        python_packing = getattr(cls, "pack_command")  # noqa: B009 - any connection class
        made = type(cls.__name__, (cls,), {"pack_command": _packer(python_packing)})
        made._budgetkit_fast_packing = True  # type: ignore[attr-defined]
        made.__module__ = __name__
        _classes[cls] = made
    return made


def _packer(python_packing: Any) -> Any:
    def pack_command(self: Any, *args: Any) -> list[bytes]:
        if args and args[0] in OWN_COMMANDS and self.encoder.encoding == "utf-8":
            return [hiredis.pack_command(args)]
        return python_packing(self, *args)  # type: ignore[no-any-return]

    return pack_command


def install(client: Any) -> Any:
    """Makes the connections ``client`` opens from now on pack budgetkit's FCALLs with hiredis:
    a single server's or a Sentinel primary's pool, or every node of a Cluster. Returns
    ``client``."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.connection_class = fast_packing(pool.connection_class)
        return client
    kwargs = getattr(client, "connection_kwargs", None)  # a Cluster: the nodes it will find
    if isinstance(kwargs, dict) and "connection_class" in kwargs:
        kwargs["connection_class"] = fast_packing(kwargs["connection_class"])
    manager = getattr(client, "nodes_manager", None)  # and the nodes it starts from
    for node in getattr(manager, "startup_nodes", {}).values():
        node.connection_class = fast_packing(node.connection_class)
    return client
