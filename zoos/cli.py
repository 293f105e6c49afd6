"""``dfml-zoo``: build, list, verify, describe, export and import zoos.

    dfml-zoo build <zoo> [--dataset D] [--device auto] [--repair] [--threads N]
                   [--threads-by-arch arch=N[,arch=N]] [--numerics native|portable]
                   [--replace-native] [--expect-build HASH] [key=value ...]
    dfml-zoo ls
    dfml-zoo verify [<zoo>]
    dfml-zoo card <zoo> [--out card.md]
    dfml-zoo export <zoo> --out <file.tar|file.tar.gz>
    dfml-zoo import <file.tar|file.tar.gz> [--replace]

``build`` trains only the members missing from the cache (a killed build resumes), writes the
manifest, appends the wall time to the zoo's build log and writes its card. Extra ``key=value``
arguments are Hydra overrides of the composed config (``zoo.recipe.epochs=5``,
``dataset.root=...``). For parallel builds see ``dfml-zoo-job`` (Hydra multirun, one job per member).

``export`` / ``import`` carry one *build* of a zoo (its members' exact weights, verified by sha256)
to another cache: a zoo retrained on another CPU or thread count gets other weights, and with them
other numbers for every zoo-reading method (``zoos.archive``). ``build --numerics portable`` trains
weights that do not depend on which x86-64 CPU trains them (``zoos.numerics``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.atomic import atomic_write_json, atomic_write_text
from bench.errors import BenchError
from bench.hashing import sha256_file
from bench.locks import exclusive
from bench.overrides import group_options
from bench.paths import cache_dir
from bench.registry import unknown_key_message
from bench.signals import exit_on_sigterm, interrupted
from bench.threads import set_threads
from bench.timing import resolve_device
from zoos.card import render_card, scenario
from zoos.numerics import NUMERICS, enable_portable_numerics

log = logging.getLogger(__name__)


def default_dataset(zoo_cfg: DictConfig) -> str:
    """The dataset a zoo is built on: its ``dataset`` key, or the first MH source's dataset."""
    if zoo_cfg.get("sources"):
        return str(next(iter(zoo_cfg.sources.values())).dataset.name)
    if zoo_cfg.get("dataset") is None:
        raise BenchError(f"zoo {zoo_cfg.name!r} names no dataset; pass --dataset")
    return str(zoo_cfg.dataset)


def source_dataset_settings(cfg: DictConfig, dataset: str) -> dict[str, object]:
    """The scalar dataset settings an MH source of ``dataset`` sets that differ from ``cfg.dataset``'s.

    An MH zoo's sources set their dataset options (e.g. every image at 84 px); building or
    evaluating on one of them must load it the same way, or the run's dataset is not that source.
    None for SS / SH zoos.
    """
    for source in (cfg.zoo.get("sources") or {}).values():
        if str(source.dataset.name) != dataset:
            continue
        own = OmegaConf.to_container(source.dataset, resolve=True)
        group = OmegaConf.to_container(cfg.dataset, resolve=True)
        return {
            key: value
            for key, value in sorted(own.items())
            if key != "name"
            and (value is None or isinstance(value, (bool, int, float, str)))
            and group.get(key) != value
        }
    return {}


def source_dataset_overrides(cfg: DictConfig, dataset: str) -> list[str]:
    """:func:`source_dataset_settings` as ``dataset.<key>=<value>`` Hydra overrides."""
    return [
        f"dataset.{key}={'null' if value is None else value}"
        for key, value in source_dataset_settings(cfg, dataset).items()
    ]


