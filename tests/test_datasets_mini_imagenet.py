"""MiniImageNet loader on miniatures written in both published formats.

- pickle: ``mini-imagenet-cache-{train,val,test}.pkl``, dicts with ``image_data`` uint8
  (N, 84, 84, 3) and ``class_dict`` {label: [row indices]};
- CSV + JPEG (Ravi & Larochelle): ``images/<filename>.jpg`` + ``{train,val,test}.csv``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import DATASETS, load_dataset
from bench.data.mini_imagenet import inspect_root, load_mini_imagenet
from bench.errors import BenchError

SPLIT = {
    "train": ["n01532829", "n01558993", "n01704323"],
    "val": ["n01855672"],
    "test": ["n01930112", "n01981276"],
}
PER_CLASS = 4


def _colour(label: str, k: int) -> tuple[int, int, int]:
    index = sorted(sum(SPLIT.values(), [])).index(label)
    return 40 * index, 30 + 40 * k, 200


def write_pickles(root: Path) -> Path:
    """Three cache pickles; rows of a class are interleaved and listed out of order."""
    root.mkdir(parents=True, exist_ok=True)
    for split, labels in SPLIT.items():
        images = np.zeros((PER_CLASS * len(labels), 84, 84, 3), dtype=np.uint8)
        class_dict: dict[str, list[int]] = {}
        for k in range(PER_CLASS):
            for j, label in enumerate(labels):
                row = k * len(labels) + j
                images[row] = _colour(label, k)
                class_dict.setdefault(label, []).insert(0, row)
        entry = {"image_data": images, "class_dict": class_dict}
        (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(entry, protocol=4))
    return root


def write_csv_jpeg(root: Path) -> Path:
    """``images/*.jpg`` (84x84 solid colours) + the three CSVs, rows in reverse order."""
    (root / "images").mkdir(parents=True)
    for split, labels in SPLIT.items():
        rows = []
        for label in labels:
            for k in range(PER_CLASS):
                name = f"{label}{k + 1:08d}.jpg"
                Image.new("RGB", (84, 84), _colour(label, k)).save(root / "images" / name, quality=95)
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("filename,label\n" + "\n".join(reversed(rows)) + "\n")
    return root


def write_split_dir(root: Path, split: dict[str, list[str]] = SPLIT) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for name, labels in split.items():
        (root / f"{name}.json").write_text(json.dumps(labels))
    return str(root)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFML_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def split_dir(tmp_path: Path) -> str:
    return write_split_dir(tmp_path / "splits")


def _check(data, tolerance: int) -> None:
    names = sorted(sum(SPLIT.values(), []))
    assert data.class_names == names and data.images.shape == (6 * PER_CLASS, 3, 84, 84)
    assert data.labels.tolist() == [c for c in range(6) for _ in range(PER_CLASS)]
    assert {s: [names[i] for i in data.splits[s]] for s in data.splits} == SPLIT
    for c, label in enumerate(names):
        rows = data.images[data.labels == c].int()
        expected = torch.tensor([_colour(label, k) for k in range(PER_CLASS)]).view(PER_CLASS, 3, 1, 1)
        assert (rows - expected).abs().max() <= tolerance
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)


def test_registered() -> None:
    assert DATASETS.get("mini_imagenet") is load_mini_imagenet


def test_pickle_layout(tmp_path: Path, split_dir: str) -> None:
    root = write_pickles(tmp_path / "mini")
    data = load_dataset({"name": "mini_imagenet", "root": str(root), "split_dir": split_dir})
    assert data.manifest["layout"] == "pickle"
    _check(data, tolerance=0)


def test_csv_jpeg_layout_and_cache(tmp_path: Path, split_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_csv_jpeg(tmp_path / "mini")
    data = load_mini_imagenet(str(root), split_dir=split_dir)
    assert data.manifest["layout"] == "csv"
    _check(data, tolerance=3)  # JPEG
    from bench.data import _common

    monkeypatch.setattr(_common, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    assert load_mini_imagenet(str(root), split_dir=split_dir).content_hash == data.content_hash


def test_resize(tmp_path: Path, split_dir: str) -> None:
    root = write_pickles(tmp_path / "mini")
    assert load_mini_imagenet(str(root), image_size=32, split_dir=split_dir).images.shape == (24, 3, 32, 32)


def test_missing_root_message(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as error:
        load_mini_imagenet(str(tmp_path / "nowhere"))
    message = str(error.value)
    assert message.startswith("mini_imagenet: dataset not found at " + str(tmp_path / "nowhere"))
    for needle in ("images/*.jpg", "{train,val,test}.csv", "mini-imagenet-cache-", "meta-learning-lstm"):
        assert needle in message


def test_shipped_lists_name_missing_classes(tmp_path: Path) -> None:
    root = write_pickles(tmp_path / "mini")
    with pytest.raises(
        BenchError, match=r"61 class\(es\) .* class_dict of .*train\.pkl; first missing: n01749939"
    ):
        load_mini_imagenet(str(root))


def test_csv_class_missing_is_listed(tmp_path: Path) -> None:
    root = write_csv_jpeg(tmp_path / "mini")
    split = {**SPLIT, "val": ["n01855672", "n09999999"]}
    with pytest.raises(BenchError, match=r"1 class\(es\) .*val\.csv; first missing: n09999999"):
        load_mini_imagenet(str(root), split_dir=write_split_dir(tmp_path / "s", split))


def test_csv_image_missing_is_listed(tmp_path: Path, split_dir: str) -> None:
    root = write_csv_jpeg(tmp_path / "mini")
    (root / "images" / "n0193011200000002.jpg").unlink()
    with pytest.raises(
        BenchError, match=r"1 image\(s\) listed in the CSVs are missing: .*n0193011200000002\.jpg"
    ):
        load_mini_imagenet(str(root), split_dir=split_dir)


def test_truncated_jpeg_names_the_file(tmp_path: Path, split_dir: str) -> None:
    root = write_csv_jpeg(tmp_path / "mini")
    bad = root / "images" / "n0155899300000003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(BenchError, match=f"mini_imagenet: cannot decode image {bad}"):
        load_mini_imagenet(str(root), split_dir=split_dir)


def test_truncated_pickle_names_the_file(tmp_path: Path, split_dir: str) -> None:
    root = write_pickles(tmp_path / "mini")
    bad = root / "mini-imagenet-cache-val.pkl"
    bad.write_bytes(bad.read_bytes()[:-1000])
    with pytest.raises(BenchError, match=f"cannot read pickle {bad}"):
        load_mini_imagenet(str(root), split_dir=split_dir)


def test_bad_class_dict_indices_name_the_file(tmp_path: Path, split_dir: str) -> None:
    root = write_pickles(tmp_path / "mini")
    path = root / "mini-imagenet-cache-test.pkl"
    entry = pickle.loads(path.read_bytes())
    entry["class_dict"]["n01930112"].append(999)
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(BenchError, match=f"{path}: class_dict holds row indices outside"):
        load_mini_imagenet(str(root), split_dir=split_dir)


def test_inspect_root(tmp_path: Path, split_dir: str) -> None:
    root = write_csv_jpeg(tmp_path / "mini")
    assert inspect_root(str(root), split_dir=split_dir).classes_per_split == {"train": 3, "val": 1, "test": 2}
    assert not inspect_root(str(tmp_path / "nowhere")).found


def test_pickle_rows_listed_twice_are_refused(tmp_path: Path, split_dir: str) -> None:
    root = write_pickles(tmp_path / "mini")
    path = root / "mini-imagenet-cache-train.pkl"
    entry = pickle.loads(path.read_bytes())
    first, second = SPLIT["train"][:2]
    entry["class_dict"][second] = [*entry["class_dict"][second], entry["class_dict"][first][0]]  # shared row
    path.write_bytes(pickle.dumps(entry, protocol=4))
    with pytest.raises(BenchError, match=r"class_dict lists row\(s\) \[\d+\] more than once"):
        load_dataset({"name": "mini_imagenet", "root": str(root), "split_dir": split_dir})


def test_a_half_copied_dataset_names_what_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    (root / "train.csv").write_text("filename,label\n")
    with pytest.raises(
        BenchError, match=r"mini_imagenet: incomplete dataset at .*: missing val.csv, test.csv"
    ):
        load_mini_imagenet(str(root))
