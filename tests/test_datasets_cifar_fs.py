"""CIFAR-FS loader on a 6-class CIFAR-100 written in the published python-pickle format.

The fixture follows torchvision's ``CIFAR100``: ``cifar-100-python/{train,test,meta}`` are pickled
dicts with byte-string keys; ``data`` is uint8 (N, 3072) with the R, G, B planes row-major.
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
from bench.data import cifar_fs as cifar_module
from bench.data.cifar_fs import MEAN, STD, inspect_root, load_cifar_fs
from bench.errors import BenchError

# (superclass, class) per split: names from the real CIFAR-100 label set.
SPLIT = {
    "train": [["fish", "trout"], ["flowers", "tulip"], ["people", "baby"]],
    "val": [["trees", "oak_tree"]],
    "test": [["vehicles_1", "bus"], ["insects", "bee"]],
}
NAMES = sorted(pair[1] for pairs in SPLIT.values() for pair in pairs)  # fine label index = sorted position
PER_PART = {"train": 5, "test": 2}


def _rows(part: str) -> tuple[np.ndarray, list[int], list[bytes]]:
    """Rows of one part, class-interleaved and with shuffled file names (the loader must sort)."""
    data, labels, files = [], [], []
    for k in reversed(range(PER_PART[part])):
        for label, name in enumerate(NAMES):
            image = np.zeros((3, 32, 32), dtype=np.uint8)
            image[0], image[1] = 10 * label, 100 + k + (50 if part == "test" else 0)
            image[2] = np.arange(32, dtype=np.uint8)[None, :]  # a column ramp: checks row-major order
            data.append(image.reshape(3072))
            labels.append(label)
            files.append(f"{name}_s_{part}_{k:06d}.png".encode())
    return np.stack(data), labels, files


def write_cifar100(root: Path, protocol: int = 2) -> Path:
    """A 6-class ``cifar-100-python`` folder (python pickle format) under ``root``."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for part in ("train", "test"):
        data, labels, files = _rows(part)
        entry = {
            b"filenames": files,
            b"batch_label": f"{part} batch".encode(),
            b"fine_labels": labels,
            b"coarse_labels": [0] * len(labels),
            b"data": data,
        }
        (base / part).write_bytes(pickle.dumps(entry, protocol=protocol))
    meta = {b"fine_label_names": [n.encode() for n in NAMES], b"coarse_label_names": [b"all"]}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return base


def write_split_dir(root: Path, split: dict[str, list[list[str]]] = SPLIT) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for name, pairs in split.items():
        (root / f"{name}.json").write_text(json.dumps(pairs))
    return str(root)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFML_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def cifar(tmp_path: Path) -> tuple[Path, str]:
    write_cifar100(tmp_path / "data")
    return tmp_path / "data", write_split_dir(tmp_path / "splits")


def test_registered() -> None:
    assert DATASETS.get("cifar_fs") is load_cifar_fs


def test_pickle_layout(cifar: tuple[Path, str]) -> None:
    root, split_dir = cifar
    data = load_dataset({"name": "cifar_fs", "root": str(root), "split_dir": split_dir, "download": False})
    assert data.class_names == NAMES and data.images.shape == (6 * 7, 3, 32, 32)
    assert data.images.dtype == torch.uint8 and data.labels.tolist() == [
        c for c in range(6) for _ in range(7)
    ]
    assert {s: [data.class_names[i] for i in data.splits[s]] for s in data.splits} == {
        s: sorted(p[1] for p in pairs) for s, pairs in SPLIT.items()
    }
    for label in range(6):
        rows = data.images[data.labels == label]
        assert (rows[:, 0] == 10 * label).all()
        # sorted file names: test_000000, test_000001, train_000000, ... train_000004
        assert rows[:, 1, 0, 0].tolist() == [150, 151, 100, 101, 102, 103, 104]
        assert torch.equal(rows[0, 2, 5], torch.arange(32, dtype=torch.uint8))
    assert data.mean == MEAN and data.std == STD and data.channels == 3
    assert (
        data.manifest["layout"] == "pickle"
        and data.manifest["split_rule"]["superclass"]["bus"] == "vehicles_1"
    )


