"""First-wave baselines: the class bank (inversion, cross-member tasks), oracle data access."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from baselines._bank import ClassBank, invert_batch
from bench.app import attach_real_data
from bench.errors import BenchError
from bench.method import METHODS, Budget, MethodContext
from bench.tasks import TaskShape
from purer.inversion import InversionWeights
from zoos.averaging import averaged_meta_params

WEIGHTS = InversionWeights(1.0, 0.01, 1e-4, 0.0, 2)


def test_inverted_images_are_classified_as_their_labels_by_the_member(tiny_zoo):
    member = tiny_zoo.members[0]
    gen = torch.Generator().manual_seed(0)
    images = invert_batch(member, 4, 40, 0.25, WEIGHTS, gen, torch.device("cpu"))
    assert images.shape == (20, 3, 32, 32) and not images.requires_grad
    labels = torch.arange(5).repeat_interleave(4)
    with torch.no_grad():
        before = (member.model(torch.randn(20, 3, 32, 32, generator=gen)).argmax(1) == labels).float().mean()
        after = (member.model(images).argmax(1) == labels).float().mean()
    assert after >= 0.9 > before


def test_a_member_inversion_shows_progress_per_adam_step(tiny_zoo, monkeypatch, caplog):
    """A resnet member's inversion runs minutes on a CPU: support and query batches have their bars."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # no terminal: a log line per update
    with caplog.at_level(logging.INFO, logger="bench.progress"):
        ClassBank().add_member(
            tiny_zoo.members[1], 2, 3, 2, 0.25, WEIGHTS, torch.Generator(), torch.device("cpu")
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "bench.progress"]
    for batch in ("support", "query"):
        assert any(line.startswith(f"member 1 {batch}: 100%") and "2/2" in line for line in lines)


def test_bank_tasks_mix_members_with_disjoint_support_and_query(tiny_zoo):
    bank, gen = ClassBank(), torch.Generator().manual_seed(1)
    for member in tiny_zoo.members[:2]:
        bank.add_member(member, 3, 15, 2, 0.25, WEIGHTS, gen, torch.device("cpu"))
    assert bank.n_classes == 10 and bank.images_synthesised == 2 * 5 * (3 + 15)
    owner = {key: i for i, m in enumerate(tiny_zoo.members[:2]) for key in m.class_keys}
    keys, mixed = sorted(bank.support), 0
    for _ in range(20):
        task = bank.sample_task(5, 1, 15, gen)
        assert task.support_x.shape == (5, 3, 32, 32) and task.query_x.shape == (75, 3, 32, 32)
        mixed += len({owner[keys[int(c)]] for c in task.classes}) == 2
        for support in task.support_x:  # support images are never also queries
            assert not (task.query_x == support).flatten(1).all(1).any()
    assert mixed > 0, "tasks must be able to mix classes of different members"
    with pytest.raises(BenchError, match="needs 11"):
        bank.sample_task(11, 1, 15, gen)


@pytest.mark.parametrize("name", METHODS.names())
def test_only_oracles_are_ever_given_the_real_dataset(name, small_glyphs):
    cls = METHODS.get(name)
    context = MethodContext(5, 1, 32, 3, torch.device("cpu"), 0)
    method = cls(dataclasses.replace(cls.Config(), name=name), context)
    attach_real_data(method, small_glyphs, TaskShape(5, 1, 15))
    assert (method.real_data is small_glyphs) == cls.uses_real_data == name.endswith("_oracle")
    assert (method.sample_real_val is not None) == cls.uses_real_val == (name == "tds_real_val")


@pytest.mark.parametrize("init", ["random", "average"])
def test_maml_oracle_starts_from_a_fresh_model_or_the_zoo_average(init, tiny_zoo, small_glyphs):
    cls = METHODS.get("maml_oracle")
    context = MethodContext(5, 1, 32, 3, torch.device("cpu"), 0)
    # outer_lr 0: one meta-iteration leaves the starting point as it was.
    method = cls(
        cls.Config(name="maml_oracle", init=init, outer_lr=0.0, select_every=1, val_episodes=2), context
    )
    attach_real_data(method, small_glyphs, TaskShape(5, 1, 15))
    method.validate = lambda learner: 50.0
    learner = method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator().manual_seed(0))
    average = averaged_meta_params(tiny_zoo, "maml_oracle", 5, True)
    equal = [torch.equal(learner.init_params[k], v) for k, v in average.items()]
    assert all(equal) if init == "average" else not any(equal)


def test_maml_oracle_unknown_init_names_the_valid_ones(tiny_zoo, small_glyphs):
    cls = METHODS.get("maml_oracle")
    method = cls(
        cls.Config(name="maml_oracle", init="zoo"), MethodContext(5, 1, 32, 3, torch.device("cpu"), 0)
    )
    attach_real_data(method, small_glyphs, TaskShape(5, 1, 15))
    with pytest.raises(BenchError, match="init 'zoo' unknown; valid: random, average"):
        method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["maml_oracle", "protonet_oracle"])
def test_oracles_meta_train_on_meta_train_classes_only(name, tiny_zoo, small_glyphs, monkeypatch):
    """Every image an oracle reads while meta-training belongs to a class of the train split."""
    from tests.test_methods import _train

    rows_read: list[torch.Tensor] = []
    original = small_glyphs.read_rows

    def recording(rows: torch.Tensor) -> torch.Tensor:
        rows_read.append(rows.clone())
        return original(rows)

    monkeypatch.setattr(small_glyphs, "read_rows", recording)
    _train(name, tiny_zoo, real_data=small_glyphs)
    assert rows_read, "the oracle read no real images: the check below would be empty"
    classes = set(small_glyphs.labels[torch.cat(rows_read)].unique().tolist())
    assert classes <= set(small_glyphs.split_classes("train"))
    assert len(classes) >= 5


@pytest.mark.parametrize("name", ["bidfmkd", "bidfmkd_zo", "free", "tgr"])
def test_generator_methods_refuse_members_wider_than_the_task_up_front(name, tiny_zoo):
    """5-output members, 3-way tasks: a clear error before training (it crashed mid-training)."""
    from importlib import resources

    import yaml

    from bench.method import validate_method_config

    cls = METHODS.get(name)
    raw = yaml.safe_load((resources.files("bench.conf") / "method" / f"{name}.yaml").read_text())
    method = cls(validate_method_config(cls, raw), MethodContext(3, 1, 32, 3, torch.device("cpu"), 0))
    with pytest.raises(
        BenchError, match=rf"{name} needs members with at most n_way=3 outputs.*member 0 \(5 outputs\)"
    ):
        method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
