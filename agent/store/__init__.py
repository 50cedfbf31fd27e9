"""Durable server state (mitigation requests, session configurations) behind the :class:`Store` seam.

``interface`` defines the records and the protocol; ``sqlite`` is the default back-end.
"""

from agent.store.interface import (
    ACTIVE_STATUSES,
    MitigationRecord,
    SessionConfigRecord,
    Store,
    StoreError,
    is_active,
    is_expired,
)
from agent.store.sqlite import SqliteStore

__all__ = [
    "ACTIVE_STATUSES",
    "MitigationRecord",
    "SessionConfigRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "is_active",
    "is_expired",
]
