"""The CPU max-pooling fast path equals F.max_pool2d: values, gradients and second-order gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import zoos.pooling as pooling
from bench.learners.maml import FineTuneLearner, maml_task_loss, module_params
from bench.tasks import Episode
from tests.fixtures.conv4_order import relu_before_pool
from zoos.architectures import build_model
from zoos.pooling import max_pool_2x2


@pytest.mark.parametrize("shape", [(5, 32, 32, 32), (3, 4, 7, 7), (2, 3, 9, 6), (1, 1, 2, 2)])
def test_values_and_gradients_equal_torch(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.randn(F.max_pool2d(x, 2).shape, generator=torch.Generator().manual_seed(1))
    ours = max_pool_2x2(x)
    assert ours.is_contiguous() and torch.equal(ours, F.max_pool2d(x, 2))
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_torch,) = torch.autograd.grad((F.max_pool2d(x, 2) * weights).sum(), x)
    assert torch.equal(grad_ours, grad_torch)


def test_double_backward_matches_gradgradcheck():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(max_pool_2x2, (x,))
    assert torch.autograd.gradgradcheck(max_pool_2x2, (x,))


def test_channels_last_and_non_cpu_style_inputs_take_torch_path(monkeypatch):
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    calls = []
    monkeypatch.setattr(pooling._CpuMaxPool2x2, "apply", lambda t: calls.append(t) or F.max_pool2d(t, 2))
    assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2)) and not calls
    max_pool_2x2(x.contiguous())
    assert len(calls) == 1


def _random_task(seed: int) -> Episode:
    """A 5-way 1-shot task of random 3x32x32 images with 3 queries per class."""
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.randn(5, 3, 32, 32, generator=g),
        torch.arange(5),
        torch.randn(15, 3, 32, 32, generator=g),
        torch.arange(5).repeat_interleave(3),
        torch.arange(5),
    )


def test_second_order_maml_meta_gradient_equals_torch_pooling(monkeypatch):
    model = build_model("conv4", 5, 32, 3, torch.Generator().manual_seed(0), width=8, batch_stat_bn=True)
    task = _random_task(2)

    def meta_gradient() -> list[torch.Tensor]:
        loss, _ = maml_task_loss(model, module_params(model), task, 2, 0.1, second_order=True)
        return list(torch.autograd.grad(loss, list(model.parameters())))

    ours = meta_gradient()
    monkeypatch.setattr(pooling, "max_pool_2x2", lambda t: F.max_pool2d(t, 2))
    reference = meta_gradient()
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def test_channels_last_fine_tuning_matches_nchw():
    model = build_model("conv4", 5, 32, 3, torch.Generator().manual_seed(0), width=16, batch_stat_bn=True)
    g = torch.Generator().manual_seed(3)
    support, query = torch.randn(5, 3, 32, 32, generator=g), torch.randn(75, 3, 32, 32, generator=g)
    logits = {
        cl: FineTuneLearner(model, 0.01, channels_last=cl).adapt(support, torch.arange(5))(query)
        for cl in (False, True)
    }
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-4, atol=1e-4)
    assert FineTuneLearner(model, 0.01).channels_last  # the CPU default


@pytest.mark.parametrize("batch_stat_bn", [True, False], ids=["meta_model", "member"])
def test_conv4_pool_before_relu_gives_the_reference_orders_bits(batch_stat_bn):
    """conv4 pools before its ReLU (faster); values, gradients and MAML meta-gradients are unchanged."""
    model = build_model(
        "conv4", 5, 32, 3, torch.Generator().manual_seed(0), width=8, batch_stat_bn=batch_stat_bn
    )
    if not batch_stat_bn:  # a trained member: non-trivial running statistics, eval mode
        model.train()(torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(4)) + 0.5)
        model.eval()
    reference = relu_before_pool(copy.deepcopy(model))
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5), requires_grad=True)
    ours, theirs = model(x), reference(x)
    assert torch.equal(ours, theirs)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(6))
    grads = [
        torch.autograd.grad((out * weights).sum(), [x, *m.parameters()])
        for out, m in ((ours, model), (theirs, reference))
    ]
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    if batch_stat_bn:  # second order, as PURER's meta-training differentiates it
        task = _random_task(7)
        meta = []
        for m in (model, reference):
            loss, _ = maml_task_loss(m, module_params(m), task, 2, 0.1, second_order=True)
            meta.append(torch.autograd.grad(loss, list(m.parameters())))
        for a, b in zip(*meta, strict=True):
            assert torch.equal(a, b)
