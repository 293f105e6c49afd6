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
from purer.teachers import FoldedConv4Teacher, HookedTeacher
from tests.benchmarks.purer_shapes import synthetic_conv4_zoo


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
