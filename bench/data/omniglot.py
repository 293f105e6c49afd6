"""Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015) read from torchvision's layout.

On disk, in ``root`` or ``root/omniglot-py`` (where ``download=true`` puts it)::

    images_background/<Alphabet>/<characterNN>/<id>_<drawer>.png    30 alphabets, 964 characters
    images_evaluation/<Alphabet>/<characterNN>/<id>_<drawer>.png    20 alphabets, 659 characters

Any ``images_background*`` / ``images_evaluation*`` folder, or zip holding that folder (read
directly), is a source; a folder wins over a zip of the same name. So the two subsets
``images_background_small{1,2}.zip`` of brendenlake/omniglot work too: Greek and Latin occur in
both, and images are deduplicated by (alphabet, character, drawer). A class is
``<Alphabet>/<characterNN>``; its images are ordered by drawer.

Split (``split``):
- ``vinyals``: Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016
  (arXiv 1606.04080): 1028 / 172 / 423 characters, torchmeta's lists in
  ``bench/data/splits/omniglot``; every listed character must be on disk.
- ``alphabets`` (partial sets): alphabets shuffled with ``derive_seed(seed, "omniglot", "split")``;
  the first ``max(1, round(test_fraction * A))`` go to meta-test, the next
  ``max(1, round(val_fraction * A))`` to meta-val, the rest to meta-train, so meta-test alphabets
  are never seen in meta-train. The chosen alphabets are in the manifest.
- ``auto``: ``vinyals`` when an ``images_evaluation`` source is present, else ``alphabets``.

``rotations`` adds each character rotated by 90, 180 and 270 degrees (counter-clockwise) as three
new classes ``<class>/rot090`` ... in the same split (the protocol of Santoro et al. 2016 and
Vinyals et al. 2016). Images: grey, inverted to white ink on black if ``invert`` (as ``glyphs``),
bilinear-resized to ``image_size``, stored (N, 1, S, S); ``channels=3`` replicates grey.
Normalisation: meta-train pixel mean/std (values / 255, 4 decimals).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from bench.data import DATASETS
from bench.data import _common as common
from bench.data.base import SPLITS, ImageClassDataset
from bench.errors import BenchError

TREE = (
    "<root>/images_background/<Alphabet>/<characterNN>/*.png (+ optional images_evaluation/), "
    "or images_background*.zip / images_evaluation.zip in <root>"
)
HINT = (
    "set dataset.root (or DFML_OMNIGLOT_ROOT), pass download=true to fetch it with torchvision, "
    "or get the zips from https://github.com/brendenlake/omniglot/tree/master/python"
)
MIN_SPLIT_CLASSES = 5
ROTATIONS = ("", "/rot090", "/rot180", "/rot270")
_DRAWER = re.compile(r"_(\d+)\.png$")


def _kind(source: Path) -> str:
    return "evaluation" if source.name.startswith("images_evaluation") else "background"


def _find_sources(root: Path, downloaded: bool = False) -> tuple[Path, list[Path]]:
    """(base folder, sorted source folders/zips) in ``root`` or ``root/omniglot-py``.

    ``root`` is searched first, unless ``downloaded`` (``download=true`` just put the full set in
    ``root/omniglot-py``: small zips beside it in ``root`` must not shadow what was asked for).
    """
    order = (root / "omniglot-py", root) if downloaded else (root, root / "omniglot-py")
    for base in order:
        if not base.is_dir():
            continue
        entries = [
            p for p in sorted(base.iterdir()) if p.name.startswith(("images_background", "images_evaluation"))
        ]
        folders = {p.name for p in entries if p.is_dir()}
        chosen = [p for p in entries if p.is_dir() or (p.suffix == ".zip" and p.stem not in folders)]
        if chosen:
            return base, chosen
    raise common.missing_root("omniglot", root, TREE, HINT)


def _members(source: Path) -> list[str]:
    """Sorted PNG paths of a source (relative to a folder, or zip member names)."""
    if source.is_dir():
        return [p.relative_to(source).as_posix() for p in common.list_files(source, (".png",))]
    try:
        with zipfile.ZipFile(source) as archive:
            return sorted(name for name in archive.namelist() if name.endswith(".png"))
    except (zipfile.BadZipFile, OSError) as error:
        raise BenchError(f"omniglot: cannot read zip {source} ({error})") from error


def _scan(sources: list[Path]) -> tuple[dict[str, list[tuple[Path, str]]], int]:
    """Class -> [(source, member)] ordered by drawer, deduplicated by (alphabet, character, drawer)."""
    per_class: dict[str, dict[str, tuple[Path, str]]] = {}
    duplicates = 0
    for source in sources:
        for parts in (member.split("/") for member in _members(source)):
            if len(parts) >= 3:
                match = _DRAWER.search(parts[-1])
                drawers = per_class.setdefault(f"{parts[-3]}/{parts[-2]}", {})
                duplicates += (match.group(1) if match else parts[-1]) in drawers
                drawers.setdefault(match.group(1) if match else parts[-1], (source, "/".join(parts)))
    if not per_class:
        raise BenchError(f"omniglot: no <Alphabet>/<character>/*.png in {[str(s) for s in sources]}; {TREE}")
    return {name: [drawers[d] for d in sorted(drawers)] for name, drawers in per_class.items()}, duplicates


def _split_mode(split: str, sources: list[Path]) -> str:
    if split != "auto":
        return split
    return "vinyals" if any(_kind(s) == "evaluation" for s in sources) else "alphabets"


def _split(
    present: list[str], mode: str, opts: dict[str, Any]
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Split -> base class names, and the split rule for the manifest."""
    if mode == "vinyals":
        lists, hashes = common.read_split_files("omniglot", opts["split_dir"])
        wanted = {
            s: sorted(f"{a}/{c}" for kind in lists[s].values() for a, chars in kind.items() for c in chars)
            for s in SPLITS
        }
        common.check_classes("omniglot", wanted, set(present), "the Omniglot sources")
        return wanted, {"rule": "vinyals", "paper": "Vinyals et al. 2016, arXiv 1606.04080", "lists": hashes}
    fractions = opts["val_fraction"], opts["test_fraction"]
    names, alphabets = common.group_split("omniglot", present, opts["seed"], *fractions, MIN_SPLIT_CLASSES)
    rule = {
        "rule": "alphabets: seeded shuffle, round(test_fraction*A) to test, round(val_fraction*A) to val",
        "seed": opts["seed"],
        "seed_names": ["omniglot", "split"],
        "val_fraction": fractions[0],
        "test_fraction": fractions[1],
        "alphabets": alphabets,
    }
    return names, rule


