"""One build of a zoo per experiment: refuse to mix member weights inside one leaderboard.

A zoo's key hashes its configuration; its members' weights also depend on the CPU and the torch
thread count they were trained on (results/README.md, "Zoo builds"). A cell run on a rebuilt zoo
would land in a leaderboard beside cells of the first build, and meta-trained methods move by
several points between builds, far beyond the episodes' CI. So ``dfml-run`` stops before adding
such a record, unless ``allow_mixed_zoo_builds=true`` is given on purpose: before training missing
members of a zoo whose build the experiment's records already name (a build made here would most
likely be another one), and after loading a complete zoo whose weights differ from that build.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.method import METHODS
from bench.records import RunRecord, read_records
from zoos.numerics import configured_numerics

WAYS_OUT = (
    "Use that build (`dfml-zoo import <archive>` of a `dfml-zoo export` made where it was built, with "
    "--replace if this cache holds another), run the experiment into another results dir "
    "(paths.results=... or DFML_RESULTS) or under another experiment.name, or pass "
    "allow_mixed_zoo_builds=true to add this record anyway (the leaderboard footer then names both builds)"
)


def record_reads_zoo(record: RunRecord) -> bool:
    """Whether ``record``'s method (with its config) read the zoo; unknown methods count as reading."""
    if record.method not in METHODS:
        return True
    method_cfg: dict[str, Any] = dict((record.config or {}).get("method") or {})
    return METHODS.get(record.method).reads_zoo(method_cfg)


def recorded_builds(
    runs_dir: Path, zoo_name: str, zoo_key: str, run_key: str, numerics: str | None = "native"
) -> Counter[str]:
    """Builds (weights sha256 -> records) of ``zoo_name``/``zoo_key`` named by the records under ``runs_dir``.

    Only records of runs with the same ``numerics`` count (``None``: every numerics): portable cells
    are rows of their own (``[numerics=portable]``) on a portable build. Not counted either: the
    record of ``run_key`` itself (``force=true`` replaces it), records that do not name their build
    (older schema), failed ones, and those of methods that never read the zoo (random_init,
    protonet_oracle, maml_oracle with its default random init).
    """
    found: Counter[str] = Counter()
    if not runs_dir.is_dir():
        return found
    for record in read_records(runs_dir):
        named = str(record.hashes.get("zoo_weights") or "")
        same_zoo = record.setting.get("zoo") == zoo_name and record.hashes.get("zoo") == zoo_key
        same_numerics = numerics is None or configured_numerics(record.config) == numerics
        if record.status == "ok" and same_zoo and same_numerics and named and record.run_key != run_key:
            if record_reads_zoo(record):
                found[named] += 1
    return found


def _listed(builds: Counter[str]) -> str:
    return ", ".join(f"{build[:12]} × {n}" for build, n in builds.most_common())


def check_before_building(
    runs_dir: Path,
    experiment: str,
    run_key: str,
    zoo_name: str,
    zoo_key: str,
    missing: list[int],
    numerics: str = "native",
) -> None:
    """BenchError when members are ``missing`` from the cache and the records already name a build.

    Called by ``load_or_build_zoo`` before it trains the missing members; a complete zoo is checked
    after loading (:func:`check_one_zoo_build`). A native cell counts the records of every numerics:
    members it trains come out as a build of this CPU, which is neither the recorded native build
    (another CPU or thread count) nor a portable one (a native member would also make a portable
    cache a mixed build). A portable cell counts portable records only: it trains the portable build.
    """
    found = recorded_builds(runs_dir, zoo_name, zoo_key, run_key, None if numerics == "native" else numerics)
    if not found:
        return
    raise BenchError(
        f"experiment {experiment!r} holds records made on build {_listed(found)} record(s) of zoo "
        f"{zoo_name!r}, and this cache lacks {len(missing)} of its members (indices "
        f"{', '.join(map(str, missing[:10]))}{', ...' if len(missing) > 10 else ''}); dfml-run does not "
        "train them (not even for a method that reads no zoo), since on another CPU or thread count "
        f"they come out as another build. `dfml-zoo build {zoo_name}` with the build's thread counts and "
        "numerics (results/README.md, 'Zoo builds') remakes it: a `--numerics portable` build on any "
        "x86-64 CPU, a native one only on the machine where it was made (`dfml-zoo export` carries it "
        "elsewhere); dfml-run then checks the weights. " + WAYS_OUT
    )


def check_one_zoo_build(
    runs_dir: Path,
    experiment: str,
    run_key: str,
    zoo_name: str,
    zoo_key: str,
    weights: str,
    numerics: str = "native",
) -> None:
    """BenchError when the records under ``runs_dir`` name another build of the zoo than ``weights``."""
    found = recorded_builds(runs_dir, zoo_name, zoo_key, run_key, numerics)
    found.pop(weights, None)
    if not found:
        return
    other = "portable" if numerics == "native" else "native"
    hint = ""
    if weights in recorded_builds(runs_dir, zoo_name, zoo_key, run_key, other):
        hint = (
            f"This cache's build is the one the experiment's numerics={other} records use: to add a "
            f"row of those, run this cell with numerics={other}. "
        )
    raise BenchError(
        f"experiment {experiment!r} already holds {numerics}-numerics records made on another build of "
        f"zoo {zoo_name!r} (member weights {_listed(found)} record(s)); this cache's build is "
        f"{weights[:12]} (the same configuration trained on another CPU or thread count, or with other "
        "numerics, gives other weights, and other numbers). " + hint + WAYS_OUT
    )
