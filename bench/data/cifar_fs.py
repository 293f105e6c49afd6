"""CIFAR-FS: CIFAR-100 with 64 / 16 / 20 meta-train / val / test classes.

Split: Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable closed-form
solvers", ICLR 2019 (arXiv 1805.08136); the class lists are torchmeta's ([superclass, class] pairs)
in ``bench/data/splits/cifar_fs``. Every image of a listed class is used (500 train + 100 test).

On disk (``layout=auto`` takes the first one found in ``root``):

- ``pickle``, the CIFAR-100 python version (what torchvision's ``CIFAR100`` reads; ``download=true``
  fetches it)::

      <root>/cifar-100-python/{train, test, meta}       (or the three files directly in <root>)

  ``train``/``test``: pickled dicts with ``data`` uint8 (N, 3072) = R, G, B planes of 32x32 row-major,
  ``fine_labels``, ``coarse_labels``, ``filenames``; ``meta``: ``fine_label_names``,
  ``coarse_label_names``.
- ``folders``, the layout of the PURER reference code::

      <root>/meta_train/<class>/*.png, <root>/meta_val/<class>/*.png, <root>/meta_test/<class>/*.png

Images of a class are in sorted file-name order, stored (N, 3, S, S) (resized if ``image_size`` is
not 32). Normalisation: CIFAR-100 mean/std as in PURER (purer.md section 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import DATASETS
from bench.data import _common as common
from bench.data.base import SPLITS, ImageClassDataset
from bench.errors import BenchError

TREE = (
    "<root>/cifar-100-python/{train,test,meta} (CIFAR-100 python version) "
    "or <root>/meta_{train,val,test}/<class>/*.png"
)
HINT = (
    "set dataset.root (or DFML_DATA), pass download=true to fetch CIFAR-100 with torchvision, or get "
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into the root"
)
MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
FOLDERS = {"train": "meta_train", "val": "meta_val", "test": "meta_test"}


def _locate(root: Path, layout: str) -> tuple[str, Path]:
    """(layout, folder holding it) for ``layout`` auto/pickle/folders."""
    if layout in ("auto", "pickle"):
        for base in (root / "cifar-100-python", root):
            if all((base / name).is_file() for name in ("train", "test", "meta")):
                return "pickle", base
    if layout in ("auto", "folders") and all((root / f).is_dir() for f in FOLDERS.values()):
        return "folders", root
    if layout in ("auto", "pickle"):
        for base in (root / "cifar-100-python", root):
            common.refuse_partial("cifar_fs", base, ["train", "test", "meta"], Path.is_file)
    if layout in ("auto", "folders"):
        common.refuse_partial("cifar_fs", root, list(FOLDERS.values()), Path.is_dir)
    raise common.missing_root("cifar_fs", root, TREE, HINT)


def _class_lists(split_dir: str | None) -> tuple[dict[str, list[str]], dict[str, str], dict[str, str]]:
    """Split -> class names, class -> superclass, and the list files' sha256."""
    lists, hashes = common.read_split_files("cifar_fs", split_dir)
    names = {split: sorted(str(pair[1]) for pair in lists[split]) for split in SPLITS}
    return names, {str(pair[1]): str(pair[0]) for s in SPLITS for pair in lists[s]}, hashes


def _fine_names(base: Path) -> list[str]:
    meta = common.read_pickle("cifar_fs", base / "meta")
    common.require_keys("cifar_fs", base / "meta", meta, ["fine_label_names"])
    return [common.text(name) for name in meta["fine_label_names"]]


