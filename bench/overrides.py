"""Early checks of command-line group choices, so a typo gets a did-you-mean before Hydra runs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources

from bench.errors import BenchError
from bench.registry import unknown_key_message

GROUPS = ("dataset", "zoo", "method", "task", "device", "tracking", "experiment")
_OVERRIDE = re.compile(r"^\+{0,2}(?P<group>[a-z_]+)=(?P<value>[^=]*)$")


def group_options(group: str) -> list[str]:
    """YAML stems of ``bench/conf/<group>/``."""
    folder = resources.files("bench.conf") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_group_overrides(argv: Sequence[str]) -> None:
    """Raise BenchError for ``group=value`` overrides naming an option that does not exist.

    Handles sweeps (``method=a,b``) and leaves Hydra's sweep functions (``choice(...)``) alone.
    """
    for argument in argv:
        match = _OVERRIDE.match(argument)
        if not match or match["group"] not in GROUPS or "(" in match["value"]:
            continue
        valid = group_options(match["group"])
        for value in filter(None, (v.strip() for v in match["value"].split(","))):
            if value not in valid:
                raise BenchError(unknown_key_message(match["group"], value, valid))
