"""FREE: meta-generator recovery (first-order MAML on the generator), BELL, legacy switches."""

from __future__ import annotations

import dataclasses
import logging

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
    assert stats["recovery_seconds"] > 0
    assert stats["recovery_seconds_per_member"] == stats["recovery_seconds"] / stats["member_recoveries"]
    assert stats["bank_classes"] == 10 or stats["bank_classes"] == 15
    assert learner.adapt(torch.randn(5, 3, 32, 32), torch.arange(5))(torch.randn(3, 3, 32, 32)).shape == (
        3,
        5,
    )


def test_free_warm_up_shows_progress(tiny_zoo, monkeypatch, caplog):
    """The generator-only warm-up runs minutes before the first meta-iteration: it has its own bar."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # no terminal: a log line per update
    with caplog.at_level(logging.INFO, logger="bench.progress"):
        _free(warmup_epochs=2).meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    lines = [r.getMessage() for r in caplog.records if r.name == "bench.progress"]
    assert any(line.startswith("free warm-up: 100%") and "2/2" in line for line in lines)


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


def test_the_meta_generator_takes_adam_steps_during_meta_training(tiny_zoo, monkeypatch):
    """FIVE's outer step: the meta-generator's parameters move (1 warm-up epoch + the first epoch)."""
    import baselines.free as free

    made: list[tuple[torch.nn.Module, list[torch.Tensor]]] = []  # (generator, its initial parameters)
    original = free.fresh_generator

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        net = original(*args, **kwargs)
        made.append((net, [p.detach().clone() for p in net.parameters()]))
        return net

    monkeypatch.setattr(free, "fresh_generator", recording)
    method = _free(patience=10**6)
    method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    assert len(made) == 1 and method.train_stats["epochs"] == 2
    meta_gen, initial = made[0]
    moved = [not torch.equal(a, b.detach()) for a, b in zip(initial, meta_gen.parameters(), strict=True)]
    assert all(moved), "every meta-generator tensor takes the epochs' Adam steps"


def test_recovery_sums_the_clones_last_step_gradients_into_the_meta_generator(tiny_zoo):
    """meta_gen.grad = Σ_members the clone's last-step gradient; Adam's first step then moves against it."""
    import copy

    from baselines._generator import fresh_generator

    method = _free()
    cfg = method.cfg
    meta_gen = fresh_generator(cfg.nz, cfg.ngf, 32, 3, tiny_zoo.mean, tiny_zoo.std, torch.Generator(), CPU)
    members, gen = tiny_zoo.members[:2], torch.Generator().manual_seed(0)
    stats = {"member_recoveries": 0.0, "recovery_seconds": 0.0}
    starts, together = [], copy.deepcopy(meta_gen)
    for member in members:  # as one epoch does: both members' clones write into one meta-generator
        starts.append(gen.get_state())
        method._recover(member, together, len(member.spec.classes), None, gen, stats)
    alone = []
    for member, start in zip(members, starts, strict=True):  # each member's gradient on its own
        single = copy.deepcopy(meta_gen)
        method._recover(member, single, len(member.spec.classes), None, gen.set_state(start), stats)
        alone.append([p.grad for p in single.parameters()])
    summed = [a + b for a, b in zip(*alone, strict=True)]
    assert all(torch.equal(p.grad, s) for p, s in zip(together.parameters(), summed, strict=True))
    assert all(g.abs().sum() > 0 for g in alone[0]) and stats["member_recoveries"] == 4
    assert all(p.grad is None for p in meta_gen.parameters())  # clones never touch the original's
    before = [p.detach().clone() for p in together.parameters()]
    torch.optim.Adam(together.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999)).step()
    for old, p, g in zip(before, together.parameters(), summed, strict=True):
        clear = g.abs() > 1e-6  # Adam's first step is -lr·g/(|g| + eps): the sign of -g
        assert torch.equal(torch.sign(p.detach() - old)[clear], -torch.sign(g[clear]))


def test_bell_sets_theta_grad_to_reptile_scale_times_theta_minus_the_clone():
    """With the outer optimiser swapped for SGD(lr 1): theta_new = theta - 67 (theta - theta')."""
    import copy

    from baselines._kd import kd_loss
    from zoos.meta_model import fresh_meta_model

    method = _free()
    assert method.cfg.reptile_scale == 67.0
    model = fresh_meta_model(method.context, 32)
    before = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    recovered = [
        (None, torch.randn(20, 3, 32, 32, generator=gen), torch.randn(20, 5, generator=gen)) for _ in range(2)
    ]
    clone = copy.deepcopy(model)
    inner = torch.optim.Adam(clone.parameters(), lr=method.cfg.bell_lr)
    for _, images, logits in recovered:
        loss = kd_loss(clone(images[:20]), logits[:20, :5])
        inner.zero_grad()
        loss.backward()
        inner.step()
    method._bell({"model": model, "bell": torch.optim.SGD(model.parameters(), lr=1.0)}, recovered)
    for old, new, target in zip(before, model.parameters(), clone.parameters(), strict=True):
        expected = old - 67.0 * (old - target.detach())
        assert torch.allclose(new.detach(), expected, atol=1e-5)