def compose(zoo: str, dataset: str | None = None, overrides: list[str] | None = None) -> DictConfig:
    """The run config with ``zoo`` (and its dataset) selected, plus Hydra ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    valid = group_options("zoo")
    if zoo not in valid:
        raise BenchError(unknown_key_message("zoo", zoo, valid))
    from hydra.errors import HydraException

    if dataset is not None and dataset not in group_options("dataset"):
        raise BenchError(unknown_key_message("dataset", dataset, group_options("dataset")))
    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"zoo={zoo}"])
        chosen = dataset or default_dataset(cfg.zoo)
        from_source = (  # an MH source's own dataset settings (SS / SH zoos have none)
            source_dataset_overrides(
                hydra_compose("config", overrides=[f"zoo={zoo}", f"dataset={chosen}"]), chosen
            )
            if cfg.zoo.get("sources")
            else []
        )
        try:
            return hydra_compose(
                "config", overrides=[f"zoo={zoo}", f"dataset={chosen}", *from_source, *(overrides or [])]
            )
        except HydraException as error:  # a bad override: its message, without the traceback
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = " ".join(lines[:3]) or type(error).__name__
            raise BenchError(f"bad override in {' '.join(overrides or [])!r}: {reason}") from None


def builds_path(zoo_key: str) -> Path:
    """The build log of a zoo (one entry per ``dfml-zoo build``)."""
    return cache_dir() / "zoos" / zoo_key / "builds.json"


def parse_threads_by_arch(text: str | None) -> dict[str, int]:
    """``"resnet10=2,resnet18=2"`` -> ``{"resnet10": 2, "resnet18": 2}`` (BenchError if malformed)."""
    if not text:
        return {}
    parsed: dict[str, int] = {}
    for item in text.split(","):
        arch, sep, count = (part.strip() for part in item.partition("="))
        if not sep or not arch or not (count.isascii() and count.isdecimal()):
            raise BenchError(f"--threads-by-arch expects arch=N[,arch=N...], e.g. resnet10=2; got {item!r}")
        if arch in parsed:
            raise BenchError(f"--threads-by-arch names {arch!r} twice; give each architecture once")
        parsed[arch] = int(count)
    return parsed


def build(
    zoo: str,
    dataset: str | None,
    device: str,
    repair: bool,
    overrides: list[str],
    threads_by_arch: dict[str, int] | None = None,
    expect_build: str | None = None,
    numerics: str = "native",
    replace_native: bool = False,
) -> Path:
    """Build (resume) the zoo; returns the path of its card (BenchError if not ``expect_build``).

    ``numerics="portable"`` needs :func:`zoos.numerics.enable_portable_numerics` to have run first.
    """
    from bench.data import load_dataset
    from zoos.zoo import load_or_build_zoo, manifest_path

    cfg = compose(zoo, dataset, overrides)
    zoo_cfg = OmegaConf.to_container(cfg.zoo, resolve=True)
    data = load_dataset(OmegaConf.to_container(cfg.dataset, resolve=True))
    resolved = resolve_device(device)
    started = time.perf_counter()
    built = load_or_build_zoo(
        zoo_cfg,
        data,
        resolved,
        repair=repair,
        threads_by_arch=threads_by_arch,
        numerics=numerics,
        replace_native=replace_native,
    )
    missing = len(built.trained_now)
    entry = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - started,
        "trained": missing,
        "loaded": len(built.members) - missing,
        "device": str(resolved),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "threads_by_arch": dict(threads_by_arch or {}),
        "numerics": numerics,
    }
    log_path = builds_path(built.key)
    with exclusive(cache_dir() / "locks" / "zoos" / f"{built.key}.lock", f"build log of zoo {built.name}"):
        atomic_write_json(log_path, [*read_build_log(log_path), entry])  # concurrent builds add, not lose
    manifest = json.loads(manifest_path(built.key).read_text())
    card = write_card(manifest)
    print(
        f"zoo {built.name} ({built.key}): {len(built.members)} members, {missing} trained, "
        f"{entry['wall_s']:.1f} s, build {manifest_build(manifest)[:12]}; manifest "
        f"{manifest_path(built.key)}; card {card}"
    )
    check_expected_build(manifest, expect_build)
    return card


def read_build_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a zoo's ``builds.json``; a damaged one is moved aside (named in a warning)."""
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())
        if not isinstance(history, list):
            raise ValueError(f"a {type(history).__name__}, not a list")
        return history
    except (OSError, ValueError) as error:
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        os.replace(path, aside)
        log.warning("build log %s unreadable (%s); moved to %s, starting a new one", path, error, aside)
        return []


