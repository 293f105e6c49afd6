"""MiniImageNet: 100 ImageNet classes x 600 images, 64 / 16 / 20 meta-train / val / test classes.

Split: Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017; the class
lists (the sorted labels of twitter/meta-learning-lstm's CSVs) are in
``bench/data/splits/mini_imagenet``. The dataset: Vinyals et al., NeurIPS 2016 (arXiv 1606.04080).

On disk (``layout=auto`` takes the first one found in ``root``):

- ``csv``, the Ravi–Larochelle release (its script writes 84x84 JPEGs)::

      <root>/images/<filename>.jpg
      <root>/{train,val,test}.csv        header "filename,label", e.g. n0153282900000005.jpg,n01532829

- ``pickle``, the common cache format::

      <root>/mini-imagenet-cache-{train,val,test}.pkl   dict: image_data uint8 (N, 84, 84, 3),
                                                         class_dict {label: [row indices]}

Every class of a split list must be in that split's CSV or pickle. Images of a class are in sorted
file-name order (CSV) or row order (pickle), resized to ``image_size`` if needed, stored
(N, 3, S, S). Normalisation: ImageNet mean/std (purer.md section 3).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import DATASETS
from bench.data import _common as common
from bench.data.base import SPLITS, ImageClassDataset
from bench.errors import BenchError

TREE = (
    "<root>/images/*.jpg + <root>/{train,val,test}.csv (Ravi & Larochelle), "
    "or <root>/mini-imagenet-cache-{train,val,test}.pkl"
)
HINT = (
    "there is no download=true (ImageNet terms): build it from ImageNet with the script of "
    "https://github.com/twitter/meta-learning-lstm, or put the mini-imagenet-cache pickles there"
)
PICKLE = "mini-imagenet-cache-{}.pkl"


def _locate(root: Path, layout: str) -> tuple[str, Path]:
    if layout in ("auto", "csv") and (root / "images").is_dir():
        if all((root / f"{split}.csv").is_file() for split in SPLITS):
            return "csv", root
    if layout in ("auto", "pickle") and all((root / PICKLE.format(split)).is_file() for split in SPLITS):
        return "pickle", root
    if layout in ("auto", "csv") and (root / "images").is_dir():
        common.refuse_partial("mini_imagenet", root, [f"{split}.csv" for split in SPLITS], Path.is_file)
    if layout in ("auto", "pickle"):
        common.refuse_partial("mini_imagenet", root, [PICKLE.format(split) for split in SPLITS], Path.is_file)
    raise common.missing_root("mini_imagenet", root, TREE, HINT)


def _read_csv(path: Path) -> dict[str, list[str]]:
    """Label -> sorted file names of one Ravi–Larochelle CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BenchError(f"mini_imagenet: cannot read {path} ({error})") from error
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise BenchError(f"mini_imagenet: {path} must have a 'filename,label' header and rows")
    per_class: dict[str, list[str]] = {}
    for row in rows:
        per_class.setdefault(row["label"], []).append(row["filename"])
    return {label: sorted(files) for label, files in per_class.items()}


def _csv_items(base: Path, wanted: dict[str, list[str]]) -> dict[str, list[tuple[str, Path]]]:
    """Class -> [(name, path)] of the wanted classes; every listed image must exist."""
    per_class = {}
    for split in SPLITS:
        table = _read_csv(base / f"{split}.csv")
        common.check_classes("mini_imagenet", {split: wanted[split]}, set(table), str(base / f"{split}.csv"))
        for label in wanted[split]:
            per_class[label] = [(str(base / "images" / f), base / "images" / f) for f in table[label]]
    missing = [name for items in per_class.values() for name, path in items if not path.is_file()]
    if missing:
        raise BenchError(
            f"mini_imagenet: {len(missing)} image(s) listed in the CSVs are missing: {missing[:5]}"
        )
    return per_class


def _pickle_split(path: Path, labels: list[str], size: int) -> dict[str, torch.Tensor]:
    """Label -> uint8 images (600, 3, S, S) of one ``mini-imagenet-cache-<split>.pkl``."""
    entry = common.read_pickle("mini_imagenet", path)
    common.require_keys("mini_imagenet", path, entry, ["image_data", "class_dict"])
    data = np.asarray(entry["image_data"])
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        raise BenchError(
            f"mini_imagenet: {path}: image_data is {data.dtype} {data.shape}, expected (N, H, W, 3)"
        )
    rows = {common.text(k): sorted(int(i) for i in v) for k, v in dict(entry["class_dict"]).items()}
    common.check_classes("mini_imagenet", {"split": labels}, set(rows), f"class_dict of {path}")
    if any(not 0 <= i < data.shape[0] for label in labels for i in rows[label]):
        raise BenchError(f"mini_imagenet: {path}: class_dict holds row indices outside [0, {data.shape[0]})")
    repeated = sorted(i for i, n in Counter(i for label in labels for i in rows[label]).items() if n > 1)
    if repeated:
        raise BenchError(
            f"mini_imagenet: {path}: class_dict lists row(s) {repeated[:8]} more than once (within a class "
            "or in two classes); each image must belong to exactly one class, once"
        )
    blocks = {label: torch.from_numpy(data[rows[label]]).permute(0, 3, 1, 2) for label in labels}
    return {label: common.resize_uint8(block, size) for label, block in blocks.items()}


