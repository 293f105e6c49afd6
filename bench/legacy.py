"""Which reference-code behaviours a run switched on (purer.md §11: such runs are flagged).

Methods expose reproductions of reference bugs as opt-in switches: a ``legacy:`` block of booleans
(PURER's ``cumulative_node_weighting``, FREE's ``bank_last_member_only``...) or a choice whose value
ends in ``_legacy`` (``kd_loss: kl_prob_legacy``). A run with any of them on is not the method as
specified; its record lists the switches and its leaderboard row says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LEGACY_SUFFIX = "_legacy"


def legacy_switches(method_config: Mapping[str, Any]) -> list[str]:
    """The active legacy switches of a method config (sorted; empty = none).

    E.g. ``["kd_loss=kl_prob_legacy", "legacy.alias_members"]``.
    """
    block = method_config.get("legacy") or {}
    active = [f"legacy.{key}" for key, value in block.items() if value]
    active += [
        f"{key}={value}"
        for key, value in method_config.items()
        if isinstance(value, str) and value.endswith(LEGACY_SUFFIX)
    ]
    return sorted(active)
