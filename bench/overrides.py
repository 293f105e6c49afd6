"""Checks of command-line overrides: group choices and method keys ``method_overrides`` would replace.

A group typo gets a did-you-mean before Hydra runs; a ``method.<key>=`` that an experiment's
``method_overrides`` replaces is refused rather than silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources

from omegaconf import DictConfig, OmegaConf

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


def command_line_overrides() -> list[str]:
    """This job's command-line overrides (``hydra.overrides.task``), when running under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except ValueError:
        return []


def check_shadowed_method_keys(cfg: DictConfig, merged: DictConfig, argv: Sequence[str]) -> None:
    """Refuse a command-line ``method.<key>=`` that ``method_overrides`` would silently replace.

    ``cfg``: before :func:`with_method_overrides`; ``merged``: after. An experiment's per-method
    setting (e.g. glyphs_sh's ``purer: {init: random}``) wins over ``method.init=average``; running on
    with a value other than the one asked for would mislabel the record.
    """
    name = str(cfg.method.name)
    for argument in argv:
        key, sep, _ = argument.lstrip("+").partition("=")
        if not sep or not key.startswith("method."):
            continue
        path = key.removeprefix("method.")
        asked = OmegaConf.select(cfg.method, path, default=None)
        used = OmegaConf.select(merged.method, path, default=None)
        if asked != used:
            raise BenchError(
                f"{argument} is overridden by method_overrides.{name} (the experiment's per-method "
                f"settings), which sets method.{path}={used}; to change it in this experiment, pass "
                f"method_overrides.{name}.{path}={argument.partition('=')[2]}"
            )