def _build(found: str, base: Path, wanted: dict[str, list[str]], size: int) -> tuple[list[str], Any, Any]:
    """Class names, images uint8 (N, 3, S, S) and labels (N,)."""
    if found == "csv":
        names, items, labels = common.class_table(_csv_items(base, wanted))
        pixels = common.decode_all("mini_imagenet", items, size, "RGB")
        return names, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), labels
    blocks: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        blocks.update(_pickle_split(base / PICKLE.format(split), wanted[split], size))
    names = sorted(blocks)
    sizes = torch.tensor([blocks[name].shape[0] for name in names])
    images = torch.cat([blocks[name] for name in names]).contiguous()
    return names, images, torch.arange(len(names)).repeat_interleave(sizes)


def _files(found: str, base: Path) -> list[Path]:
    if found == "pickle":
        return [base / PICKLE.format(split) for split in SPLITS]
    return [base / f"{split}.csv" for split in SPLITS] + common.list_files(base / "images", (".jpg", ".jpeg"))


@DATASETS.register("mini_imagenet")
def load_mini_imagenet(
    root: str,
    image_size: int = 84,
    layout: str = "auto",
    split_dir: str | None = None,
    cache: str | None = None,
) -> ImageClassDataset:
    """Load MiniImageNet from ``root``: decoded once, then read from the cache.

    Args:
        root: folder holding ``images/`` + the three CSVs, or the three ``mini-imagenet-cache`` pickles.
        image_size: side S of the square images (8 to 512; 84 is the published size).
        layout: ``auto``, ``csv`` or ``pickle`` (see the module docstring).
        split_dir: folder with other ``{train,val,test}.json`` class lists (lists of labels).
        cache: cache root; default :func:`bench.paths.cache_dir`.

    Returns:
        An :class:`ImageClassDataset` with ``images`` uint8 (N, 3, S, S) and ``labels`` (N,).
    """
    common.check_int("mini_imagenet", "image_size", image_size, 8, 512)
    common.check_choice("mini_imagenet", "layout", layout, ("auto", "csv", "pickle"))
    found, base = _locate(common.absolute_root(root), layout)
    lists, hashes = common.read_split_files("mini_imagenet", split_dir)
    wanted = {split: sorted(str(label) for label in lists[split]) for split in SPLITS}
    spec = {
        "dataset": "mini_imagenet",
        "loader_version": common.LOADER_VERSION,
        "layout": found,
        "root_fingerprint": common.fingerprint(_files(found, base), base),
        "split_lists": hashes,
        "image_size": image_size,
    }

    def build() -> common.Built:
        names, images, labels = _build(found, base, wanted, image_size)
        return (
            images,
            labels,
            {
                "root": str(base),
                "layout": found,
                "class_names": names,
                "splits": common.index_splits(names, wanted, "mini_imagenet"),
                "split_rule": {
                    "rule": "class lists",
                    "paper": "Ravi & Larochelle, ICLR 2017",
                    "lists": hashes,
                },
                "channels": 3,
                "normalization": {
                    "rule": "ImageNet",
                    "mean": list(common.IMAGENET_MEAN),
                    "std": list(common.IMAGENET_STD),
                },
            },
        )

    return common.load_or_build("mini_imagenet", spec, cache, build)


def inspect_root(
    root: str, layout: str = "auto", split_dir: str | None = None, **_: Any
) -> common.RootStatus:
    """Whether ``root`` holds MiniImageNet, and the classes per split of the lists (reads no image)."""

    def plan() -> tuple[Path, dict[str, list[str]], str]:
        found, base = _locate(common.absolute_root(root), layout)
        lists, _ = common.read_split_files("mini_imagenet", split_dir)
        if found == "csv":
            for split in SPLITS:
                labels = set(_read_csv(base / f"{split}.csv"))
                common.check_classes(
                    "mini_imagenet", {split: lists[split]}, labels, str(base / f"{split}.csv")
                )
        return base, lists, f"{found} layout"

    return common.root_status(root, plan)
