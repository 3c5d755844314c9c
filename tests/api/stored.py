"""What a test sees of the storage, whichever it is (local directory or bucket)."""

from __future__ import annotations


def stored_blobs(services) -> set[str]:
    """The keys of every blob the store holds, on disk or in the bucket."""
    return set(services.blobs.keys_older_than(float("inf")))
