"""Atomic, resumable meta-training checkpoints (PURER and the episodic baselines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench import provenance
from bench.atomic import atomic_save
from bench.errors import IntegrityError

#: Key of the code history (see :mod:`bench.provenance`) inside a checkpoint file.
CODE_HISTORY = "code_history"

#: A meta-training loop also checkpoints once this many seconds passed since its last save, whatever
#: its iteration cadence: a kill then loses at most this much work. The checkpoint holds the whole
#: state, so where it is taken never changes the numbers (the resume tests kill at any iteration).
CHECKPOINT_MAX_INTERVAL_S = 600.0


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save into a temporary sibling, then rename (a crash never leaves a valid-looking file).

    The file also holds the code history of the work in it (:func:`bench.provenance.stamp`).
    """
    stamped = {**state, CODE_HISTORY: provenance.stamp()}
    atomic_save(path, lambda tmp: torch.save(stamped, tmp))


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Load with ``weights_only=True``; a truncated or corrupt file is an error naming it.

    Returns the saved state without its code history, which this process inherits.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for bad files
        raise IntegrityError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); delete it to restart "
            "meta-training from scratch"
        ) from error
    provenance.inherit(state.pop(CODE_HISTORY, None), path)
    return state
