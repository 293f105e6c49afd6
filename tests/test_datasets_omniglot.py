"""Omniglot loader: the real subsets in ../shared/data/omniglot (marked ``data``) and a tiny
full-set tree in torchvision's layout (``images_background/``, ``images_evaluation/``) for the
Vinyals path and the bad-input errors."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import listing
from bench.data import DATASETS, load_dataset
from bench.data import _common as common
from bench.data.omniglot import inspect_root, load_omniglot
from bench.errors import BenchError

ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
# the two subsets: 8 alphabets, 242 distinct characters (Greek and Latin are in both)
ALPHABETS = {
    "Balinese": 24,
    "Early_Aramaic": 22,
    "Greek": 24,
    "Japanese_(katakana)": 47,
    "Korean": 40,
    "Latin": 26,
    "Sanskrit": 42,
    "Tagalog": 17,
}


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFML_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def real_root(shared_data: Path) -> Path:
    root = shared_data / "omniglot"
    if not all((root / name).is_file() for name in ZIPS):
        pytest.skip(f"the real Omniglot subsets {ZIPS} are not in {root} (../shared/data/omniglot)")
    return root


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("omniglot-cache"))


@pytest.fixture(scope="module")
def real(real_root: Path, real_cache: str):
    return load_omniglot(str(real_root), cache=real_cache)


def write_tree(root: Path, layout: dict[str, dict[str, int]], drawers: int = 3) -> Path:
    """torchvision's layout; image of (alphabet a, character c, drawer d) has a 5x5 ink square."""
    for kind, alphabets in layout.items():
        for a, (alphabet, n_chars) in enumerate(alphabets.items()):
            for c in range(1, n_chars + 1):
                folder = root / f"images_{kind}" / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(1, drawers + 1):
                    pixels = np.ones((105, 105), dtype=bool)
                    pixels[10 * a : 10 * a + 5, 10 * c : 10 * c + 5] = False  # black ink on white
                    Image.fromarray(pixels).save(folder / f"{a:02d}{c:02d}_{d:02d}.png")
    return root


TINY = {"background": {"Alpha": 3, "Beta": 2}, "evaluation": {"Gamma": 2}}
TINY_LISTS = {
    "train": {"background": {"Alpha": ["character01", "character02", "character03"]}},
    "val": {"background": {"Beta": ["character01", "character02"]}},
    "test": {"evaluation": {"Gamma": ["character01", "character02"]}},
}


