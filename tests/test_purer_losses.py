"""PURER's inversion terms against hand-computed values; BN moments; folded teachers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from purer.inversion import (
    BNStatRecorder,
    InversionWeights,
    batch_moments,
    bn_stat_loss,
    inversion_loss,
    random_roll,
    running_targets,
    total_variation,
)
from purer.teachers import FoldedConv4Teacher, HookedTeacher, teacher_forward
from tests.benchmarks.purer_shapes import synthetic_conv4_zoo
from zoos.resnets import ResNet


def test_total_variation_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 7.0]]]])
    horizontal = math.sqrt(1.0**2 + 4.0**2)  # 0-1, 3-7
    vertical = math.sqrt(3.0**2 + 6.0**2)  # 0-3, 1-7
    diagonal = abs(3.0 - 1.0)  # x[1,0] - x[0,1]
    anti = abs(0.0 - 7.0)  # x[0,0] - x[1,1]
    assert float(total_variation(x)) == pytest.approx(horizontal + vertical + diagonal + anti)


def test_bn_stat_loss_is_plain_l2_of_mean_and_var_differences():
    moments = [(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))]
    targets = [(torch.tensor([1.0, 0.0]), torch.tensor([4.0, 5.0]))]
    expected = math.sqrt(3.0**2 + 4.0**2) + 2.0  # ||var_t - var|| + ||mu_t - mu||
    assert float(bn_stat_loss(moments, targets)) == pytest.approx(expected)


def test_batch_moments_match_biased_variance_and_gradcheck():
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64) * 2 + 1
    mean, var = batch_moments(x)
    assert torch.allclose(mean, x.mean((0, 2, 3)))
    assert torch.allclose(var, x.var((0, 2, 3), unbiased=False))
    assert torch.autograd.gradcheck(batch_moments, (x.requires_grad_(True),))


def test_batch_moments_accumulate_bf16_input_in_float32():
    # Under bf16 autocast the conv outputs are bfloat16; E[x^2] - E[x]^2 in bf16 loses ~27 % of
    # the variance at mean 3, std 0.5. The moments must match float64 moments of the same values.
    x = (torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 3).bfloat16()
    exact = x.double()
    mean, var = batch_moments(x)
    assert mean.dtype == torch.float32 and var.dtype == torch.float32
    assert torch.allclose(var.double(), exact.var((0, 2, 3), unbiased=False), rtol=1e-4)
    assert torch.allclose(mean.double(), exact.mean((0, 2, 3)), rtol=1e-5)
    leaf = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(batch_moments(leaf)[1].sum(), leaf)[0]
    expected = 2 * (exact - exact.mean((0, 2, 3), keepdim=True)) / (64 * 8 * 8)
    assert grad.dtype == torch.bfloat16
    assert torch.allclose(grad.double(), expected, rtol=2e-2, atol=1e-6)


def test_random_roll_offsets_stay_within_jitter_on_the_spatial_dims():
    x = torch.arange(2 * 3 * 7 * 7, dtype=torch.float32).view(2, 3, 7, 7)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        rolled = random_roll(x, 2, generator)
        matches = [
            (dx, dy)
            for dx in range(-3, 4)
            for dy in range(-3, 4)
            if torch.equal(rolled, torch.roll(x, shifts=(dx, dy), dims=(2, 3)))
        ]
        assert len(matches) == 1, "a roll must be one circular shift of H and W, nothing else"
        seen.add(matches[0])
    assert seen == {(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)}


def test_cross_entropy_and_l2_terms_by_hand():
    # A linear "teacher" with fixed logits: CE of logits (0, ln 3) for target 1 is ln(4/3);
    # the L2 term is the Frobenius norm of the (rolled = unrolled, jitter 0) images.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    images = torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]]])

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, list]:
        return logits + 0 * x.sum(), []

    weights = InversionWeights(ce=1.0, bn=0.0, tv=0.0, l2=1.0, jitter=0)
    loss, parts = inversion_loss(forward, [], images, torch.tensor([1]), weights, torch.Generator())
    assert float(parts["ce"]) == pytest.approx(math.log(4.0 / 3.0))
    assert float(parts["l2"]) == pytest.approx(5.0)
    assert float(loss) == pytest.approx(math.log(4.0 / 3.0) + 5.0)


def test_random_roll_is_circular_and_seeded():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    a = random_roll(x, 2, torch.Generator().manual_seed(3))
    b = random_roll(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and sorted(a.flatten().tolist()) == sorted(x.flatten().tolist())
    assert torch.equal(random_roll(x, 0, torch.Generator()), x)


def test_inversion_loss_combines_terms_with_coefficients():
    zoo = synthetic_conv4_zoo(n_members=1, n_classes=5)
    teacher = zoo.members[0].model
    images = torch.randn(10, 3, 32, 32)
    targets = torch.arange(5).repeat(2)
    weights = InversionWeights(ce=1.0, bn=0.01, tv=1e-4, l2=1e-5, jitter=0)
    loss, parts = inversion_loss(
        HookedTeacher(teacher), running_targets(teacher), images, targets, weights, torch.Generator()
    )
    ce = F.cross_entropy(teacher(images), targets)
    recorder = BNStatRecorder(teacher)
    with recorder:
        teacher(images)
    bn = bn_stat_loss(recorder.moments, running_targets(teacher))
    expected = ce + 0.01 * bn + 1e-4 * total_variation(images) + 1e-5 * images.norm()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(parts["ce"]) == pytest.approx(float(ce), rel=1e-5)


def test_hooks_record_bn_inputs_in_forward_order():
    zoo = synthetic_conv4_zoo(n_members=1, n_classes=5)
    teacher = zoo.members[0].model
    x = torch.randn(8, 3, 32, 32)
    logits, moments = HookedTeacher(teacher)(x)
    first_bn_input = teacher.features[0](x)
    assert len(moments) == 4
    assert torch.allclose(moments[0][0], first_bn_input.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(moments[0][1], first_bn_input.var((0, 2, 3), unbiased=False), atol=1e-5)
    # every BN layer: capture each BN's input with plain (non-fused) statistics
    bn_inputs: list[torch.Tensor] = []
    layers = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    handles = [m.register_forward_pre_hook(lambda _m, inp: bn_inputs.append(inp[0])) for m in layers]
    try:
        teacher(x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(bn_inputs) == 4
    for (mean, var), captured in zip(moments, bn_inputs, strict=True):
        assert torch.allclose(mean, captured.mean((0, 2, 3)), atol=1e-5)
        assert torch.allclose(var, captured.var((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)
    assert all(not layer._forward_pre_hooks for layer in layers), "hooks must be removed"
    assert torch.allclose(logits, teacher(x))


def test_folded_teacher_equals_hooked_teacher():
    zoo = synthetic_conv4_zoo(n_members=2, n_classes=10)
    x = torch.randn(20, 3, 32, 32, requires_grad=True)
    for member in zoo.members:
        hooked_logits, hooked = HookedTeacher(member.model)(x)
        folded_logits, folded = FoldedConv4Teacher(member.model)(x)
        assert torch.allclose(hooked_logits, folded_logits, atol=1e-4)
        for (m1, v1), (m2, v2) in zip(hooked, folded, strict=True):
            assert torch.allclose(m1, m2, atol=1e-5) and torch.allclose(v1, v2, rtol=1e-4, atol=1e-5)
        targets = running_targets(member.model)
        g1 = torch.autograd.grad(bn_stat_loss(hooked, targets), x)[0]
        g2 = torch.autograd.grad(bn_stat_loss(folded, targets), x)[0]
        assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet10", "conv4"])
def test_a_channels_last_hooked_teacher_equals_the_contiguous_one(arch):
    """Same logits, BN moments and image gradient; the member's own model stays as it was."""
    torch.manual_seed(0)
    model = ResNet((1, 1, 1, 1), 5, 3) if arch == "resnet10" else synthetic_conv4_zoo(1, 5).members[0].model
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):  # non-trivial running statistics
            layer.running_mean.normal_(0, 0.1)
            layer.running_var.uniform_(0.5, 2.0)
    model.eval().requires_grad_(False)
    x = torch.randn(10, 3, 32, 32, requires_grad=True)
    plain, last = HookedTeacher(model), HookedTeacher(model, channels_last=True)
    assert last.model is not model and all(p.is_contiguous() for p in model.parameters())
    first_conv = next(m for m in last.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain_logits, plain_moments = plain(x)
    last_logits, last_moments = last(x)
    assert torch.allclose(plain_logits, last_logits, atol=1e-4)
    for (m1, v1), (m2, v2) in zip(plain_moments, last_moments, strict=True):
        assert torch.allclose(m1, m2, atol=1e-5) and torch.allclose(v1, v2, rtol=1e-4, atol=1e-5)
    targets = running_targets(model)
    g1 = torch.autograd.grad(bn_stat_loss(plain_moments, targets) + plain_logits.sum(), x)[0]
    g2 = torch.autograd.grad(bn_stat_loss(last_moments, targets) + last_logits.sum(), x)[0]
    assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-5)


def test_teacher_forward_folds_conv4_and_hooks_other_models_channels_last_on_cpu():
    conv4 = synthetic_conv4_zoo(1, 5).members[0].model.eval()
    resnet = ResNet((1, 1, 1, 1), 5, 3).eval()
    assert isinstance(teacher_forward(conv4), FoldedConv4Teacher)
    hooked = teacher_forward(resnet)
    assert isinstance(hooked, HookedTeacher) and hooked.channels_last
    assert not teacher_forward(resnet, channels_last=False).channels_last
    unfolded = teacher_forward(conv4, fold=False)
    assert isinstance(unfolded, HookedTeacher) and unfolded.channels_last
