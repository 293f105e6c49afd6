"""PURER's curriculum trigger: the gradient switch towards harder tasks (purer.md §7).

At the end of each meta-iteration ``it`` (1-based) with mean pseudo-query accuracy ``acc``:

1. ``it == start``: set the flag (a forced first switch).
2. else if ``it > start`` and the flag is not set: if ``best is None or acc > best`` (strict) then
   ``best = acc, count = 0``; else ``count += 1`` and when ``count == patience`` set the flag,
   ``count = 0, best = None``.

The next data step adds the adversarial term once and clears the flag (:meth:`consume`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Curriculum:
    """Trigger state; ``events`` lists the iterations at which the switch fired (and why)."""

    start: int
    patience: int = 6
    flag: bool = False
    best: float | None = None
    count: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, iteration: int, accuracy: float) -> bool:
        """Feed one iteration's mean training-query accuracy (%); True if the switch fires."""
        if iteration == self.start:
            self.flag = True
            self.events.append({"iteration": iteration, "reason": "forced", "accuracy": accuracy})
            return True
        if iteration <= self.start or self.flag:
            return False
        if self.best is None or accuracy > self.best:
            self.best, self.count = accuracy, 0
            return False
        self.count += 1
        if self.count == self.patience:
            self.flag, self.count, self.best = True, 0, None
            self.events.append({"iteration": iteration, "reason": "plateau", "accuracy": accuracy})
            return True
        return False

    def consume(self) -> bool:
        """True (and clear the flag) if the next data step must add the adversarial term."""
        fired, self.flag = self.flag, False
        return fired

    def state_dict(self) -> dict[str, Any]:
        """Serializable state (for checkpoints)."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, value)