def _rotate(names: list[str], images: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any, Any]:
    """Each class plus its 90/180/270-degree rotations: (names, images (4N, 1, S, S), labels (4N,))."""
    variants = {name + suffix: [(c, k)] for c, name in enumerate(names) for k, suffix in enumerate(ROTATIONS)}
    new_names, pairs, _ = common.class_table(variants)
    blocks = [torch.rot90(images[labels == c], k, dims=(2, 3)) for c, k in pairs]
    sizes = torch.tensor([block.shape[0] for block in blocks])
    return new_names, torch.cat(blocks), torch.arange(len(new_names)).repeat_interleave(sizes)


def _build(base: Path, sources: list[Path], mode: str, opts: dict[str, Any]) -> common.Built:
    """Scan, split, decode (and rotate): images uint8 (N, 1, S, S), labels (N,), manifest facts."""
    table, duplicates = _scan(sources)
    split_names, rule = _split(sorted(table), mode, opts)
    used = {name: table[name] for split in SPLITS for name in split_names[split]}
    names, entries, labels = common.class_table(used)
    pixels = common.decode_all(
        "omniglot", common.read_members("omniglot", entries), opts["image_size"], "L", opts["invert"]
    )
    images = torch.from_numpy(pixels).unsqueeze(1)
    if opts["rotations"]:
        names, images, labels = _rotate(names, images, labels)
        split_names = {s: [n + suffix for n in split_names[s] for suffix in ROTATIONS] for s in SPLITS}
    splits = common.index_splits(names, split_names, "omniglot")
    mean, std = common.pixel_stats(images, labels, splits["train"])
    channels = opts["channels"]
    facts = {
        "root": str(base),
        "sources": [{"name": s.name, "kind": _kind(s)} for s in sources],
        "class_names": names,
        "splits": splits,
        "split_rule": rule,
        "channels": channels,
        "normalization": {
            "rule": "meta-train pixel mean/std (/255)",
            "mean": [mean] * channels,
            "std": [std] * channels,
        },
        "dedupe": {"key": "(alphabet, character, drawer)", "duplicates_dropped": duplicates},
        "images_per_class": sorted({len(v) for v in used.values()}),
        "characters_on_disk": {
            k: sum(_kind(v[0][0]) == k for v in table.values()) for k in ("background", "evaluation")
        },
    }
    return images, labels, facts


