"""One build of a zoo per experiment: refuse to mix member weights inside one leaderboard.

A zoo's key hashes its configuration; its members' weights also depend on the CPU and the torch
thread count they were trained on (results/README.md, "Zoo builds"). A cell run on a rebuilt zoo
would land in a leaderboard beside cells of the first build, and meta-trained methods move by
several points between builds, far beyond the episodes' CI. So ``dfml-run`` stops before adding
such a record, unless ``allow_mixed_zoo_builds=true`` is given on purpose.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.method import METHODS
from bench.records import RunRecord, read_records


def record_reads_zoo(record: RunRecord) -> bool:
    """Whether ``record``'s method (with its config) read the zoo; unknown methods count as reading."""
    if record.method not in METHODS:
        return True
    method_cfg: dict[str, Any] = dict((record.config or {}).get("method") or {})
    return METHODS.get(record.method).reads_zoo(method_cfg)


def other_builds(runs_dir: Path, zoo_name: str, zoo_key: str, weights: str) -> Counter[str]:
    """Builds (weights sha256 -> records) of ``zoo_name``/``zoo_key`` under ``runs_dir``, ``weights`` aside.

    Not counted: records that do not name their build (older schema) and records of methods that
    never read the zoo (random_init, the oracles).
    """
    found: Counter[str] = Counter()
    if not runs_dir.is_dir():
        return found
    for record in read_records(runs_dir):
        named = str(record.hashes.get("zoo_weights") or "")
        same_zoo = record.setting.get("zoo") == zoo_name and record.hashes.get("zoo") == zoo_key
        if record.status == "ok" and same_zoo and named and named != weights and record_reads_zoo(record):
            found[named] += 1
    return found


def check_one_zoo_build(runs_dir: Path, experiment: str, zoo_name: str, zoo_key: str, weights: str) -> None:
    """BenchError when ``runs_dir`` (one experiment's runs) holds records of another build of the zoo."""
    found = other_builds(runs_dir, zoo_name, zoo_key, weights)
    if not found:
        return
    listed = ", ".join(f"{build[:12]} × {n}" for build, n in found.most_common())
    raise BenchError(
        f"experiment {experiment!r} already holds records made on another build of zoo {zoo_name!r} "
        f"(member weights {listed} record(s)); this cache's build is {weights[:12]} (the same "
        "configuration trained on another CPU or thread count gives other weights, and other numbers). "
        "Use that build (`dfml-zoo import <archive>` of a `dfml-zoo export` from where it was made), "
        "run the experiment into another results dir (paths.results=... or DFML_RESULTS) or under "
        "another experiment.name, or pass allow_mixed_zoo_builds=true to add this record anyway "
        "(the leaderboard footer then names both builds)"
    )
