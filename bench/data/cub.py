"""CUB-200-2011: 200 bird species, 11,788 images; 100 / 50 / 50 meta-train / val / test classes.

Dataset: Wah, Branson, Welinder, Perona & Belongie, "The Caltech-UCSD Birds-200-2011 Dataset",
Caltech tech report CNS-TR-2011-001. Split: the class folders sorted by name, index i:
``i % 2 == 0`` train, ``i % 4 == 1`` val, ``i % 4 == 3`` test (Chen et al., "A Closer Look at
Few-shot Classification", ICLR 2019, arXiv 1904.04232; torchmeta's lists in ``bench/data/splits/cub``
are the same classes).

On disk::

    <root>/CUB_200_2011/images/<NNN.Name>/*.jpg        (or <root>/images/<NNN.Name>/*.jpg)

``split=lists`` (default) uses the shipped lists (or ``split_dir``): every listed class must be on
disk. ``split=sorted_index`` applies the index rule to the class folders found (for subsets).
Images of a class are in sorted file-name order, converted to RGB (a few are grey), resized to
``image_size`` x ``image_size`` (bilinear, aspect ratio not kept, as in PURER), stored (N, 3, S, S).
Normalisation: ImageNet mean/std (purer.md section 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.data import DATASETS
from bench.data import _common as common
from bench.data.base import SPLITS, ImageClassDataset
from bench.errors import BenchError

TREE = "<root>/CUB_200_2011/images/<NNN.Name>/*.jpg"
HINT = (
    "set dataset.root (or DFML_DATA); there is no download=true: get CUB_200_2011.tgz from "
    "https://data.caltech.edu/records/65de6-vp158 and extract it into the root"
)
SUFFIXES = (".jpg", ".jpeg", ".png")
RULES = {"train": (2, 0), "val": (4, 1), "test": (4, 3)}  # split: (modulus, remainder) of the index


def _images_dir(root: Path) -> Path:
    for folder in (root / "CUB_200_2011" / "images", root / "images"):
        if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
            return folder
    raise common.missing_root("cub", root, TREE, HINT)


def _plan(root: str, split: str, split_dir: str | None) -> tuple[Path, dict[str, list[str]], dict[str, Any]]:
    """(images folder, split -> class folder names, split rule); checks the classes are on disk."""
    folder = _images_dir(common.absolute_root(root))
    present = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if split == "sorted_index":
        names = {s: [n for i, n in enumerate(present) if i % RULES[s][0] == RULES[s][1]] for s in SPLITS}
        return (
            folder,
            names,
            {"rule": "sorted_index: i%2==0 train, i%4==1 val, i%4==3 test", "classes": present},
        )
    lists, hashes = common.read_split_files("cub", split_dir)
    names = {s: sorted(str(name) for name in lists[s]) for s in SPLITS}
    common.check_classes("cub", names, set(present), str(folder))
    return folder, names, {"rule": "class lists (= sorted_index on all 200 classes)", "lists": hashes}


@DATASETS.register("cub")
def load_cub(
    root: str,
    image_size: int = 84,
    split: str = "lists",
    split_dir: str | None = None,
    cache: str | None = None,
) -> ImageClassDataset:
    """Load CUB-200-2011 from ``root``: decoded once, then read from the cache.

    Args:
        root: folder holding ``CUB_200_2011/`` (or its ``images/`` folder directly).
        image_size: side S of the square images (8 to 512; 84 in PURER).
        split: ``lists`` or ``sorted_index`` (see the module docstring).
        split_dir: folder with other ``{train,val,test}.json`` lists of class folder names.
        cache: cache root; default :func:`bench.paths.cache_dir`.

    Returns:
        An :class:`ImageClassDataset` with ``images`` uint8 (N, 3, S, S) and ``labels`` (N,).
    """
    common.check_int("cub", "image_size", image_size, 8, 512)
    common.check_choice("cub", "split", split, ("lists", "sorted_index"))
    folder, wanted, rule = _plan(root, split, split_dir)
    used = [name for s in SPLITS for name in wanted[s]]
    files = {name: common.list_files(folder / name, SUFFIXES) for name in used}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise BenchError(f"cub: no images in class folder(s) {', '.join(empty[:8])} of {folder}")
    spec = {
        "dataset": "cub",
        "loader_version": common.LOADER_VERSION,
        "root_fingerprint": common.fingerprint([p for paths in files.values() for p in paths], folder),
        "split": split,
        "split_rule": rule,
        "image_size": image_size,
    }

    def build() -> common.Built:
        names, items, labels = common.class_table(
            {n: [(str(p), p) for p in paths] for n, paths in files.items()}
        )
        pixels = common.decode_all("cub", items, image_size, "RGB")
        return (
            torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
            labels,
            {
                "root": str(folder),
                "class_names": names,
                "splits": common.index_splits(names, wanted, "cub"),
                "split_rule": {**rule, "paper": "Chen et al., ICLR 2019, arXiv 1904.04232"},
                "channels": 3,
                "normalization": {
                    "rule": "ImageNet",
                    "mean": list(common.IMAGENET_MEAN),
                    "std": list(common.IMAGENET_STD),
                },
            },
        )

    return common.load_or_build("cub", spec, cache, build)


def inspect_root(
    root: str, split: str = "lists", split_dir: str | None = None, **_: Any
) -> common.RootStatus:
    """Whether ``root`` holds CUB-200-2011, and the classes per split (reads only folder names)."""

    def plan() -> tuple[Path, dict[str, list[str]], str]:
        folder, names, _ = _plan(root, split, split_dir)
        return folder, names, f"{split} split"

    return common.root_status(root, plan)
