"""Shared machinery of the real-dataset loaders (omniglot, cifar_fs, mini_imagenet, cub).

Not a loader: the leading underscore keeps the dataset registry from importing it as a plug-in.

- Roots: :func:`absolute_root`, :func:`missing_root` (one line: dataset, path tried, expected tree,
  how to get the data) and :class:`RootStatus` (what ``dfml-ls datasets`` shows).
- Class lists: :func:`read_split_files` reads ``bench/data/splits/<dataset>/{train,val,test}.json``
  (or a user ``split_dir``); :func:`check_classes` lists the first classes missing on disk.
- Decoding: :func:`decode_all` (PIL in a thread pool, progress bar; a corrupt file is an error naming
  it), :func:`read_pickle` (a restricted unpickler: containers, strings, numbers, numpy arrays only).
- Cache: :func:`load_or_build` keeps the decoded tensors in
  ``<cache>/datasets/<name>/<spec_hash>/{data.pt, manifest.json, done}``; the spec holds the root
  fingerprint and every option, and the sha256 of ``data.pt`` is checked on every load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import time
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from bench.atomic import atomic_directory, atomic_write_json, is_done, remove_directory
from bench.data.base import SPLITS, ImageClassDataset
from bench.errors import BenchError
from bench.hashing import canonical_json, sha256_bytes, sha256_file, spec_hash, tensor_sha256
from bench.paths import cache_dir
from bench.progress import progress_options
from bench.seeding import derived_generator

log = logging.getLogger(__name__)

#: Bumped whenever a change alters what a real-dataset loader caches.
LOADER_VERSION = "1"
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Images: PIL bilinear resize (antialiased when shrinking) to a square of the requested side.
RESAMPLE = Image.Resampling.BILINEAR
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)
_PNG_SIGNATURE, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
T = TypeVar("T")
#: What a loader's build function returns: images uint8 (N, C, S, S), labels int64 (N,), manifest facts.
Built = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]


@dataclass(frozen=True)
class RootStatus:
    """What ``dfml-ls datasets`` reports about one configured root."""

    root: Path
    found: bool
    classes_per_split: dict[str, int] | None = None
    detail: str = ""


def absolute_root(root: str | os.PathLike[str]) -> Path:
    """``root`` made absolute (relative paths are relative to the current working directory)."""
    return Path(root).expanduser().resolve()


class MissingRootError(BenchError):
    """The configured root does not hold the dataset (in any accepted layout)."""


def missing_root(dataset: str, tried: Path, tree: str, hint: str) -> MissingRootError:
    """The one-line error for a dataset whose files are not where the config says."""
    return MissingRootError(f"{dataset}: dataset not found at {tried}; expected {tree}; {hint}")


def refuse_partial(dataset: str, base: Path, names: Sequence[str], check: Callable[[Path], bool]) -> None:
    """Raise a BenchError naming the missing ones when some but not all of ``base/<names>`` pass ``check``.

    A half-copied dataset is then reported as such (naming what is missing), not as "not found".
    """
    present = [name for name in names if check(base / name)]
    if present and len(present) < len(names):
        missing = [name for name in names if name not in present]
        raise BenchError(
            f"{dataset}: incomplete dataset at {base}: missing {', '.join(missing)} "
            f"(found {', '.join(present)}); copy the missing file(s) there"
        )


def root_status(root: str, plan: Callable[[], tuple[Path, Mapping[str, Sequence[str]], str]]) -> RootStatus:
    """Run a loader's cheap ``plan()`` -> (base, split -> class names, detail) as a RootStatus."""
    try:
        base, names, detail = plan()
    except MissingRootError:
        return RootStatus(absolute_root(root), False)
    except (BenchError, OSError) as error:
        return RootStatus(absolute_root(root), True, None, str(error))
    return RootStatus(base, True, {split: len(names[split]) for split in SPLITS}, detail)


def check_int(dataset: str, name: str, value: Any, low: int, high: int) -> None:
    """Raise a BenchError unless ``value`` is an int in [low, high] (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BenchError(f"{dataset}: {name}={value!r} is invalid; expected an integer in [{low}, {high}]")


def check_choice(dataset: str, name: str, value: Any, valid: Sequence[Any]) -> None:
    """Raise a BenchError unless ``value`` is one of ``valid``."""
    if isinstance(value, bool) != isinstance(valid[0], bool) or value not in valid:
        raise BenchError(f"{dataset}: {name}={value!r} is invalid; valid: {', '.join(map(str, valid))}")


def check_fraction(dataset: str, name: str, value: Any) -> None:
    """Raise a BenchError unless ``value`` is a number in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise BenchError(f"{dataset}: {name}={value!r} is invalid; expected a number in (0, 1)")


