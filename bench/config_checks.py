"""Checks of a ``dfml-run`` config before anything runs or is skipped: unknown keys and bad values.

Hydra accepts any ``+key=value`` and any string for a top-level setting. Unchecked, a typo such as
``+task.nway=10`` ran a new cell with ``n_way`` still 5 (a stray record under a new run key), and
``force=flase`` (a non-empty string, so truthy) re-ran a finished cell. Every such value is refused
here, naming the key and what is valid, before a cell is skipped or computed.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from bench.errors import BenchError
from bench.threads import check_threads

#: Top-level keys of a run config (``bench/conf/config.yaml``, the groups, and an experiment's
#: ``paper:`` block of published numbers).
TOP_LEVEL_KEYS = (
    "allow_mixed_zoo_builds",
    "budget",
    "dataset",
    "device",
    "eval",
    "experiment",
    "force",
    "meta_model",
    "method",
    "method_overrides",
    "numerics",
    "paper",
    "paths",
    "profile",
    "seed",
    "task",
    "threads",
    "tracking",
    "zoo",
)
#: The keys of the fixed-schema sections (a task config's are those of ``bench/conf/task/*.yaml``).
SECTION_KEYS = {
    "task": (
        "name",
        "description",
        "n_way",
        "k_shot",
        "n_query",
        "n_episodes",
        "split",
        "suite_seed",
        "test_steps",
        "primary_steps",
    ),
    "budget": ("meta_iterations", "max_seconds"),
    "eval": ("limit",),
    "meta_model": ("global_pool",),
    "paths": ("results",),
}
BOOLEANS = ("force", "allow_mixed_zoo_builds", "meta_model.global_pool")


def check_run_config(cfg: DictConfig) -> None:
    """BenchError for an unknown key or a value of the wrong type in ``cfg`` (see the module doc)."""
    _check_keys([str(k) for k in cfg if k != "hydra"], TOP_LEVEL_KEYS, "top-level key")
    for section, valid in SECTION_KEYS.items():
        node = OmegaConf.select(cfg, section, default=None)
        if node is not None:
            _check_keys([str(k) for k in node], valid, f"{section} key", prefix=f"{section}.")
    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key, default=False)
        if not isinstance(value, bool):
            raise BenchError(f"{key}={value!r} is not valid; valid: true, false")
    seed = OmegaConf.select(cfg, "seed", default=0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BenchError(f"seed={seed!r} is not valid; valid: an integer")
    threads = OmegaConf.select(cfg, "threads", default=None)
    if threads is not None:
        check_threads(threads, "threads")
    # types here; the ranges are Budget's (bench.method), which names them the same way
    iterations = OmegaConf.select(cfg, "budget.meta_iterations", default=None)
    if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)):
        raise BenchError(
            f"budget.meta_iterations={iterations!r} is not valid; valid: an integer >= 1, or null (the "
            "method's own schedule)"
        )
    seconds = OmegaConf.select(cfg, "budget.max_seconds", default=None)
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)):
        raise BenchError(f"budget.max_seconds={seconds!r} is not valid; valid: a number > 0, or null")
    results = OmegaConf.select(cfg, "paths.results", default="results")
    if not str(results).strip():
        raise BenchError(
            "paths.results is empty (is $DFML_RESULTS set to an empty string?); give a results directory"
        )


def _check_keys(keys: list[str], valid: tuple[str, ...], what: str, prefix: str = "") -> None:
    unknown = [k for k in keys if k not in valid]
    if unknown:
        from bench.registry import unknown_key_message

        raise BenchError(unknown_key_message(what, prefix + unknown[0], [prefix + v for v in valid]))