def write_lists(folder: Path, lists: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for split, content in lists.items():
        (folder / f"{split}.json").write_text(json.dumps(content))
    return str(folder)


def test_registered() -> None:
    assert DATASETS.get("omniglot") is load_omniglot


@pytest.mark.data
def test_real_subsets_dedupe_and_alphabet_split(real) -> None:
    assert real.images.shape == (242 * 20, 1, 32, 32) and real.images.dtype == torch.uint8
    assert len(real.class_names) == 242 and real.class_names == sorted(real.class_names)
    assert torch.bincount(real.labels).tolist() == [20] * 242
    manifest = real.manifest
    assert manifest["dedupe"]["duplicates_dropped"] == (24 + 26) * 20
    assert manifest["split_rule"]["seed"] == 0 and manifest["images_per_class"] == [20]
    alphabets = manifest["split_rule"]["alphabets"]
    assert sorted(sum(alphabets.values(), [])) == sorted(ALPHABETS)
    assert [len(alphabets[s]) for s in ("train", "val", "test")] == [5, 1, 2]
    for split, classes in real.splits.items():
        assert {real.class_names[i].split("/")[0] for i in classes} == set(alphabets[split])
        assert len(classes) == sum(ALPHABETS[a] for a in alphabets[split]) >= 5
    assert real.mean[0] < 0.2 and real.channels == 3  # white ink on black: mostly dark
    assert real.normalize(real.read_rows(torch.arange(4))).shape == (4, 3, 32, 32)


@pytest.mark.data
def test_real_second_load_hits_the_cache(
    real, real_root: Path, real_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    start = time.perf_counter()
    again = load_omniglot(str(real_root), cache=real_cache)
    warm = time.perf_counter() - start
    assert again.content_hash == real.content_hash
    print(f"omniglot warm load {warm:.3f} s; cold build {real.manifest['build_seconds']} s")


@pytest.mark.data
def test_real_options(real_root: Path, tmp_path: Path) -> None:
    data = load_omniglot(str(real_root), image_size=28, channels=1, invert=False, rotations=True, seed=3)
    assert data.images.shape == (4 * 242 * 20, 1, 28, 28) and data.mean[0] > 0.8 and data.channels == 1
    assert {s: len(c) % 4 for s, c in data.splits.items()} == {"train": 0, "val": 0, "test": 0}
    base = data.class_names.index("Greek/character05")
    assert data.class_names[base + 1] == "Greek/character05/rot090"
    rows = data.images[data.labels == base]
    assert torch.equal(data.images[data.labels == base + 1], torch.rot90(rows, 1, dims=(2, 3)))


@pytest.mark.data
def test_real_zip_equals_extracted_folder(real_root: Path, tmp_path: Path) -> None:
    (tmp_path / "zipped").mkdir()
    shutil.copy(real_root / ZIPS[0], tmp_path / "zipped")
    with zipfile.ZipFile(real_root / ZIPS[0]) as archive:
        archive.extractall(tmp_path / "extracted")
    zipped = load_omniglot(str(tmp_path / "zipped"))
    extracted = load_omniglot(str(tmp_path / "extracted"))
    assert zipped.content_hash == extracted.content_hash and len(zipped.class_names) == 136


@pytest.mark.data
def test_real_dfml_ls_datasets(real_root: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DFML_OMNIGLOT_ROOT", str(real_root))
    monkeypatch.setenv("DFML_DATA", str(real_root / "nothing-here"))
    assert listing.main(["datasets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == set(DATASETS.names())
    assert f"root found: {real_root}; train/val/test classes 175/24/43, alphabets split" in lines["omniglot"]
    for name in ("cifar_fs", "mini_imagenet", "cub"):
        assert f"root not found: {real_root / 'nothing-here'}" in lines[name]


def test_vinyals_split_on_a_full_tree(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "omni", TINY)
    data = load_dataset(
        {"name": "omniglot", "root": str(root), "split_dir": write_lists(tmp_path / "lists", TINY_LISTS)}
    )
    assert data.manifest["split_rule"]["rule"] == "vinyals"
    assert data.manifest["characters_on_disk"] == {"background": 5, "evaluation": 2}
    assert [[data.class_names[i] for i in data.splits[s]] for s in ("train", "val", "test")] == [
        ["Alpha/character01", "Alpha/character02", "Alpha/character03"],
        ["Beta/character01", "Beta/character02"],
        ["Gamma/character01", "Gamma/character02"],
    ]
    image = data.images[data.labels == data.class_names.index("Beta/character02")][0, 0]
    ink = (image > 100).nonzero()  # inverted: the ink square (rows 10-14, cols 20-24 of 105) is bright
    assert image.max() > 150 and image[20, 20] == 0
    assert set(ink[:, 0].tolist()) <= {3, 4} and set(ink[:, 1].tolist()) <= {6, 7}


def test_shipped_vinyals_lists_name_missing_characters(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "omni", TINY)
    with pytest.raises(
        BenchError, match=r"omniglot: 1623 class\(es\) .* first missing: Alphabet_of_the_Magi/"
    ):
        load_omniglot(str(root))


def test_alphabet_split_needs_enough_classes(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "omni", {"background": {"A": 2, "B": 2, "C": 2}})
    with pytest.raises(BenchError, match=r"omniglot: split '\w+' got 2 classes \(< 5\)"):
        load_omniglot(str(root))


def test_missing_root_message(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as error:
        load_omniglot(str(tmp_path / "nowhere"), download=False)
    message = str(error.value)
    assert message.startswith(f"omniglot: dataset not found at {tmp_path / 'nowhere'}; expected <root>/")
    for needle in ("images_background/<Alphabet>/<characterNN>/*.png", "download=true", "brendenlake"):
        assert needle in message and "\n" not in message


def test_corrupt_png_names_the_file(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "omni", TINY)
    bad = root / "images_background" / "Beta" / "character02" / "0102_02.png"
    bad.write_bytes(bad.read_bytes()[:-20])
    with pytest.raises(BenchError, match=f"omniglot: cannot decode image {bad}"):
        load_omniglot(str(root), split_dir=write_lists(tmp_path / "lists", TINY_LISTS))


def test_truncated_zip_names_the_file(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree", {"background": {"A": 2}})
    (tmp_path / "zips").mkdir()
    archive = shutil.make_archive(
        str(tmp_path / "zips" / "images_background"), "zip", tree, "images_background"
    )
    Path(archive).write_bytes(Path(archive).read_bytes()[:-200])
    with pytest.raises(BenchError, match=f"omniglot: cannot read zip {archive}"):
        load_omniglot(str(tmp_path / "zips"))


def test_invalid_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"split='random' is invalid; valid: auto, vinyals, alphabets"):
        load_omniglot(str(tmp_path), split="random")
    with pytest.raises(BenchError, match=r"image_size=4 is invalid"):
        load_omniglot(str(tmp_path), image_size=4)


def test_inspect_root(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "omni", TINY)
    lists = write_lists(tmp_path / "lists", TINY_LISTS)
    status = inspect_root(str(root), split_dir=lists, rotations=True)
    assert status.found and status.classes_per_split == {"train": 12, "val": 8, "test": 8}
    assert not inspect_root(str(tmp_path / "nowhere")).found


def test_a_download_is_used_even_when_small_zips_sit_in_the_root(tmp_path) -> None:
    from bench.data.omniglot import _find_sources

    (tmp_path / "images_background_small1.zip").write_bytes(b"")  # a subset the user keeps there
    for kind in ("images_background", "images_evaluation"):
        (tmp_path / "omniglot-py" / kind).mkdir(parents=True)  # what download=true just fetched
    base, sources = _find_sources(tmp_path, downloaded=True)
    assert base == tmp_path / "omniglot-py"
    assert [s.name for s in sources] == ["images_background", "images_evaluation"]
    assert _find_sources(tmp_path)[0] == tmp_path  # without download, the root's own files first