def test_second_load_reads_the_cache(cifar: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, split_dir = cifar
    first = load_cifar_fs(str(root), split_dir=split_dir)
    monkeypatch.setattr(cifar_module, "_from_pickles", lambda *a: pytest.fail("decoded again"))
    again = load_cifar_fs(str(root), split_dir=split_dir)
    assert again.content_hash == first.content_hash and torch.equal(again.images, first.images)


def test_resize_and_pickle_protocol_5(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "data", protocol=5)
    data = load_cifar_fs(str(tmp_path / "data"), image_size=16, split_dir=write_split_dir(tmp_path / "s"))
    assert data.images.shape == (42, 3, 16, 16) and data.image_size == 16


def test_purer_folder_layout_equals_pickle(cifar: tuple[Path, str], tmp_path: Path) -> None:
    root, split_dir = cifar
    reference = load_cifar_fs(str(root), split_dir=split_dir)
    folders = tmp_path / "purer"
    for split, pairs in SPLIT.items():
        for _, name in pairs:
            target = folders / f"meta_{split}" / name
            target.mkdir(parents=True)
            rows = reference.images[reference.labels == reference.class_names.index(name)]
            for k, image in enumerate(rows):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(target / f"{k:04d}.png")
    data = load_dataset({"name": "cifar_fs", "root": str(folders), "split_dir": split_dir})
    assert data.manifest["layout"] == "folders"
    assert torch.equal(data.images, reference.images) and data.splits == reference.splits


def test_missing_root_names_dataset_path_tree_and_hint(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as error:
        load_cifar_fs(str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("cifar_fs: ")
    for needle in (str(tmp_path / "nowhere"), "cifar-100-python/{train,test,meta}", "meta_", "download=true"):
        assert needle in message


def test_shipped_lists_name_classes_not_on_disk(cifar: tuple[Path, str]) -> None:
    root, _ = cifar
    with pytest.raises(BenchError, match=r"cifar_fs: 9\d class\(es\) .* first missing: apple, ") as error:
        load_cifar_fs(str(root))
    assert "meta" in str(error.value) and "split_dir" in str(error.value)


def test_truncated_pickle_names_the_file(cifar: tuple[Path, str]) -> None:
    root, split_dir = cifar
    path = root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(BenchError, match=f"cannot read pickle {path}"):
        load_cifar_fs(str(root), split_dir=split_dir)


def test_wrong_shape_names_the_file(tmp_path: Path) -> None:
    base = write_cifar100(tmp_path / "data")
    entry = pickle.loads((base / "test").read_bytes())
    entry[b"data"] = entry[b"data"][:, :100]
    (base / "test").write_bytes(pickle.dumps(entry))
    with pytest.raises(BenchError, match=f"{base / 'test'}: data is uint8 .* expected uint8 \\(N, 3072\\)"):
        load_cifar_fs(str(tmp_path / "data"), split_dir=write_split_dir(tmp_path / "s"))


def test_pickle_with_foreign_globals_is_refused(cifar: tuple[Path, str]) -> None:
    root, split_dir = cifar

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    (root / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"fine_label_names": Evil()}))
    with pytest.raises(BenchError, match="refusing to load global builtins.print"):
        load_cifar_fs(str(root), split_dir=split_dir)


def test_corrupt_png_in_folder_layout_names_the_file(tmp_path: Path) -> None:
    split = {"train": [["a", "x"]], "val": [["a", "y"]], "test": [["a", "z"]]}
    for folder, name in (("meta_train", "x"), ("meta_val", "y"), ("meta_test", "z")):
        (tmp_path / "d" / folder / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "d" / folder / name / "0.png")
    bad = tmp_path / "d" / "meta_val" / "y" / "0.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(BenchError, match=f"cannot decode image {bad}"):
        load_cifar_fs(str(tmp_path / "d"), split_dir=write_split_dir(tmp_path / "s", split))


def test_folder_layout_missing_class_is_listed(tmp_path: Path) -> None:
    split = {"train": [["a", "x"], ["a", "w"]], "val": [["a", "y"]], "test": [["a", "z"]]}
    for folder, name in (("meta_train", "x"), ("meta_val", "y"), ("meta_test", "z")):
        (tmp_path / "d" / folder / name).mkdir(parents=True)
    with pytest.raises(BenchError, match=r"1 class\(es\) .*/meta_train; first missing: w;"):
        load_cifar_fs(str(tmp_path / "d"), split_dir=write_split_dir(tmp_path / "s", split))


def test_inspect_root(cifar: tuple[Path, str], tmp_path: Path) -> None:
    root, split_dir = cifar
    status = inspect_root(str(root), split_dir=split_dir, image_size=32)
    assert status.found and status.classes_per_split == {"train": 3, "val": 1, "test": 2}
    assert not inspect_root(str(tmp_path / "nowhere")).found
    partial = inspect_root(str(root))
    assert partial.found and partial.classes_per_split is None and "first missing" in partial.detail


def test_a_half_copied_dataset_names_what_is_missing(tmp_path: Path) -> None:
    base = tmp_path / "cifar" / "cifar-100-python"
    base.mkdir(parents=True)
    for name in ("train", "test"):  # no meta
        (base / name).write_bytes(b"x")
    with pytest.raises(BenchError, match=r"cifar_fs: incomplete dataset at .*cifar-100-python: missing meta"):
        load_cifar_fs(str(tmp_path / "cifar"))
