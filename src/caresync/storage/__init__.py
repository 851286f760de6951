"""Durable replica storage: the Store protocol, SQLite (on database threads), and an in-memory twin.

See docs/storage.md for the schema, the durability guarantees and the rules
that keep unsynced work from ever being deleted.
"""

from caresync.lockout import FailedLogin, UnlockAttempts
from caresync.storage.base import (
    HUB_STATES,
    ConflictRow,
    CopiedRecords,
    CopyPage,
    FeedEpoch,
    FeedItem,
    HeldState,
    HubChanges,
    HubMark,
    HubOutcome,
    HubRemoved,
    HubSummaryRow,
    Identity,
    IncomingUpdate,
    LaptopStore,
    OpenCounts,
    OutboxItem,
    OutboxSummary,
    QuarantinedUpdate,
    ReplicaInfo,
    ReplicaStore,
    ResumeReads,
    Role,
    ServerStore,
    SessionRow,
    Store,
    StoreOpener,
    UserAccount,
    card_digest,
    own_identity,
)
from caresync.storage.cache import CachedRecord, RecordCache
from caresync.storage.keyring import (
    DEFAULT_KDF,
    KdfParams,
    KeyRing,
    key_file_for,
    server_database_key,
)
from caresync.storage.laptop_key import (
    LaptopKey,
    create_laptop_key,
    is_encrypted,
    unlock_key_file,
    unlock_laptop_key,
)
from caresync.storage.memory import MemoryStore
from caresync.storage.schema import SCHEMA_VERSION
from caresync.storage.sqlite import SQLiteStore
from caresync.storage.unsynced import EXPORT_FORMAT, EXPORT_VERSION
from caresync.throttle import ThrottlePolicy

__all__ = [
    "DEFAULT_KDF",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "SCHEMA_VERSION",
    "CachedRecord",
    "ConflictRow",
    "CopiedRecords",
    "CopyPage",
    "FailedLogin",
    "FeedEpoch",
    "FeedItem",
    "HeldState",
    "HUB_STATES",
    "HubChanges",
    "HubMark",
    "HubOutcome",
    "HubRemoved",
    "HubSummaryRow",
    "Identity",
    "own_identity",
    "card_digest",
    "IncomingUpdate",
    "LaptopStore",
    "KdfParams",
    "KeyRing",
    "LaptopKey",
    "MemoryStore",
    "OutboxItem",
    "OutboxSummary",
    "QuarantinedUpdate",
    "RecordCache",
    "ReplicaInfo",
    "ReplicaStore",
    "Role",
    "SQLiteStore",
    "ServerStore",
    "OpenCounts",
    "ResumeReads",
    "SessionRow",
    "Store",
    "StoreOpener",
    "ThrottlePolicy",
    "UnlockAttempts",
    "UserAccount",
    "create_laptop_key",
    "is_encrypted",
    "key_file_for",
    "server_database_key",
    "unlock_key_file",
    "unlock_laptop_key",
]
