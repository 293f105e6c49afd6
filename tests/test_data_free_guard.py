"""The data-free guard as the harness applies it, not only the context manager.

A test-only method whose ``meta_train`` loads the dataset through the harness's own loader and reads
images (``read_rows``, the guarded accessor) must fail with DataFreeViolation when it is data-free,
through ``bench.app.meta_train`` and through ``run_one`` (which records the run as failed). The same
method declaring ``uses_real_data`` must go through: the tests fail whether the guard is removed from
``meta_train`` or wrongly applied to oracles.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

import bench.app as app
from baselines.random_init import RandomInit
from bench.data import load_dataset
from bench.errors import BenchError, DataFreeViolation
from bench.method import METHODS, Budget, Learner, MethodContext
from bench.records import read_records
from tests.conftest import SMALL_GLYPHS

READER, ORACLE = "guard_test_reader", "guard_test_oracle"
CONTEXT = MethodContext(n_way=5, k_shot=1, image_size=32, channels=3, device=torch.device("cpu"), seed=0)


class _Reader(RandomInit):
    """Test-only data-free method that reads real images mid-meta-training (random init otherwise)."""

    def meta_train(self, zoo, budget: Budget, gen: torch.Generator) -> Learner:  # noqa: ANN001 - Zoo
        """Load glyphs through the harness loader, read rows 0..3 (4, C, H, W), then draw the init."""
        dataset = load_dataset(SMALL_GLYPHS)  # loading (metadata) passes the guard; pixels do not
        self.train_stats["dataset_loaded"] = 1.0
        rows = dataset.read_rows(torch.arange(4))
        self.train_stats["real_rows_read"] = float(rows.shape[0])
        return super().meta_train(zoo, budget, gen)


class _Oracle(_Reader):
    """The same reader declaring real data: the harness must leave it unguarded."""

    uses_real_data = True


@pytest.fixture
def reader_methods() -> Iterator[None]:
    """Register the two test-only methods; afterwards the registry is exactly as before."""
    before = METHODS.names()  # runs discovery first, so nothing else is added while they are in
    try:
        METHODS.register(READER)(_Reader)
        METHODS.register(ORACLE)(_Oracle)
        yield
    finally:
        for name in (READER, ORACLE):
            METHODS._entries.pop(name, None)  # noqa: SLF001 - Registry has no unregister
    assert METHODS.names() == before


def _method(name: str) -> _Reader:
    cls = METHODS.get(name)
    return cls(cls.Config(name=name), CONTEXT)


def test_app_meta_train_blocks_a_data_free_method_reading_real_images(reader_methods, small_glyphs):
    cfg = OmegaConf.create({"method": {"name": READER}})
    method = _method(READER)
    with pytest.raises(DataFreeViolation, match=rf"method '{READER}' read images of dataset 'glyphs'"):
        app.meta_train(cfg, method, None, Budget(meta_iterations=1), seed=0)
    assert "real_rows_read" not in method.train_stats
    assert method.train_stats["dataset_loaded"] == 1.0  # so read_rows is what refused
    assert small_glyphs.read_rows(torch.tensor([0])).shape[0] == 1  # the guard ends with the call


def test_app_meta_train_leaves_a_real_data_method_unguarded(reader_methods):
    cfg = OmegaConf.create({"method": {"name": ORACLE}})
    method = _method(ORACLE)
    learner, seconds = app.meta_train(cfg, method, None, Budget(meta_iterations=1), seed=0)
    assert isinstance(learner, Learner) and seconds > 0
    assert method.train_stats["real_rows_read"] == 4


def _compose(name: str, results: Path) -> DictConfig:
    overrides = ["experiment=smoke", "method=random_init", f"method.name={name}", "tracking=none"]
    overrides += [f"paths.results={results}", "budget.meta_iterations=1", "eval.limit=2"]
    with initialize_config_module("bench.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def test_run_one_records_a_data_free_method_reading_real_images_as_failed(reader_methods, tmp_path):
    with pytest.raises(BenchError, match=rf"failed and was recorded as such: method '{READER}' read images"):
        app.run_one(_compose(READER, tmp_path))
    (record,) = read_records(tmp_path / "runs" / "smoke")
    assert record.status == "failed" and record.method == READER and not record.metrics
    assert record.error.startswith("DataFreeViolation: ") and record.data_free


def test_run_one_finishes_the_same_reader_declared_as_an_oracle(reader_methods, tmp_path):
    app.run_one(_compose(ORACLE, tmp_path))
    (record,) = read_records(tmp_path / "runs" / "smoke")
    assert record.status == "ok" and record.method == ORACLE
    assert record.real_data == "meta_train" and not record.data_free
    assert record.train_stats["real_rows_read"] == 4


def test_the_guard_also_covers_the_images_field_but_not_metadata(small_glyphs):
    """``dataset.images`` is the second door to the pixels: guarded too; shape facts stay readable."""
    from bench.data import forbid_real_data

    with forbid_real_data("sneaky"):
        with pytest.raises(DataFreeViolation, match=r"method 'sneaky' read images of dataset 'glyphs'"):
            small_glyphs.images[:1].clone()
        assert small_glyphs.image_size == small_glyphs.describe()["image_size"] > 0
    assert small_glyphs.images.shape[0] == small_glyphs.describe()["n_images"]  # outside: allowed


def test_run_one_selects_on_meta_val_and_keeps_the_test_split_for_the_labelled_probe(monkeypatch, tmp_path):
    """The probe a method selects with reads the val split; only the labelled test probe reads test."""
    made, built = [], []
    real_probe, real_build = app.make_probe, app.build_method

    def spy_probe(dataset, split, *args, **kwargs):  # noqa: ANN001, ANN202
        probe = real_probe(dataset, split, *args, **kwargs)
        made.append((probe, split))
        return probe

    def spy_build(cfg, context):  # noqa: ANN001, ANN202
        built.append(real_build(cfg, context))
        return built[-1]

    monkeypatch.setattr(app, "make_probe", spy_probe)
    monkeypatch.setattr(app, "build_method", spy_build)
    cfg = _compose("random_init", tmp_path)
    app.run_one(cfg)
    (method,) = built
    splits = {id(probe): split for probe, split in made}
    assert splits[id(method.validate)] == "val"
    assert splits[id(method.test_probe)] == cfg.task.split == "test"