def manifest_build(manifest: dict[str, Any]) -> str:
    """The build hash of a manifest's members (records' ``hashes.zoo_weights``)."""
    from zoos.zoo import build_hash

    return build_hash([m["weights_sha256"] for m in manifest["members"]])


def check_build_prefix(expected: str) -> None:
    """BenchError unless ``expected`` is 6-64 lowercase hex digits."""
    if not 6 <= len(expected) <= 64 or any(c not in "0123456789abcdef" for c in expected):
        raise BenchError(f"--expect-build {expected!r}: give 6 to 64 lowercase hex digits of a build hash")


def check_expected_build(manifest: dict[str, Any], expected: str | None) -> None:
    """BenchError unless the build starts with ``expected`` (a hash prefix of >= 6 hex digits)."""
    if expected is None:
        return
    check_build_prefix(expected)
    build = manifest_build(manifest)
    if not build.startswith(expected):
        raise BenchError(
            f"zoo {manifest['name']} ({manifest['key']}) is build {build[:12]}, not the expected "
            f"{expected}: this machine or thread count trains other weights (results/README.md, 'Zoo "
            "builds'); `dfml-zoo import` an export of the expected build instead"
        )


def manifests() -> list[dict[str, Any]]:
    """Every readable zoo manifest in the cache, newest first (an unreadable one is named and skipped)."""
    paths = sorted((cache_dir() / "zoos").glob("*/manifest.json"), key=lambda p: -p.stat().st_mtime)
    found = []
    for path in paths:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            log.warning(
                "skipping zoo manifest %s: unreadable (%s); `dfml-zoo build <zoo>` writes it again",
                path,
                error,
            )
    return found


def find_manifest(zoo: str) -> dict[str, Any]:
    """The manifest of zoo ``zoo`` (by name or key); error with the fix when absent or ambiguous.

    A name built in several configurations (e.g. a smoke run's ``zoo.n_members=2`` beside the full
    zoo) is refused with their keys: picking the most recently used would export, verify or card
    whichever configuration ran last.
    """
    found = [m for m in manifests() if zoo in (m["name"], m["key"])]
    if len(found) == 1:
        return found[0]
    if found:
        listed = "; ".join(f"{m['key']} ({len(m['members'])} members)" for m in found)
        raise BenchError(
            f"zoo {zoo!r} is built in {len(found)} configurations in {cache_dir()}: {listed}; "
            "name the one you mean by its key"
        )
    valid = group_options("zoo")
    if zoo not in valid:
        raise BenchError(unknown_key_message("zoo", zoo, valid))
    raise BenchError(f"zoo {zoo!r} has not been built in {cache_dir()}; run `dfml-zoo build {zoo}`")


