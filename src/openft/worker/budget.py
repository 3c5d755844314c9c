"""How many more jobs a worker may take (``--max-jobs``), shared by its validation and training lanes."""

from __future__ import annotations

import threading
from collections.abc import Callable


class JobBudget:
    """A lane takes one unit before it claims and gives it back if there was nothing to claim, so
    two lanes never claim past the limit between them. ``None``: no limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.used -= 1

    def claim_with(self, claim: Callable[[], bool]) -> bool:
        """Call ``claim`` (True when it claimed a job) if the budget allows; a unit it did not use,
        or that an error left unused, is given back."""
        if not self.take():
            return False
        try:
            claimed = claim()
        except BaseException:
            self.give_back()
            raise
        if not claimed:
            self.give_back()
        return claimed

    @property
    def spent(self) -> bool:
        with self._lock:
            return self.limit is not None and self.used >= self.limit
