"""State backends: cursors, dedup, durable outbox and leases."""

from .base import (
    ClaimedItem,
    Health,
    OutboxItem,
    OutboxSettings,
    OutboxStats,
    StateBackend,
)
from .memory import MemoryState

__all__ = [
    "ClaimedItem",
    "Health",
    "MemoryState",
    "OutboxItem",
    "OutboxSettings",
    "OutboxStats",
    "StateBackend",
]
