"""``CheckpointError``, apart from ``agents.checkpoint`` (which imports torch): the command line
catches it as a usage error before it imports torch."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, corrupt, foreign or of another version."""
