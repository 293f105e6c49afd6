"""Tests of the embedded ``glyphs`` dataset (class scan, rendering, splits, cache)."""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from pathlib import Path

import pytest
import torch

from bench.data import DATASETS, ImageClassDataset, glyph_render, load_dataset
from bench.data import glyphs as glyphs_module
from bench.data.glyph_render import Distortion, GlyphRenderer, block_of, font_files, scan_coverage, split_unit
from bench.data.glyphs import MIN_SPLIT_CLASSES, load_glyphs, load_manifest
from bench.errors import BenchError
from bench.hashing import sha256_file

SMALL = {"max_classes": 300, "seed": 0}


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFML_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("glyphs-cache")


@pytest.fixture(scope="module")
def small(small_cache: Path) -> ImageClassDataset:
    """300 classes x 20 instances at 32 px, built once for the module."""
    return load_glyphs(cache=str(small_cache), **SMALL)


def _entry(cache: Path) -> Path:
    (entry,) = (cache / "datasets" / "glyphs").iterdir()
    return entry


def test_registered_under_glyphs() -> None:
    assert DATASETS.get("glyphs") is load_glyphs


def test_same_config_gives_identical_bytes(small: ImageClassDataset, tmp_path: Path) -> None:
    again = load_dataset({"name": "glyphs", "cache": str(tmp_path / "other"), **SMALL})
    assert torch.equal(again.images, small.images)
    assert torch.equal(again.labels, small.labels)
    assert again.content_hash == small.content_hash
    assert again.splits == small.splits and again.class_names == small.class_names


def test_different_seed_changes_distortions() -> None:
    assert Distortion.sample(0, 0x41, 0) == Distortion.sample(0, 0x41, 0)
    assert Distortion.sample(0, 0x41, 0) != Distortion.sample(1, 0x41, 0)
    assert Distortion.sample(0, 0x41, 0) != Distortion.sample(0, 0x41, 1)


def test_second_call_loads_from_cache(
    small: ImageClassDataset, small_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _entry(small_cache) / "data.pt"
    mtime = data.stat().st_mtime_ns

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("re-rendered although the cache entry was valid")

    monkeypatch.setattr(glyphs_module, "_render_all", forbidden)
    monkeypatch.setattr(glyphs_module, "scan_coverage", forbidden)
    loaded = load_glyphs(cache=str(small_cache), **SMALL)
    assert data.stat().st_mtime_ns == mtime
    assert loaded.content_hash == small.content_hash
    assert torch.equal(loaded.images, small.images)
    assert loaded.splits == small.splits and loaded.mean == small.mean


def test_splits_are_disjoint_cover_all_and_novel_by_unicode_unit(small: ImageClassDataset) -> None:
    sets = {name: set(indices) for name, indices in small.splits.items()}
    assert set(sets) == {"train", "val", "test"}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert set.union(*sets.values()) == set(range(len(small.class_names)))
    for name, indices in small.splits.items():
        assert indices == sorted(indices) and len(indices) >= MIN_SPLIT_CLASSES, name
    units = {
        name: {small.manifest["classes"][i]["split_unit"] for i in idx} for name, idx in small.splits.items()
    }
    assert not (
        units["train"] & units["val"] or units["train"] & units["test"] or units["val"] & units["test"]
    )
    assert units == {name: set(u) for name, u in small.manifest["split_rule"]["units"].items()}
    n = len(small.class_names)
    assert len(small.splits["test"]) >= 0.2 * n and len(small.splits["val"]) >= 0.16 * n


def test_classes_names_and_instances(small: ImageClassDataset) -> None:
    names = small.class_names
    assert len(names) == 300 and names == sorted(names, key=lambda s: int(s[2:], 16))
    assert all(re.fullmatch(r"U\+[0-9A-F]{4,}", name) for name in names)
    counts = torch.bincount(small.labels, minlength=len(names))
    assert torch.all(counts == 20)
    for entry, name in zip(small.manifest["classes"], names, strict=True):
        cp = int(name[2:], 16)
        assert entry["char"] == chr(cp) and entry["block"] == block_of(cp)[0]
        assert unicodedata.category(chr(cp))[0] in "LNSP"
        assert len(entry["fonts"]) >= 8
    assert small.manifest["counts"]["classes_per_split"] == {s: len(c) for s, c in small.splits.items()}


def test_storage_dtype_shape_and_normalize(small: ImageClassDataset) -> None:
    assert small.images.dtype == torch.uint8 and small.images.shape == (6000, 1, 32, 32)
    assert small.labels.dtype == torch.int64 and small.labels.shape == (6000,)
    assert bool((small.images.flatten(1).amax(1) > 0).all()), "an image has no ink"
    assert small.channels == 3 and len(small.mean) == 3 and len(small.std) == 3
    assert 0 < small.mean[0] < 0.5 and 0 < small.std[0] < 0.5
    # the statistics of the meta-train images only (by hand), not of every image
    train = torch.isin(small.labels, torch.tensor(small.split_classes("train")))
    pixels = small.images[train].double() / 255
    assert small.mean[0] == pytest.approx(round(float(pixels.mean()), 4), abs=1e-4)
    assert small.std[0] == pytest.approx(round(float(pixels.std(unbiased=False)), 4), abs=1e-4)
    everything = small.images.double() / 255
    assert (
        abs(round(float(everything.mean()), 4) - small.mean[0])
        + abs(round(float(everything.std(unbiased=False)), 4) - small.std[0])
        > 0
    )  # the two differ here, so the check above can tell them apart
    x = small.normalize(small.images[:8])
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2])


