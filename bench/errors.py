"""User-facing error types: each names the bad value and what would be valid."""

from __future__ import annotations


class BenchError(ValueError):
    """A configuration or input error that a user can fix; the message says how."""


class DataFreeViolation(RuntimeError):
    """Raised when a data-free method touches real training data during meta-training."""


class IntegrityError(BenchError):
    """A cached or stored file that is missing, unreadable or fails its content hash (message: the fix)."""
