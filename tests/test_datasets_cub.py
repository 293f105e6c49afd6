"""CUB-200-2011 loader on a tiny tree in the published layout (``CUB_200_2011/images/<NNN.Name>/*.jpg``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.data import DATASETS, load_dataset
from bench.data import _common as common
from bench.data.cub import inspect_root, load_cub
from bench.errors import BenchError

CLASSES = [f"{i:03d}.Bird_{chr(64 + i)}" for i in range(1, 9)]  # 001.Bird_A ... 008.Bird_H
PER_CLASS = 3


def write_cub(root: Path) -> Path:
    """8 classes x 3 JPEGs of mixed sizes and modes (one grey), file names out of creation order."""
    images = root / "CUB_200_2011" / "images"
    for c, name in enumerate(CLASSES):
        (images / name).mkdir(parents=True)
        for k in reversed(range(PER_CLASS)):
            mode = "L" if (c, k) == (2, 1) else "RGB"
            colour = 20 * c + 5 * k if mode == "L" else (20 * c, 5 * k, 90)
            size = (120 + 10 * k, 90)  # not square: resized to 84x84
            Image.new(mode, size, colour).save(
                images / name / f"{name.split('.')[1]}_{k:04d}_{c}.jpg", quality=95
            )
    return root


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFML_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return write_cub(tmp_path / "cub")


def test_registered() -> None:
    assert DATASETS.get("cub") is load_cub


def test_sorted_index_rule(tree: Path) -> None:
    data = load_dataset({"name": "cub", "root": str(tree), "split": "sorted_index"})
    assert data.class_names == CLASSES and data.images.shape == (8 * PER_CLASS, 3, 84, 84)
    assert data.splits == {"train": [0, 2, 4, 6], "val": [1, 5], "test": [3, 7]}
    assert data.labels.tolist() == [c for c in range(8) for _ in range(PER_CLASS)]
    for c in range(8):
        rows = data.images[data.labels == c].int()
        for k in range(PER_CLASS):  # sorted file names = k order
            expected = [20 * c + 5 * k] * 3 if (c, k) == (2, 1) else [20 * c, 5 * k, 90]
            assert (rows[k].flatten(1).float().mean(1) - torch.tensor(expected)).abs().max() <= 3
    assert data.mean == (0.485, 0.456, 0.406) and data.channels == 3


def test_lists_from_split_dir_and_root_at_cub_folder(tree: Path, tmp_path: Path) -> None:
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    lists = {"train": CLASSES[0:8:2], "val": CLASSES[1:8:4], "test": CLASSES[3:8:4]}
    for split, names in lists.items():
        (split_dir / f"{split}.json").write_text(json.dumps(names))
    by_lists = load_cub(str(tree / "CUB_200_2011"), split_dir=str(split_dir))
    by_rule = load_cub(str(tree), split="sorted_index")
    assert by_lists.splits == by_rule.splits and torch.equal(by_lists.images, by_rule.images)


def test_shipped_lists_equal_the_sorted_index_rule() -> None:
    lists, _ = common.read_split_files("cub", None)
    names = sorted(sum(lists.values(), []))
    assert len(names) == 200
    assert lists["train"] == names[0::2] and lists["val"] == names[1::4] and lists["test"] == names[3::4]


def test_shipped_lists_name_missing_classes(tree: Path) -> None:
    with pytest.raises(
        BenchError, match=r"cub: 200 class\(es\) .* first missing: 001\.Black_footed_Albatross"
    ):
        load_cub(str(tree))


def test_missing_root_message(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as error:
        load_cub(str(tmp_path / "nowhere"))
    message = str(error.value)
    assert message.startswith(f"cub: dataset not found at {tmp_path / 'nowhere'}; expected ")
    assert "CUB_200_2011/images/<NNN.Name>/*.jpg" in message and "CUB_200_2011.tgz" in message


def test_truncated_jpeg_names_the_file(tree: Path) -> None:
    bad = sorted((tree / "CUB_200_2011" / "images" / CLASSES[5]).iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:400])
    with pytest.raises(BenchError, match=f"cub: cannot decode image {bad}"):
        load_cub(str(tree), split="sorted_index")


def test_empty_class_folder_is_an_error(tree: Path) -> None:
    for path in (tree / "CUB_200_2011" / "images" / CLASSES[4]).iterdir():
        path.unlink()
    with pytest.raises(BenchError, match=f"no images in class folder\\(s\\) {CLASSES[4]}"):
        load_cub(str(tree), split="sorted_index")


def test_cache_hit_and_corrupt_entry_rebuild(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = load_cub(str(tree), split="sorted_index", image_size=32)
    (entry,) = (tmp_path / "cache" / "datasets" / "cub").iterdir()
    data = entry / "data.pt"
    data.write_bytes(data.read_bytes()[:-10] + b"corrupted!")
    with caplog.at_level(logging.WARNING):
        rebuilt = load_cub(str(tree), split="sorted_index", image_size=32)
    assert "sha256" in caplog.text and str(data) in caplog.text
    assert rebuilt.content_hash == first.content_hash
    monkeypatch.setattr(common, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    assert load_cub(str(tree), split="sorted_index", image_size=32).content_hash == first.content_hash


def test_changed_file_changes_the_fingerprint(tree: Path, tmp_path: Path) -> None:
    first = load_cub(str(tree), split="sorted_index", image_size=16)
    path = sorted((tree / "CUB_200_2011" / "images" / CLASSES[0]).iterdir())[0]
    Image.new("RGB", (50, 50), (255, 255, 255)).save(path)
    second = load_cub(str(tree), split="sorted_index", image_size=16)
    assert second.content_hash != first.content_hash
    assert len(list((tmp_path / "cache" / "datasets" / "cub").iterdir())) == 2


def test_inspect_root(tree: Path, tmp_path: Path) -> None:
    status = inspect_root(str(tree), split="sorted_index", image_size=84)
    assert status.found and status.classes_per_split == {"train": 4, "val": 2, "test": 2}
    assert not inspect_root(str(tmp_path / "nowhere")).found
    assert inspect_root(str(tree)).classes_per_split is None  # found, but the shipped lists do not match


@pytest.mark.parametrize("fault", ["overlap", "repeat"])
def test_split_lists_that_overlap_or_repeat_a_class_are_refused(
    tree: Path, tmp_path: Path, fault: str
) -> None:
    lists = {"train": CLASSES[0:4], "val": CLASSES[4:6], "test": CLASSES[6:8]}
    if fault == "overlap":  # a meta-train class also in meta-test
        lists["test"] = [*lists["test"], CLASSES[0]]
        expected = rf"cub: class '{CLASSES[0]}' is in both the 'train' and the 'test' lists"
    else:  # a class twice in one list: one class under two labels in a task
        lists["test"] = [*lists["test"], CLASSES[6]]
        expected = rf"cub: class '{CLASSES[6]}' is twice in the 'test' list"
    split_dir = tmp_path / "bad_splits"
    split_dir.mkdir()
    for split, names in lists.items():
        (split_dir / f"{split}.json").write_text(json.dumps(names))
    with pytest.raises(BenchError, match=expected):
        load_cub(str(tree), split_dir=str(split_dir))