def group_split(
    dataset: str, names: Sequence[str], seed: int, val_fraction: float, test_fraction: float, min_classes: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Group-disjoint split of ``<group>/<rest>`` class names: (split -> names, split -> groups).

    Groups are shuffled with ``derive_seed(seed, dataset, "split")``; the first
    ``max(1, round(test_fraction * G))`` go to test, the next ``max(1, round(val_fraction * G))`` to
    val, the rest to train. Every split must get at least ``min_classes`` classes.
    """
    groups = sorted({name.split("/")[0] for name in names})
    order = torch.randperm(len(groups), generator=derived_generator(seed, dataset, "split")).tolist()
    n_test, n_val = max(1, round(test_fraction * len(groups))), max(1, round(val_fraction * len(groups)))
    if n_test + n_val >= len(groups):
        raise BenchError(f"{dataset}: {len(groups)} groups cannot give disjoint train/val/test splits")
    picked = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    chosen = {split: sorted(groups[i] for i in picked[split]) for split in SPLITS}
    split_names = {split: [n for n in names if n.split("/")[0] in chosen[split]] for split in SPLITS}
    for split in SPLITS:
        if len(split_names[split]) < min_classes:
            raise BenchError(
                f"{dataset}: split {split!r} got {len(split_names[split])} classes (< {min_classes}) from "
                f"{chosen[split]}; change seed or val_fraction/test_fraction"
            )
    return split_names, chosen


def pixel_stats(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> tuple[float, float]:
    """Pixel mean and std (values / 255) over all channels of the rows of ``classes``, 4 decimals."""
    rows = torch.isin(labels, torch.tensor(list(classes), dtype=labels.dtype)).nonzero().flatten()
    hist = torch.zeros(256, dtype=torch.float64)
    for chunk in rows.split(4096):
        hist += torch.bincount(images[chunk].flatten().to(torch.int64), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean = float((values * hist).sum() / hist.sum())
    var = float((values**2 * hist).sum() / hist.sum()) - mean**2
    return round(mean, 4), round(max(var, 0.0) ** 0.5, 4)


def read_split_files(dataset: str, split_dir: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The parsed ``{train,val,test}.json`` class lists and the sha256 of each file.

    Args:
        dataset: the registry key; the shipped lists live in ``bench/data/splits/<dataset>/``.
        split_dir: a directory with other lists of the same format, or None for the shipped ones.
    """
    folder = absolute_root(split_dir) if split_dir is not None else SPLITS_DIR / dataset
    lists, hashes = {}, {}
    for split in SPLITS:
        path = folder / f"{split}.json"
        try:
            lists[split] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise BenchError(f"{dataset}: cannot read class list {path}: {error}") from error
        hashes[split] = sha256_file(path)
    return lists, hashes


def check_classes(
    dataset: str, wanted: Mapping[str, Iterable[str]], available: Collection[str], where: str
) -> None:
    """Raise a BenchError listing the first classes of the split lists that are not ``available``."""
    missing = [name for split in wanted for name in wanted[split] if name not in available]
    if missing:
        raise BenchError(
            f"{dataset}: {len(missing)} class(es) of the split lists are not in {where}; first missing: "
            f"{', '.join(missing[:8])}; fix the data, or pass split_dir=<dir with train/val/test.json>"
        )


def index_splits(
    class_names: Sequence[str], split_names: Mapping[str, Iterable[str]], dataset: str = "dataset"
) -> dict[str, list[int]]:
    """Split -> sorted indices into ``class_names`` of the split's class names.

    Raises a BenchError naming the class when a list names a class twice, or two lists share one
    (a user's ``split_dir``): either would put one class in a task under two labels, or a meta-test
    class into meta-training.
    """
    owner: dict[str, str] = {}
    for split in SPLITS:
        for name in split_names[split]:
            if name in owner:
                where = (
                    f"twice in the {split!r} list"
                    if owner[name] == split
                    else f"in both the {owner[name]!r} and the {split!r} lists"
                )
                raise BenchError(
                    f"{dataset}: class {name!r} is {where}; each class must be in exactly one of "
                    "train / val / test, once (fix the split_dir lists)"
                )
            owner[name] = split
    position = {name: index for index, name in enumerate(class_names)}
    return {split: sorted(position[name] for name in split_names[split]) for split in SPLITS}


def class_table(per_class: Mapping[str, Sequence[T]]) -> tuple[list[str], list[T], torch.Tensor]:
    """Sorted class names, the items in (class, given) order, and int64 labels of shape (N,)."""
    names = sorted(per_class)
    items = [item for name in names for item in per_class[name]]
    sizes = torch.tensor([len(per_class[name]) for name in names], dtype=torch.int64)
    return names, items, torch.arange(len(names), dtype=torch.int64).repeat_interleave(sizes)


def list_files(base: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``base`` (recursive) whose lower-cased suffix is in ``suffixes``, sorted."""
    found = []
    for folder, _, files in os.walk(base):
        found.extend(Path(folder, name) for name in files if name.lower().endswith(suffixes))
    return sorted(found)


def fingerprint(files: Iterable[Path], base: Path) -> str:
    """sha256 of the sorted (path relative to ``base``, size, mtime_ns) of ``files``."""
    rows = []
    for path in files:
        stat = path.stat()
        rows.append([path.relative_to(base).as_posix(), stat.st_size, stat.st_mtime_ns])
    return sha256_bytes(canonical_json(sorted(rows)).encode())


def read_members(dataset: str, entries: Sequence[tuple[Path, str]]) -> list[tuple[str, bytes | Path]]:
    """(display name, bytes or path) of each (folder or zip, member path) entry; a zip is opened once."""
    archives: dict[Path, zipfile.ZipFile] = {}
    items: list[tuple[str, bytes | Path]] = []
    try:
        for source, member in entries:
            if source.is_dir():
                items.append((str(source / member), source / member))
                continue
            try:
                if source not in archives:
                    archives[source] = zipfile.ZipFile(source)
                items.append((f"{source}:{member}", archives[source].read(member)))
            except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
                raise BenchError(f"{dataset}: cannot read {member} from {source} ({error})") from error
    finally:
        for archive in archives.values():
            archive.close()
    return items


def decode_image(
    dataset: str, name: str, source: bytes | Path, size: int, mode: str, invert: bool
) -> np.ndarray:
    """One image file -> uint8 array of shape (size, size) for mode 'L' or (size, size, 3) for 'RGB'."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if data.startswith(_PNG_SIGNATURE) and _PNG_END not in data[-4096:]:
            raise EOFError("PNG file is truncated (no IEND chunk)")
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = image.convert(mode)
    except _DECODE_ERRORS as error:
        raise BenchError(
            f"{dataset}: cannot decode image {name} ({type(error).__name__}: {error})"
        ) from error
    if invert:
        converted = ImageOps.invert(converted)
    if converted.size != (size, size):
        converted = converted.resize((size, size), RESAMPLE)
    return np.asarray(converted, dtype=np.uint8)


def decode_all(
    dataset: str, items: Sequence[tuple[str, bytes | Path]], size: int, mode: str, invert: bool = False
) -> np.ndarray:
    """Decode ``(name, bytes or path)`` items in order: uint8 (N, S, S) ('L') or (N, S, S, 3) ('RGB')."""
    out = np.empty((len(items), size, size, *((3,) if mode == "RGB" else ())), dtype=np.uint8)
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        results = pool.map(lambda item: decode_image(dataset, *item, size, mode, invert), items)
        with tqdm(total=len(items), desc=f"{dataset} decode", unit="img", **progress_options()) as bar:
            for index, array in enumerate(results):
                out[index] = array
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear with antialiasing; no-op at size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunks = [
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for chunk in images.split(4096)
    ]
    return torch.cat(chunks)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        module = module.replace("numpy.core.", "numpy._core.", 1)
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def read_pickle(dataset: str, path: Path) -> dict[str, Any]:
    """A pickled dict (Python 2 or 3, ``latin1`` strings) with its keys decoded to ``str``."""
    try:
        with open(path, "rb") as handle:
            obj = _RestrictedUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise BenchError(
            f"{dataset}: cannot read pickle {path} ({type(error).__name__}: {error}); truncated or corrupt?"
        ) from error
    if not isinstance(obj, dict):
        raise BenchError(f"{dataset}: pickle {path} holds a {type(obj).__name__}, expected a dict")
    return {text(key): value for key, value in obj.items()}


def text(value: Any) -> str:
    """``value`` as str (bytes from Python 2 pickles are decoded as latin-1)."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def require_keys(dataset: str, path: Path, obj: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Raise a BenchError naming ``path`` if ``obj`` lacks any of ``keys``."""
    missing = [key for key in keys if key not in obj]
    if missing:
        raise BenchError(f"{dataset}: {path} lacks key(s) {', '.join(missing)}; has {', '.join(sorted(obj))}")


def content_hash(
    images: torch.Tensor, labels: torch.Tensor, names: Sequence[str], splits: Mapping[str, list[int]]
) -> str:
    """sha256 identity of the images, labels, class names and split."""
    payload = {
        "images": tensor_sha256(images),
        "labels": tensor_sha256(labels),
        "class_names": list(names),
        "splits": dict(splits),
    }
    return sha256_bytes(canonical_json(payload).encode())


def make_dataset(
    name: str, images: torch.Tensor, labels: torch.Tensor, manifest: dict[str, Any]
) -> ImageClassDataset:
    """The :class:`ImageClassDataset` of a manifest (class names, splits, normalisation, channels)."""
    return ImageClassDataset(
        name=name,
        images=images,
        labels=labels,
        class_names=list(manifest["class_names"]),
        splits={split: list(manifest["splits"][split]) for split in SPLITS},
        mean=tuple(manifest["normalization"]["mean"]),
        std=tuple(manifest["normalization"]["std"]),
        channels=int(manifest["channels"]),
        content_hash=manifest["content_hash"],
        manifest=manifest,
    )


DatasetMaker = Callable[[str, torch.Tensor, torch.Tensor, dict[str, Any]], ImageClassDataset]


def load_cache_entry(
    name: str, entry: Path, spec: dict[str, Any], make: DatasetMaker = make_dataset
) -> ImageClassDataset | None:
    """The cached dataset, or None (after a warning and deleting ``entry``) if it is not intact.

    ``make(name, images, labels, manifest)`` builds the dataset from the verified tensors.
    """
    data_path = entry / "data.pt"
    try:
        manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
        expected, actual = manifest["data_sha256"], sha256_file(data_path)
        if canonical_json(manifest["spec"]) != canonical_json(spec):
            problem = "its manifest spec differs from the requested spec"
        elif actual != expected:
            problem = f"sha256 {actual} != manifest sha256 {expected}"
        else:
            tensors = torch.load(data_path, weights_only=True)
            return make(name, tensors["images"], tensors["labels"], manifest)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        problem = f"unreadable ({type(error).__name__}: {error})"
    log.warning("%s cache %s: %s; deleting the entry and rebuilding", name, data_path, problem)
    remove_directory(entry)
    return None


def load_or_build(
    name: str,
    spec: dict[str, Any],
    cache: str | None,
    build: Callable[[], Built],
) -> ImageClassDataset:
    """The cached dataset of ``spec``, or ``build()`` it and cache it atomically.

    Args:
        name: registry key (the cache folder name).
        spec: everything the cached bytes depend on (root fingerprint, options, loader version).
        cache: cache root; default :func:`bench.paths.cache_dir`.
        build: returns ``images`` uint8 (N, C, S, S), ``labels`` int64 (N,) and the manifest facts
            (``class_names``, ``splits``, ``channels``, ``normalization``, sources, split rule...).
    """
    entry = (absolute_root(cache) if cache is not None else cache_dir()) / "datasets" / name / spec_hash(spec)
    if is_done(entry):
        dataset = load_cache_entry(name, entry, spec)
        if dataset is not None:
            log.info("%s: loaded %d images from %s", name, len(dataset.labels), entry)
            return dataset
    start = time.perf_counter()
    images, labels, facts = build()
    manifest: dict[str, Any] = {"spec": spec, "spec_hash": entry.name, **facts}
    manifest["counts"] = {
        "images": int(images.shape[0]),
        "classes": len(facts["class_names"]),
        "classes_per_split": {split: len(facts["splits"][split]) for split in SPLITS},
    }
    manifest["content_hash"] = content_hash(images, labels, facts["class_names"], facts["splits"])
    manifest["build_seconds"] = round(time.perf_counter() - start, 2)
    with atomic_directory(entry) as tmp:
        torch.save({"images": images.contiguous(), "labels": labels}, tmp / "data.pt")
        manifest["data_sha256"] = sha256_file(tmp / "data.pt")
        atomic_write_json(tmp / "manifest.json", manifest)
    log.info("%s: decoded %d images in %.1f s -> %s", name, images.shape[0], manifest["build_seconds"], entry)
    return make_dataset(name, images, labels, manifest)
