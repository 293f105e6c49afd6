"""TGR: grouping of dissimilar members, Fisher similarity, probe opt-in."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.tgr import ProbeConfig, spectral_groups
from bench.errors import BenchError
from bench.method import METHODS, Budget, MethodContext

CPU = torch.device("cpu")


def test_groups_gather_mutually_dissimilar_members():
    block = torch.tensor([0, 0, 0, 1, 1, 1])
    similarity = (block[:, None] != block[None, :]).double()  # similar across blocks, dissimilar within
    similarity.fill_diagonal_(1.0)
    groups = spectral_groups(similarity, 2, torch.Generator().manual_seed(0))
    assert sorted(groups) == [[0, 1, 2], [3, 4, 5]]
    assert sorted(x for g in spectral_groups(similarity, 10, torch.Generator()) for x in g) == list(range(6))


def _tgr(**changes):  # noqa: ANN003, ANN202
    cls = METHODS.get("tgr")
    smoke = {"name": "tgr", "ngf": 4, "nz": 8, "n_query": 3, "images_per_class": 4, "embed_per_class": 4}
    smoke.update({"generate_iterations": 2, "select_every": 10**6, "members_per_epoch": 2, "groups": 2})
    smoke.update(changes)
    return cls(dataclasses.replace(cls.Config(), **smoke), MethodContext(5, 1, 32, 3, CPU, 0))


def test_tgr_embeds_groups_and_trains_without_outside_knowledge(tiny_zoo):
    method = _tgr(probe=ProbeConfig(epochs=2))
    embedding_stats = {"member_inversions": 0.0, "inversion_seconds": 0.0}
    similarity = method._similarity(
        tiny_zoo, {k: torch.Generator().manual_seed(1) for k in ("synth", "probe")}, embedding_stats
    )
    assert embedding_stats["embedding_inversions"] == 3 == embedding_stats["member_inversions"]
    assert embedding_stats["embedding_seconds"] == embedding_stats["inversion_seconds"] > 0
    assert similarity.shape == (3, 3) and torch.allclose(similarity, similarity.T)
    assert torch.allclose(similarity.diagonal(), torch.ones(3, dtype=similarity.dtype))
    learner = method.meta_train(tiny_zoo, Budget(meta_iterations=3), torch.Generator())
    stats = method.train_stats
    assert stats["uses_external_model"] == 0.0 and stats["epochs"] >= 1 and 1 <= stats["groups"] <= 2
    assert 3 + stats["epochs"] <= stats["member_inversions"] <= 3 + 2 * stats["epochs"]  # embedding + epochs
    assert stats["embedding_inversions"] == 3  # one per member, counted apart from the epochs'
    assert stats["epoch_members"] == stats["member_inversions"] - 3  # each epoch member inverted once
    assert 1 <= stats["epoch_members_mean"] <= 2 and 0 <= stats["short_epochs"] <= stats["epochs"]
    assert 0 < stats["embedding_seconds"] < stats["inversion_seconds"]
    epoch_inversions = stats["member_inversions"] - stats["embedding_inversions"]
    assert stats["inversion_seconds_per_member"] == pytest.approx(
        (stats["inversion_seconds"] - stats["embedding_seconds"]) / epoch_inversions
    )
    assert stats["inversion_seconds_per_member"] > 0
    assert learner.adapt(torch.randn(5, 3, 32, 32), torch.arange(5))(torch.randn(2, 3, 32, 32)).shape == (
        2,
        5,
    )


def test_the_paper_probe_is_opt_in_local_and_named_when_missing(tiny_zoo, tmp_path):
    method = _tgr(probe=ProbeConfig(weights=str(tmp_path / "resnet34.pt"), epochs=1))
    with pytest.raises(
        BenchError, match=r"probe.weights=.*resnet34.pt' does not exist; put a torchvision resnet34"
    ):
        method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    (tmp_path / "resnet34.pt").write_bytes(b"not a state dict")
    with pytest.raises(BenchError, match="is not a resnet34 state dict"):
        method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())


def test_the_paper_probe_head_starts_from_the_run_generator(tmp_path):
    import torchvision

    weights = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), weights)
    method = _tgr(probe=ProbeConfig(weights=str(weights), epochs=1))
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    heads = []
    for global_seed in (1, 2):  # the global RNG differs between the calls; the run generator does not
        torch.manual_seed(global_seed)
        net, _ = method._external_probe(
            weights, 2, [(images, None)], [[0, 1]], torch.Generator().manual_seed(0)
        )
        heads.append(net.fc.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])


def test_aligned_step_with_zero_shift_is_an_adam_step_on_the_mean_member_gradient():
    from bench.learners.maml import module_params
    from zoos.meta_model import fresh_meta_model

    method = _tgr(align_step=0.0, inner_steps=1)
    gen = torch.Generator().manual_seed(3)
    tasks = [
        method._member_task(
            torch.randn(20, 3, 32, 32, generator=gen), torch.randn(20, 5, generator=gen), 5, gen
        )
    ]
    tasks.append(
        method._member_task(
            torch.randn(20, 3, 32, 32, generator=gen), torch.randn(20, 5, generator=gen), 5, gen
        )
    )
    model = fresh_meta_model(method.context, 32)
    twin = fresh_meta_model(method.context, 32)
    params = module_params(twin)
    grads = [torch.autograd.grad(method._member_loss(twin, params, t), list(params.values())) for t in tasks]
    manual = torch.optim.Adam(twin.parameters(), lr=1e-3)
    for p, *gs in zip(twin.parameters(), *grads, strict=True):
        p.grad = torch.stack(gs).mean(0)
    manual.step()
    method._aligned_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), tasks)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_aligned_step_re_evaluates_each_member_gradient_at_its_shifted_point():
    """On quadratic member losses L_i = a_i/2 ||theta - c_i||^2 and plain SGD (lr 1), the step is
    -mean_i a_i (theta - alpha (g_mean - g_i) - c_i), with g_i = a_i (theta - c_i): by hand."""
    from bench.learners.maml import module_params
    from zoos.meta_model import fresh_meta_model

    alpha = 0.1
    method = _tgr(align_step=alpha, inner_steps=1)
    model = fresh_meta_model(method.context, 32)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(4)
    tasks = [(1.0, {n: torch.randn(v.shape, generator=gen) for n, v in theta.items()})]
    tasks.append((3.0, {n: torch.randn(v.shape, generator=gen) for n, v in theta.items()}))

    def quadratic(_model, params, task):  # noqa: ANN001, ANN202
        a, centre = task
        return sum(0.5 * a * ((params[n] - centre[n]) ** 2).sum() for n in params)

    method._member_loss = quadratic
    method._aligned_step(model, torch.optim.SGD(model.parameters(), lr=1.0), tasks)
    for name, start in theta.items():
        g = [a * (start - c[name]) for a, c in tasks]
        g_mean = (g[0] + g[1]) / 2
        again = [a * (start - alpha * (g_mean - gi) - c[name]) for (a, c), gi in zip(tasks, g, strict=True)]
        expected = start - (again[0] + again[1]) / 2
        assert torch.allclose(module_params(model)[name], expected, atol=1e-5), name
        flipped = [a * (start + alpha * (g_mean - gi) - c[name]) for (a, c), gi in zip(tasks, g, strict=True)]
        assert not torch.allclose(start - (flipped[0] + flipped[1]) / 2, expected, atol=1e-3)


def test_first_order_member_loss_gives_the_query_gradient_at_the_adapted_point():
    """second_order: false: d loss / d theta = the query gradient at theta' (no crash, no zero)."""
    import torch.nn.functional as F

    from baselines._kd import kd_loss
    from bench.learners.maml import forward, inner_loop, module_params
    from zoos.meta_model import fresh_meta_model

    method = _tgr(second_order=False, inner_steps=1)
    gen = torch.Generator().manual_seed(3)
    task = method._member_task(
        torch.randn(20, 3, 32, 32, generator=gen), torch.randn(20, 5, generator=gen), 5, gen
    )
    model = fresh_meta_model(method.context, 32)
    params = module_params(model)
    grads = torch.autograd.grad(method._member_loss(model, params, task), list(params.values()))
    sx, sy, qx, qy, qt = task
    adapted = {
        k: v.detach().requires_grad_(True)
        for k, v in inner_loop(model, params, sx, sy, 1, method.cfg.inner_lr, False).items()
    }
    logits = forward(model, adapted, qx)
    loss = kd_loss(logits, qt, method.cfg.kd_loss, method.cfg.kd_temperature) + F.cross_entropy(logits, qy)
    expected = torch.autograd.grad(loss, list(adapted.values()))
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)
