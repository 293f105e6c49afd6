"""The embedded ``glyphs`` dataset: Unicode characters rendered from matplotlib's bundled fonts.

A class is a visible code point (see :mod:`bench.data.glyph_render`) drawn with ink by at least
``min_fonts`` of the DejaVu*/STIX* fonts; homoglyphs (e.g. Latin ``A``, Greek ``Α``, Cyrillic
``А``) are merged onto the lowest code point. Instance ``i`` of a class uses covering font
``i % n_covering`` and a random affine/stroke distortion seeded by ``(seed, code point, i)``.

Split rule: the eligible Unicode blocks are cut into units of at most :data:`SPLIT_UNIT` code
points (block order, contiguous), the units holding classes are shuffled with
``derive_seed(seed, "glyphs", "split")``, whole units go to meta-test until it has at least
``test_fraction`` of the classes, then to meta-val until ``val_fraction``, the rest to meta-train.

Normalisation: ``mean``/``std`` are the pixel mean/std (values / 255) of the meta-train images,
rounded to 4 decimals and repeated for each of the ``channels`` output channels.

Cache layout: ``<cache>/datasets/glyphs/<spec_hash>/{data.pt, manifest.json, done}``; ``data.pt``
holds ``images`` (uint8, (N, 1, H, W)) and ``labels`` (int64, (N,)), rows ordered by class then
instance; its sha256 is checked against the manifest on every load.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import PIL
import torch
from PIL import features
from tqdm import tqdm

from bench.atomic import atomic_directory, atomic_write_json, is_done
from bench.data import DATASETS
from bench.data._common import content_hash, load_cache_entry
from bench.data.base import SPLITS, ImageClassDataset
from bench.data.glyph_render import (
    BLOCKS,
    GENERATOR_VERSION,
    SPLIT_UNIT,
    Distortion,
    GlyphRenderer,
    block_of,
    class_name,
    font_files,
    scan_coverage,
    split_unit,
)
from bench.errors import BenchError
from bench.hashing import sha256_file, spec_hash
from bench.paths import cache_dir
from bench.progress import progress_options
from bench.seeding import derived_generator

log = logging.getLogger(__name__)

#: Every split must hold at least this many classes.
MIN_SPLIT_CLASSES = 40
MAX_IMAGE_SIZE = 512


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    valid = f"[{low}, {high}]" if high is not None else f">= {low}"
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        raise BenchError(f"glyphs: {name}={value!r} is invalid; expected an integer {valid}")


def _validate(args: dict[str, Any], n_fonts: int) -> None:
    _check_int("image_size", args["image_size"], 8, MAX_IMAGE_SIZE)
    _check_int("instances_per_class", args["instances_per_class"], 1)
    _check_int("min_fonts", args["min_fonts"], 1, n_fonts)
    if isinstance(args["seed"], bool) or not isinstance(args["seed"], int):
        raise BenchError(f"glyphs: seed={args['seed']!r} is invalid; expected an integer")
    if args["channels"] not in (1, 3) or isinstance(args["channels"], bool):
        raise BenchError(f"glyphs: channels={args['channels']!r} is invalid; expected 1 or 3")
    for key in ("val_fraction", "test_fraction"):
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise BenchError(f"glyphs: {key}={value!r} is invalid; expected a number in (0, 1)")
    if args["val_fraction"] + args["test_fraction"] >= 1:
        total = args["val_fraction"] + args["test_fraction"]
        raise BenchError(f"glyphs: val_fraction + test_fraction = {total!r} must be < 1")
    if args["max_classes"] is not None:
        _check_int("max_classes", args["max_classes"], 3 * MIN_SPLIT_CLASSES)


def _assign_splits(
    code_points: list[int], seed: int, val_fraction: float, test_fraction: float
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Split class indices by whole units (see module docstring): (splits, split -> unit names)."""
    units: dict[str, list[int]] = {}
    for index, cp in enumerate(code_points):
        units.setdefault(split_unit(cp), []).append(index)
    names = list(units)  # ascending code point order, because code_points is sorted
    order = torch.randperm(len(names), generator=derived_generator(seed, "glyphs", "split")).tolist()
    targets = {"test": test_fraction * len(code_points), "val": val_fraction * len(code_points)}
    splits: dict[str, list[int]] = {s: [] for s in SPLITS}
    unit_lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    for position in order:
        split = next((s for s in ("test", "val") if len(splits[s]) < targets[s]), "train")
        splits[split].extend(units[names[position]])
        unit_lists[split].append(names[position])
    for split in SPLITS:
        if len(splits[split]) < MIN_SPLIT_CLASSES:
            counts = {s: len(c) for s, c in splits.items()}
            raise BenchError(
                f"glyphs: split {split!r} got {len(splits[split])} classes (< {MIN_SPLIT_CLASSES}); "
                f"counts {counts}; raise max_classes or adjust val_fraction/test_fraction"
            )
        splits[split].sort()
        unit_lists[split].sort(key=names.index)
    return splits, unit_lists


