"""FREE: meta-generator recovery (first-order MAML on the generator), BELL, legacy switches."""

from __future__ import annotations

import dataclasses

import torch

from baselines.free import FreeLegacy
from bench.method import METHODS, Budget, MethodContext

CPU = torch.device("cpu")


def _free(**changes):  # noqa: ANN003, ANN202
    cls = METHODS.get("free")
    smoke = {"name": "free", "ngf": 4, "nz": 8, "n_query": 3, "images_per_class": 4, "adapt_steps": 2}
    smoke.update({"warmup_epochs": 1, "select_every": 10**6, "members_per_epoch": 2, "patience": 1})
    smoke.update(changes)
    cfg = dataclasses.replace(cls.Config(), **smoke)
    return cls(cfg, MethodContext(5, 1, 32, 3, CPU, 0))


def test_free_records_recovery_time_per_member_and_runs_epochs(tiny_zoo):
    method = _free()
    learner = method.meta_train(tiny_zoo, Budget(meta_iterations=4), torch.Generator())
    stats = method.train_stats
    assert stats["epochs"] >= 2 and stats["bell_steps"] == stats["epochs"] - 1  # 1 warm-up epoch: no BELL
    assert stats["member_recoveries"] == 2 * stats["epochs"]
    assert stats["recovery_seconds_per_member"] > 0
    assert stats["bank_classes"] == 10 or stats["bank_classes"] == 15
    assert learner.adapt(torch.randn(5, 3, 32, 32), torch.arange(5))(torch.randn(3, 3, 32, 32)).shape == (
        3,
        5,
    )


def test_legacy_switches_reproduce_the_reference_quirks(tiny_zoo):
    fixed = _free(patience=10**6)
    fixed.meta_train(tiny_zoo, Budget(meta_iterations=2), torch.Generator())
    last_only = _free(patience=10**6, legacy=FreeLegacy(bank_last_member_only=True))
    last_only.meta_train(tiny_zoo, Budget(meta_iterations=2), torch.Generator())
    assert fixed.train_stats["bank_classes"] == 10 and last_only.train_stats["bank_classes"] == 5
    aliased = _free(patience=10**6, legacy=FreeLegacy(alias_members=True))
    aliased.meta_train(tiny_zoo, Budget(meta_iterations=2), torch.Generator())
    assert aliased.train_stats["bank_classes"] == 5  # both slots are one network: its 5 classes


def test_dfmaml_records_its_inversion_time_per_member_for_the_speed_comparison(tiny_zoo):
    cls = METHODS.get("dfmaml")
    cfg = dataclasses.replace(
        cls.Config(),
        name="dfmaml",
        generate_iterations=2,
        bank_support=2,
        bank_query=3,
        n_query=3,
        select_every=10**6,
    )
    method = cls(cfg, MethodContext(5, 1, 32, 3, CPU, 0))
    method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    assert method.train_stats["inversion_seconds_per_member"] > 0


def test_bell_moves_theta_towards_the_sequentially_distilled_clone():
    from zoos.meta_model import fresh_meta_model

    method = _free()
    model = fresh_meta_model(method.context, 32)
    before = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    recovered = [
        (None, torch.randn(20, 3, 32, 32, generator=gen), torch.randn(20, 5, generator=gen)) for _ in range(2)
    ]
    state = {"model": model, "bell": None}
    import copy

    clone = copy.deepcopy(model)  # replay BELL's inner steps to know where θ' lands
    inner = torch.optim.Adam(clone.parameters(), lr=method.cfg.bell_lr)
    from baselines._kd import kd_loss

    for _, images, logits in recovered:
        loss = kd_loss(clone(images[:20]), logits[:20, :5])
        inner.zero_grad()
        loss.backward()
        inner.step()
    method._bell(state, recovered)
    moved = 0
    for old, new, target in zip(before, model.parameters(), clone.parameters(), strict=True):
        step, wanted = (new.detach() - old), (target.detach() - old)
        changed = wanted.abs() > 1e-8
        assert (torch.sign(step[changed]) == torch.sign(wanted[changed])).all()
        moved += int(changed.sum())
    assert moved > 0