@DATASETS.register("omniglot")
def load_omniglot(
    root: str,
    image_size: int = 32,
    channels: int = 3,
    invert: bool = True,
    rotations: bool = False,
    split: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.125,
    test_fraction: float = 0.25,
    split_dir: str | None = None,
    download: bool = False,
    cache: str | None = None,
) -> ImageClassDataset:
    """Load Omniglot from ``root``: decoded once, then read from the cache.

    Args:
        root: folder with ``images_background*`` / ``images_evaluation*`` folders or zips (or their
            ``omniglot-py`` parent); a relative path is relative to the current directory.
        image_size: side S of the square images (8 to 512; 28, 32 and 84 are usual).
        channels: channels returned by ``normalize`` (1 or 3; storage is 1 channel).
        invert: white ink on black (True) or the published black on white (False).
        rotations: add the 90/180/270-degree rotations of each character as classes.
        split: ``auto``, ``vinyals`` or ``alphabets`` (see the module docstring).
        seed: seed of the ``alphabets`` split.
        val_fraction: share of alphabets in meta-val (``alphabets`` split).
        test_fraction: share of alphabets in meta-test (``alphabets`` split).
        split_dir: folder with other ``{train,val,test}.json`` lists for the ``vinyals`` split.
        download: first fetch both sets with torchvision into ``root/omniglot-py``.
        cache: cache root; default :func:`bench.paths.cache_dir`.

    Returns:
        An :class:`ImageClassDataset` with ``images`` uint8 (N, 1, S, S) and ``labels`` (N,).
    """
    opts = {k: v for k, v in locals().items() if k not in ("root", "split", "download", "cache")}
    _validate(opts, split)
    path = common.absolute_root(root)
    if download:
        _download(path)
    base, sources = _find_sources(path, downloaded=download)
    mode = _split_mode(split, sources)
    files = [f for s in sources for f in (common.list_files(s, (".png",)) if s.is_dir() else [s])]
    spec = {
        "dataset": "omniglot",
        "loader_version": common.LOADER_VERSION,
        "root_fingerprint": common.fingerprint(files, base),
        "split_mode": mode,
        "split_lists": common.read_split_files("omniglot", split_dir)[1] if mode == "vinyals" else None,
        **{k: v for k, v in opts.items() if k != "split_dir"},
    }
    return common.load_or_build("omniglot", spec, cache, lambda: _build(base, sources, mode, opts))


def _validate(opts: dict[str, Any], split: str) -> None:
    common.check_int("omniglot", "image_size", opts["image_size"], 8, 512)
    common.check_int("omniglot", "seed", opts["seed"], 0, 2**63 - 1)
    common.check_choice("omniglot", "split", split, ("auto", "vinyals", "alphabets"))
    for key, valid in (("channels", (1, 3)), ("invert", (True, False)), ("rotations", (True, False))):
        common.check_choice("omniglot", key, opts[key], valid)
    for key in ("val_fraction", "test_fraction"):
        common.check_fraction("omniglot", key, opts[key])


def _download(root: Path) -> None:
    from torchvision.datasets import Omniglot

    for background in (True, False):
        try:
            Omniglot(str(root), background=background, download=True)
        except (OSError, RuntimeError) as error:
            raise BenchError(
                f"omniglot: download into {root / 'omniglot-py'} failed ({error}); {HINT}"
            ) from error


def inspect_root(
    root: str, split: str = "auto", rotations: bool = False, **options: Any
) -> common.RootStatus:
    """Whether ``root`` holds Omniglot, and the classes per split the loader would use (no decoding)."""
    opts = {"seed": 0, "val_fraction": 0.125, "test_fraction": 0.25, "split_dir": None}
    opts.update({k: v for k, v in options.items() if k in opts})

    def plan() -> tuple[Path, dict[str, list[str]], str]:
        base, sources = _find_sources(common.absolute_root(root))
        mode = _split_mode(split, sources)
        names, _ = _split(sorted(_scan(sources)[0]), mode, opts)
        if rotations:
            names = {s: [n + suffix for n in names[s] for suffix in ROTATIONS] for s in SPLITS}
        return base, names, f"{mode} split"

    return common.root_status(root, plan)