def _pickle_part(base: Path, part: str, n_fine: int) -> tuple[np.ndarray, list[int], list[str]]:
    """(data uint8 (N, 3072), fine labels, file names) of ``train`` or ``test``, checked."""
    path = base / part
    entry = common.read_pickle("cifar_fs", path)
    common.require_keys("cifar_fs", path, entry, ["data", "fine_labels", "filenames"])
    data = np.asarray(entry["data"])
    labels, files = [int(v) for v in entry["fine_labels"]], [common.text(v) for v in entry["filenames"]]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise BenchError(f"cifar_fs: {path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if not len(labels) == len(files) == data.shape[0] or any(not 0 <= v < n_fine for v in labels):
        raise BenchError(f"cifar_fs: {path}: {data.shape[0]} rows but inconsistent labels/filenames")
    return data, labels, files


def _from_pickles(base: Path, wanted: set[str], size: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Class names, images uint8 (N, 3, S, S) and labels (N,) of the ``wanted`` classes."""
    fine = _fine_names(base)
    per_class: dict[str, list[tuple[str, np.ndarray]]] = {name: [] for name in wanted}
    for part in ("train", "test"):
        data, labels, files = _pickle_part(base, part, len(fine))
        for row, (label, filename) in enumerate(zip(labels, files, strict=True)):
            if fine[label] in wanted:
                per_class[fine[label]].append((filename, data[row]))
    empty = sorted(name for name, rows in per_class.items() if not rows)
    if empty:
        raise BenchError(f"cifar_fs: no images of class(es) {', '.join(empty[:8])} in {base}")
    names, rows, labels = common.class_table({n: sorted(v, key=lambda r: r[0]) for n, v in per_class.items()})
    images = torch.from_numpy(np.stack([row for _, row in rows]).reshape(-1, 3, 32, 32))
    return names, common.resize_uint8(images, size), labels


def _from_folders(root: Path, wanted: dict[str, list[str]], size: int) -> tuple[list[str], Any, Any]:
    """Class names, images uint8 (N, 3, S, S) and labels (N,) from ``meta_*/<class>/*.png``."""
    per_class = {}
    for split in SPLITS:
        for name in wanted[split]:
            files = common.list_files(root / FOLDERS[split] / name, (".png", ".jpg", ".jpeg"))
            if not files:
                raise BenchError(f"cifar_fs: no images in {root / FOLDERS[split] / name}")
            per_class[name] = [(str(path), path) for path in files]
    names, items, labels = common.class_table(per_class)
    pixels = common.decode_all("cifar_fs", items, size, "RGB")
    return names, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), labels


def _plan(root: str, layout: str, split_dir: str | None) -> tuple[str, Path, dict[str, list[str]], dict]:
    """Locate the data and check that every listed class is there (cheap: no image is read)."""
    found, base = _locate(common.absolute_root(root), layout)
    names, superclass, hashes = _class_lists(split_dir)
    if found == "pickle":
        common.check_classes("cifar_fs", names, set(_fine_names(base)), str(base / "meta"))
    else:
        for split in SPLITS:
            folder = base / FOLDERS[split]
            present = {p.name for p in folder.iterdir() if p.is_dir()}
            common.check_classes("cifar_fs", {split: names[split]}, present, str(folder))
    return found, base, names, {"superclass": superclass, "lists": hashes}


def _files(found: str, base: Path) -> list[Path]:
    if found == "pickle":
        return [base / name for name in ("train", "test", "meta")]
    return [
        f for folder in FOLDERS.values() for f in common.list_files(base / folder, (".png", ".jpg", ".jpeg"))
    ]


@DATASETS.register("cifar_fs")
def load_cifar_fs(
    root: str,
    image_size: int = 32,
    layout: str = "auto",
    split_dir: str | None = None,
    download: bool = False,
    cache: str | None = None,
) -> ImageClassDataset:
    """Load CIFAR-FS from ``root``: decoded once, then read from the cache.

    Args:
        root: folder holding ``cifar-100-python/`` (or its three files) or ``meta_{train,val,test}/``.
        image_size: side S of the square images (8 to 512; 32 is the published size).
        layout: ``auto``, ``pickle`` or ``folders`` (see the module docstring).
        split_dir: folder with other ``{train,val,test}.json`` lists ([superclass, class] pairs).
        download: first fetch CIFAR-100 (python version) with torchvision into ``root``.
        cache: cache root; default :func:`bench.paths.cache_dir`.

    Returns:
        An :class:`ImageClassDataset` with ``images`` uint8 (N, 3, S, S) and ``labels`` (N,).
    """
    common.check_int("cifar_fs", "image_size", image_size, 8, 512)
    common.check_choice("cifar_fs", "layout", layout, ("auto", "pickle", "folders"))
    if download:
        _download(common.absolute_root(root))
    found, base, wanted, facts = _plan(root, layout, split_dir)
    spec = {
        "dataset": "cifar_fs",
        "loader_version": common.LOADER_VERSION,
        "layout": found,
        "root_fingerprint": common.fingerprint(_files(found, base), base),
        "split_lists": facts["lists"],
        "image_size": image_size,
    }

    def build() -> common.Built:
        if found == "pickle":
            names, images, labels = _from_pickles(base, {n for s in SPLITS for n in wanted[s]}, image_size)
        else:
            names, images, labels = _from_folders(base, wanted, image_size)
        return (
            images,
            labels,
            {
                "root": str(base),
                "layout": found,
                "class_names": names,
                "splits": common.index_splits(names, wanted, "cifar_fs"),
                "split_rule": {
                    "rule": "class lists",
                    "paper": "Bertinetto et al., ICLR 2019, arXiv 1805.08136",
                    **facts,
                },
                "channels": 3,
                "normalization": {
                    "rule": "CIFAR-100 constants (PURER)",
                    "mean": list(MEAN),
                    "std": list(STD),
                },
            },
        )

    return common.load_or_build("cifar_fs", spec, cache, build)


def _download(root: Path) -> None:
    from torchvision.datasets import CIFAR100

    try:
        CIFAR100(str(root), train=True, download=True)
    except (OSError, RuntimeError) as error:
        raise BenchError(f"cifar_fs: download into {root} failed ({error}); {HINT}") from error


def inspect_root(
    root: str, layout: str = "auto", split_dir: str | None = None, **_: Any
) -> common.RootStatus:
    """Whether ``root`` holds CIFAR-FS, and the classes per split (reads only ``meta``/folder names)."""

    def plan() -> tuple[Path, dict[str, list[str]], str]:
        found, base, names, _ = _plan(root, layout, split_dir)
        return base, names, f"{found} layout"

    return common.root_status(root, plan)