@pytest.mark.parametrize(("size", "channels"), [(28, 3), (84, 1)])
def test_other_sizes(tmp_path: Path, size: int, channels: int) -> None:
    ds = load_glyphs(image_size=size, instances_per_class=1, channels=channels, cache=str(tmp_path), **SMALL)
    assert ds.images.shape == (300, 1, size, size) and ds.images.dtype == torch.uint8
    assert ds.normalize(ds.images[:2]).shape == (2, channels, size, size)
    assert bool((ds.images.flatten(1).amax(1) > 0).all())


def test_corrupted_data_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_glyphs(instances_per_class=2, cache=str(tmp_path), **SMALL)
    data = _entry(tmp_path) / "data.pt"
    good = load_manifest(data.parent)["data_sha256"]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    bad = sha256_file(data)
    with caplog.at_level(logging.WARNING, logger="bench.data.glyphs"):
        rebuilt = load_glyphs(instances_per_class=2, cache=str(tmp_path), **SMALL)
    message = " ".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert str(data) in message and good in message and bad in message
    assert rebuilt.content_hash == first.content_hash
    assert sha256_file(data) == load_manifest(data.parent)["data_sha256"]


def test_unreadable_manifest_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_glyphs(instances_per_class=1, cache=str(tmp_path), **SMALL)
    (_entry(tmp_path) / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="bench.data.glyphs"):
        rebuilt = load_glyphs(instances_per_class=1, cache=str(tmp_path), **SMALL)
    assert any("unreadable" in record.getMessage() for record in caplog.records)
    assert rebuilt.content_hash == first.content_hash


def test_default_cache_root_honours_env(tmp_path: Path) -> None:
    load_glyphs(instances_per_class=1, **SMALL)
    assert (Path(os.environ["DFML_CACHE"]) / "datasets" / "glyphs").is_dir()


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"image_size": 7}, "image_size=7"),
        ({"image_size": "32"}, "image_size='32'"),
        ({"instances_per_class": 0}, "instances_per_class=0"),
        ({"channels": 2}, "channels=2"),
        ({"min_fonts": 0}, "min_fonts=0"),
        ({"min_fonts": 1000}, "min_fonts=1000"),
        ({"val_fraction": 0.0}, "val_fraction=0.0"),
        ({"test_fraction": 1.5}, "test_fraction=1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction = 1.0"),
        ({"max_classes": 10}, "max_classes=10"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(BenchError, match=re.escape(text)):
        load_glyphs(cache=str(tmp_path), **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "datasets").exists()


def test_split_too_small_raises(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="raise max_classes"):
        load_glyphs(max_classes=120, instances_per_class=1, cache=str(tmp_path))


def test_full_class_set_counts_without_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the coverage scan rendered a distorted glyph")

    monkeypatch.setattr(GlyphRenderer, "render", forbidden)
    monkeypatch.setattr(GlyphRenderer, "ink_patch", forbidden)
    glyph_render._scan.cache_clear()  # scan now, under the patch (the scan is memoised per process)
    coverage = scan_coverage(font_files(), 8)
    classes = set(coverage.classes)
    assert 1500 <= len(classes) <= 3500
    assert all(block_of(cp) is not None for cp in classes)
    assert all(len(coverage.covering[cp]) >= 8 for cp in classes)
    # homoglyphs collapse onto the lowest code point: Latin A stays, Greek Alpha and Cyrillic A go
    assert 0x41 in classes and 0x391 not in classes and 0x410 not in classes
    assert coverage.homoglyphs[0x391] == 0x41
    assert {f.name[:4] for f in coverage.fonts} == {"Deja", "STIX"}
    assert len({split_unit(cp) for cp in classes}) >= 20
