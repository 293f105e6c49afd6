"""MAML meta-gradient against a float64 central finite-difference check."""

from __future__ import annotations

import pytest
import torch

from bench.learners.maml import FineTuneLearner, forward, inner_loop, maml_task_loss, module_params
from bench.tasks import Episode
from zoos.architectures import build_model


def _tiny_task(generator: torch.Generator) -> Episode:
    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 1, 16, 16, generator=generator, dtype=torch.float64)

    return Episode(
        images(4),
        torch.tensor([0, 0, 1, 1]),
        images(6),
        torch.tensor([0, 0, 0, 1, 1, 1]),
        torch.tensor([0, 1]),
    )


def _setup():
    gen = torch.Generator().manual_seed(0)
    model = build_model("conv4", 2, 16, 1, gen, width=3, batch_stat_bn=True).double()
    return model, _tiny_task(gen), gen


def _directional_fd(model, params, task, direction, eps=1e-6, **kwargs) -> float:
    def loss_at(scale: float) -> float:
        shifted = {k: (v + scale * direction[k]).detach().requires_grad_(True) for k, v in params.items()}
        return float(maml_task_loss(model, shifted, task, **kwargs)[0].detach())

    return (loss_at(eps) - loss_at(-eps)) / (2 * eps)


def test_second_order_meta_gradient_matches_finite_differences():
    model, task, gen = _setup()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in module_params(model).items()}
    kwargs = {"steps": 2, "lr": 0.1, "second_order": True}
    loss, _ = maml_task_loss(model, params, task, **kwargs)
    grads = torch.autograd.grad(loss, list(params.values()))
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
        analytic = sum(float((g * direction[k]).sum()) for k, g in zip(params, grads, strict=True))
        numeric = _directional_fd(model, params, task, direction, **kwargs)
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


def test_first_order_gradient_differs_from_the_true_meta_gradient():
    """Guards the check above: FOMAML drops the Hessian term, so it must not pass the same check."""
    model, task, gen = _setup()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in module_params(model).items()}
    loss, _ = maml_task_loss(model, params, task, steps=2, lr=0.1, second_order=False)
    grads = torch.autograd.grad(loss, list(params.values()))
    direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    analytic = sum(float((g * direction[k]).sum()) for k, g in zip(params, grads, strict=True))
    numeric = _directional_fd(model, params, task, direction, steps=2, lr=0.1, second_order=True)
    assert abs(analytic - numeric) > 1e-4 * max(1.0, abs(numeric))


def test_inner_loop_updates_every_parameter_and_keeps_init():
    """One SGD step on every parameter: adapted = init - lr * grad, and the init is left alone.

    (Conv biases feeding batch-statistics BN have a true gradient of 0, so whether float noise moves
    them is host-dependent; an earlier "every parameter changed" check failed on an AMD host.)
    """
    model, task, _ = _setup()
    params = {k: v.detach().clone() for k, v in module_params(model).items()}
    before = {k: v.clone() for k, v in params.items()}
    adapted = inner_loop(model, params, task.support_x, task.support_y, 1, 0.1, create_graph=False)
    assert set(adapted) == set(params)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = torch.nn.functional.cross_entropy(forward(model, leaves, task.support_x), task.support_y)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    for k in params:
        assert torch.allclose(adapted[k], before[k] - 0.1 * grads[k], rtol=0, atol=1e-12), k
        assert torch.equal(params[k], before[k]), k  # the init is not modified in place
    moved = {k for k in params if not torch.equal(adapted[k], before[k])}
    assert moved >= {k for k, g in grads.items() if float(g.abs().max()) > 1e-9}
    assert any(k.endswith("weight") for k in moved) and "head.weight" in moved


def test_readouts_equal_separate_adaptations():
    model, task, _ = _setup()
    learner = FineTuneLearner(model, inner_lr=0.1)
    both = learner.adapt_readouts(task.support_x, task.support_y, [1, 3])
    only_three = learner.adapt_readouts(task.support_x, task.support_y, [3])[3]
    assert torch.allclose(both[3](task.query_x), only_three(task.query_x))
    assert not torch.allclose(both[1](task.query_x), both[3](task.query_x))


def test_batch_stat_bn_has_no_buffers_and_is_transductive():
    model, _, _ = _setup()
    assert dict(model.named_buffers()) == {}
    assert FineTuneLearner(model, 0.01).transductive


def test_a_run_stopped_by_max_seconds_resumes_to_the_same_model_without_training_more(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import bench.learners.episodic as episodic
    from bench.learners.episodic import LoopCheckpoint, meta_train_loop

    calls = []
    clock = SimpleNamespace(now=0.0)  # a scripted clock: no dependence on this machine's speed
    monkeypatch.setattr(episodic, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def loss(model: torch.nn.Module, task: None) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        clock.now += 0.2  # iteration k ends at 0.2 k s: the 0.5 s budget stops it after iteration 3
        return (model(torch.ones(1, 2)) - 3.0).pow(2).sum(), torch.tensor(50.0)

    def run() -> tuple[torch.Tensor, int]:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        checkpoint = LoopCheckpoint(tmp_path / "checkpoint.pt", every=2)  # periodic save at 2 only
        result = meta_train_loop(
            model, lambda it: [None], loss, None, 100, 0.1, 10**6, None, 0.5, "toy", checkpoint=checkpoint
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()]), result.iterations

    first, done = run()
    assert done == 3  # stopped between periodic checkpoints
    calls.clear()
    again, resumed = run()  # the budget is spent: it must not train past the stopping point
    assert calls == [] and resumed == done and torch.equal(first, again)


def test_meta_step_refuses_an_unknown_reduction_naming_the_valid_ones():
    from bench.errors import BenchError
    from bench.learners.maml import meta_step

    model, task, _ = _setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(BenchError, match="outer reduce 'Sum' unknown; valid: sum, mean"):
        meta_step(model, optimizer, [task], 1, 0.01, reduce="Sum")


def test_the_loop_selects_the_first_best_meta_val_score_and_ends_with_its_weights():
    """Scripted meta-val scores 40, 55, 50, 55: iteration 2 is selected (ties keep the earlier one)."""
    from bench.learners.episodic import meta_train_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    scores, snapshots = iter([40.0, 55.0, 50.0, 55.0]), {}

    def loss(model: torch.nn.Module, task: None) -> tuple[torch.Tensor, torch.Tensor]:
        return (model(torch.ones(1, 2)) - 3.0).pow(2).sum(), torch.tensor(50.0)

    def validate(learner: FineTuneLearner) -> float:
        snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in learner.model.state_dict().items()}
        return next(scores)

    result = meta_train_loop(
        model,
        lambda it: [None],
        loss,
        lambda m: FineTuneLearner(m, 0.1),
        4,
        0.1,
        1,
        validate,
        description="toy",
    )
    assert result.selected_iteration == 2 and result.selected_val == 55.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[2][key]) and not torch.equal(value, snapshots[4][key]), key
    assert [row.get("val_acc") for row in result.history] == [40.0, 55.0, 50.0, 55.0]