def check_out_path(out: Path) -> None:
    """BenchError unless ``out`` names a file that can be written (its folder exists, is writable)."""
    if out.is_dir():
        raise BenchError(f"--out {str(out)!r} is a directory; give a file path (e.g. {out / 'card.md'})")
    if not out.parent.is_dir():
        raise BenchError(f"--out {str(out)!r}: its folder {str(out.parent)!r} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise BenchError(f"--out {str(out)!r}: its folder {str(out.parent)!r} is not writable")


def write_card(manifest: dict[str, Any], out: Path | None = None) -> Path:
    """Render the card to ``out``, else next to the manifest; returns the path written."""
    builds = read_build_log(builds_path(manifest["key"]))
    text = render_card(manifest, builds)
    path = out or cache_dir() / "zoos" / manifest["key"] / "card.md"
    atomic_write_text(path, text)
    return path


def _member_json_matches(path: Path, weights_sha256: str) -> bool:
    """Whether a member's ``member.json`` reads and names the weights the manifest names."""
    try:
        return json.loads(path.read_text()).get("weights_sha256") == weights_sha256
    except (OSError, ValueError, AttributeError):
        return False


def verify(zoo: str | None) -> int:
    """Re-hash every member of the named zoo (or of every built zoo); 1 if any fails."""
    if zoo is not None and not zoo.strip():
        raise BenchError("the zoo name is empty; give a zoo name or key, or none to verify every built zoo")
    chosen = [find_manifest(zoo)] if zoo else manifests()
    if not chosen:
        print(f"no built zoos in {cache_dir() / 'zoos'}; build one with `dfml-zoo build <zoo>`")
        return 0
    bad = 0
    for manifest in chosen:
        for member in manifest["members"]:
            weights = cache_dir() / "zoo_members" / member["key"] / "weights.pt"
            status = "ok"
            if not weights.is_file():
                status = "MISSING"
            elif sha256_file(weights) != member["weights_sha256"]:
                status = "SHA256 MISMATCH"
            elif not _member_json_matches(weights.parent / "member.json", member["weights_sha256"]):
                status = "MEMBER.JSON MISSING OR UNREADABLE"
            bad += status != "ok"
            print(f"{manifest['name']} member {member['index']:>3} {member['key']}: {status}")
        print(f"{manifest['name']} ({manifest['key']}): {len(manifest['members'])} members checked")
    if bad:
        print(f"{bad} member(s) failed; fix: dfml-zoo build <zoo> --repair", file=sys.stderr)
    return 1 if bad else 0


def export(zoo: str, out: Path) -> None:
    """Write the build of ``zoo`` (key, or a name built in one configuration) to the archive ``out``."""
    from zoos.archive import export_zoo

    header = export_zoo(find_manifest(zoo), out)
    size = out.stat().st_size / 2**20
    print(
        f"exported zoo {header['zoo']} ({header['zoo_key']}), build {header['build'][:12]}: "
        f"{header['members']} members, {size:.1f} MiB -> {out}"
    )


def import_archive(archive: Path, replace: bool) -> None:
    """Verify ``archive`` and put its build into the cache."""
    from zoos.archive import import_zoo

    report = import_zoo(archive, replace)
    print(
        f"imported zoo {report.zoo} ({report.zoo_key}), build {report.build[:12]}: "
        f"{len(report.added)} members added, {len(report.present)} already present, "
        f"{len(report.replaced)} replaced; runs use it when their zoo config and dataset hash to "
        f"the same member keys (the zoo key {report.zoo_key}; dfml-zoo ls lists it)"
    )


def build_numerics(manifest: dict[str, Any]) -> str:
    """``portable``, ``native`` or ``mixed``: how a built zoo's members were trained."""
    modes = {row.get("train_numerics") or "native" for row in manifest["members"]}
    return modes.pop() if len(modes) == 1 else "mixed"


def listing() -> None:
    """Each zoo config, and its built manifests in the cache."""
    built: dict[str, list[dict[str, Any]]] = {}
    for manifest in manifests():
        built.setdefault(manifest["name"], []).append(manifest)
    for name in group_options("zoo"):
        found = built.get(name, [])
        if not found:
            print(f"  {name:<22} not built")
        for i, m in enumerate(found):  # newest first; overrides (a smoke run's n_members) build others
            accs = [r["heldout_acc"] for r in m["members"]]
            state = (
                f"built {m['key']}: {scenario(m)}, {len(m['members'])} members, "
                f"held-out {sum(accs) / len(accs):.1f}% mean, build {manifest_build(m)[:12]} "
                f"({build_numerics(m)})"
            )
            print(f"  {name if i == 0 else '':<22} {state}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    exit_on_sigterm()
    parser = argparse.ArgumentParser(prog="dfml-zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="train the missing members, write manifest and card")
    p_build.add_argument("zoo", help="a zoo config name (dfml-zoo ls lists them)")
    p_build.add_argument("--dataset", help="dataset group option (default: the zoo's own)")
    p_build.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p_build.add_argument("--repair", action="store_true", help="retrain members that fail their sha256")
    p_build.add_argument("--threads", type=int, help="torch intra-op threads")
    p_build.add_argument(
        "--threads-by-arch",
        help="train these architectures' members at other thread counts, e.g. resnet10=2,resnet18=2 "
        "(a member's weights depend on its thread count; results/README.md, 'Zoo builds')",
    )
    p_build.add_argument(
        "--numerics",
        choices=NUMERICS,
        default="native",
        help="portable: train with oneDNN and NNPACK off and MKL's COMPATIBLE branch, so that any x86-64 "
        "CPU with AVX2 trains the same weights at the same thread count (slower; zoos/numerics.py); "
        "native (default): this CPU's fastest kernels",
    )
    p_build.add_argument(
        "--replace-native",
        action="store_true",
        help="with --numerics portable: retrain members cached from a native build (refused otherwise)",
    )
    p_build.add_argument(
        "--expect-build",
        help="fail (exit 2) unless the members' build hash starts with this (the records' zoo_weights)",
    )
    p_build.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. zoo.recipe.epochs=5")
    sub.add_parser("ls", help="zoo configs and what is built")
    p_verify = sub.add_parser("verify", help="re-hash every member's weights")
    p_verify.add_argument("zoo", nargs="?", help="a built zoo's name or key (default: every built zoo)")
    p_card = sub.add_parser("card", help="Markdown summary of a built zoo")
    p_card.add_argument("zoo", help="a built zoo's name or key")
    p_card.add_argument("--out", type=Path, help="write the card here instead of beside the manifest")
    p_export = sub.add_parser("export", help="write a built zoo's exact weights to a verified archive")
    p_export.add_argument(
        "zoo", help="a built zoo's key, or its name (refused when several configurations of it are built)"
    )
    p_export.add_argument(
        "--out", type=Path, required=True, help="archive path ending in .tar, .tar.gz or .tgz"
    )
    p_import = sub.add_parser("import", help="verify an archive and put its build into the cache")
    p_import.add_argument("archive", type=Path, help="a file written by dfml-zoo export")
    p_import.add_argument(
        "--replace", action="store_true", help="replace members of which the cache holds another build"
    )
    args, extra = parser.parse_known_args(argv)  # flags may follow the overrides
    if extra and args.command != "build":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    flags = [item for item in extra if item.startswith("-")]
    if flags:  # a mistyped flag would otherwise reach Hydra as an override (a traceback)
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    try:
        if args.command == "build":
            if args.replace_native and args.numerics != "portable":
                raise BenchError("--replace-native applies to --numerics portable builds only")
            if args.numerics == "portable":  # before anything multiplies a matrix in this process
                enable_portable_numerics()
            set_threads(args.threads, "--threads")
            threads_by_arch = parse_threads_by_arch(args.threads_by_arch)
            if args.expect_build is not None:  # a malformed value is refused before any training
                check_build_prefix(args.expect_build)
            build(
                args.zoo,
                args.dataset,
                args.device,
                args.repair,
                [*args.overrides, *extra],
                threads_by_arch,
                args.expect_build,
                args.numerics,
                args.replace_native,
            )
        elif args.command == "ls":
            listing()
        elif args.command == "verify":
            return verify(args.zoo)
        elif args.command == "export":
            check_out_path(args.out)
            try:
                export(args.zoo, args.out)
            except OSError as error:  # e.g. a folder that refuses new files (/proc)
                raise BenchError(f"cannot write {str(args.out)!r}: {error.strerror}") from None
        elif args.command == "import":
            import_archive(args.archive, args.replace)
        else:
            if args.out is not None:
                check_out_path(args.out)
            try:
                path = write_card(find_manifest(args.zoo), args.out)
            except OSError as error:
                raise BenchError(f"cannot write {str(args.out)!r}: {error.strerror}") from None
            print(path.read_text(), end="")
    except BenchError as error:
        print(f"dfml-zoo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        raise interrupted("dfml-zoo") from None
    return 0