def _render_all(
    code_points: list[int], covering: dict[int, list[int]], renderer: GlyphRenderer, n: int, seed: int
) -> torch.Tensor:
    """uint8 images of shape (len(code_points) * n, 1, S, S), ordered by class then instance."""
    size = renderer.image_size
    out = np.zeros((len(code_points) * n, size, size), dtype=np.uint8)
    with tqdm(total=len(code_points), desc="glyphs", unit="class", **progress_options()) as bar:
        for c, cp in enumerate(code_points):
            fonts = covering[cp]
            for i in range(n):
                out[c * n + i] = renderer.render(cp, fonts[i % len(fonts)], Distortion.sample(seed, cp, i))
            bar.update(1)
    return torch.from_numpy(out).unsqueeze(1)


def _train_stats(images: torch.Tensor, labels: torch.Tensor, train: list[int]) -> tuple[float, float]:
    """Pixel mean and std (values / 255) of the meta-train rows, rounded to 4 decimals."""
    rows = torch.isin(labels, torch.tensor(train, dtype=labels.dtype)).nonzero().flatten()
    hist = torch.zeros(256, dtype=torch.int64)
    for chunk in rows.split(4096):
        hist += torch.bincount(images[chunk].flatten().to(torch.int64), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = hist.numpy().astype(np.float64)
    mean = float((values * counts).sum() / counts.sum())
    var = float((values**2 * counts).sum() / counts.sum()) - mean**2
    return round(mean, 4), round(max(var, 0.0) ** 0.5, 4)


def _build_spec(args: dict[str, Any], fonts: list[Path]) -> dict[str, Any]:
    """Everything the cached bytes depend on (all loader arguments except ``cache``)."""
    return {
        "dataset": "glyphs",
        "generator_version": GENERATOR_VERSION,
        **args,
        "matplotlib_version": matplotlib.__version__,
        "pillow_version": PIL.__version__,
        "freetype_version": features.version("freetype2"),
        "unicode_version": unicodedata.unidata_version,
        "fonts": {path.name: sha256_file(path) for path in fonts},
    }


def _dataset(
    name: str, images: torch.Tensor, labels: torch.Tensor, manifest: dict[str, Any]
) -> ImageClassDataset:
    """Glyphs' manifest keeps one grey mean/std, replicated to the output channels."""
    channels = manifest["spec"]["channels"]
    return ImageClassDataset(
        name=name,
        images=images,
        labels=labels,
        class_names=list(manifest["class_names"]),
        splits={s: list(manifest["splits"][s]) for s in SPLITS},
        mean=(manifest["normalization"]["mean"],) * channels,
        std=(manifest["normalization"]["std"],) * channels,
        channels=channels,
        content_hash=manifest["content_hash"],
        manifest=manifest,
    )


def load_manifest(entry: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a cache entry as a dict."""
    return json.loads((Path(entry) / "manifest.json").read_text(encoding="utf-8"))


@DATASETS.register("glyphs")
def load_glyphs(
    image_size: int = 32,
    instances_per_class: int = 20,
    min_fonts: int = 8,
    channels: int = 3,
    seed: int = 0,
    val_fraction: float = 0.16,
    test_fraction: float = 0.2,
    cache: str | None = None,
    max_classes: int | None = None,
) -> ImageClassDataset:
    """Build (or load from cache) the glyphs dataset.

    Args:
        image_size: side S of the square images (8 to 512).
        instances_per_class: images per class (>= 1).
        min_fonts: a code point is a class if at least this many fonts draw it with ink.
        channels: channels returned by ``normalize`` (1 or 3; storage is always 1 channel).
        seed: root seed of the distortions, the class subset and the split.
        val_fraction: minimum share of classes in meta-val, in (0, 1).
        test_fraction: minimum share of classes in meta-test, in (0, 1).
        cache: cache root; default :func:`bench.paths.cache_dir`.
        max_classes: keep a seeded subset of this many classes before splitting (None = all).

    Returns:
        An :class:`ImageClassDataset` with ``images`` uint8 of shape (N, 1, S, S) and ``labels``
        int64 of shape (N,), N = n_classes * instances_per_class.
    """
    args = {
        "image_size": image_size,
        "instances_per_class": instances_per_class,
        "min_fonts": min_fonts,
        "channels": channels,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "max_classes": max_classes,
    }
    fonts = font_files()
    if not fonts:
        raise BenchError(f"glyphs: no DejaVu*/STIX* fonts found in matplotlib ({matplotlib.__file__})")
    _validate(args, len(fonts))
    spec = _build_spec(args, fonts)
    entry = (Path(cache) if cache is not None else cache_dir()) / "datasets" / "glyphs" / spec_hash(spec)
    if entry.exists():
        dataset = load_cache_entry("glyphs", entry, spec, _dataset) if is_done(entry) else None
        if dataset is not None:
            log.info("glyphs: loaded %d images from %s", len(dataset.labels), entry)
            return dataset
    return _generate(args, fonts, spec, entry)


def _generate(
    args: dict[str, Any], fonts: list[Path], spec: dict[str, Any], entry: Path
) -> ImageClassDataset:
    """Scan, subset, split, render, and write the cache entry atomically."""
    start = time.perf_counter()
    coverage = scan_coverage(fonts, args["min_fonts"])
    code_points = coverage.classes
    if args["max_classes"] is not None and args["max_classes"] < len(code_points):
        generator = derived_generator(args["seed"], "glyphs", "subset")
        keep = torch.randperm(len(code_points), generator=generator)[: args["max_classes"]]
        code_points = [code_points[i] for i in sorted(keep.tolist())]
    splits, unit_lists = _assign_splits(
        code_points, args["seed"], args["val_fraction"], args["test_fraction"]
    )
    n = args["instances_per_class"]
    renderer = GlyphRenderer(fonts, args["image_size"])
    images = _render_all(code_points, coverage.covering, renderer, n, args["seed"])
    labels = torch.arange(len(code_points), dtype=torch.int64).repeat_interleave(n)
    names = [class_name(cp) for cp in code_points]
    mean, std = _train_stats(images, labels, splits["train"])
    seconds = time.perf_counter() - start
    manifest: dict[str, Any] = {
        "spec": spec,
        "spec_hash": entry.name,
        "fonts": [path.name for path in fonts],
        "class_names": names,
        "classes": [
            {
                "name": class_name(cp),
                "char": chr(cp),
                "unicode_name": unicodedata.name(chr(cp), ""),
                "block": block_of(cp)[0],  # type: ignore[index]
                "split_unit": split_unit(cp),
                "fonts": coverage.covering[cp],
            }
            for cp in code_points
        ],
        "homoglyphs_merged": {class_name(a): class_name(b) for a, b in sorted(coverage.homoglyphs.items())},
        "blocks": [{"name": name, "start": f"{lo:04X}", "end": f"{hi:04X}"} for name, lo, hi in BLOCKS],
        "split_rule": {
            "rule": "shuffle units (blocks cut into <= split_unit code points) with the split seed; "
            "whole units to test until >= test_fraction, then val until >= val_fraction, rest train",
            "split_unit": SPLIT_UNIT,
            "seed": args["seed"],
            "split_seed_names": ["glyphs", "split"],
            "units": unit_lists,
        },
        "splits": splits,
        "counts": {
            "classes": len(names),
            "classes_eligible": len(coverage.classes),
            "homoglyphs_merged": len(coverage.homoglyphs),
            "images": int(images.shape[0]),
            "classes_per_split": {s: len(c) for s, c in splits.items()},
        },
        "normalization": {"rule": "meta-train pixel mean/std (/255), 4 decimals", "mean": mean, "std": std},
        "content_hash": content_hash(images, labels, names, splits),
        "generation_seconds": round(seconds, 2),
    }
    with atomic_directory(entry) as tmp:
        torch.save({"images": images, "labels": labels}, tmp / "data.pt")
        manifest["data_sha256"] = sha256_file(tmp / "data.pt")
        atomic_write_json(tmp / "manifest.json", manifest)
    log.info("glyphs: rendered %d classes x %d in %.1f s -> %s", len(names), n, seconds, entry)
    return _dataset("glyphs", images, labels, manifest)
