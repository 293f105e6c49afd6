"""PURER's inversion terms against hand-computed values; BN moments; folded teachers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


def _tv_by_hand(x: torch.Tensor) -> float:
    """The four neighbour-difference norms of x (N, C, H, W), summed, written out element by element."""
    n, c, h, w = x.shape
    sums = [0.0, 0.0, 0.0, 0.0]  # horizontal, vertical, diagonal, anti-diagonal
    v = x.tolist()
    for a in range(n):
        for b in range(c):
            for i in range(h):
                for j in range(w):
                    if j + 1 < w:
                        sums[0] += (v[a][b][i][j] - v[a][b][i][j + 1]) ** 2
                    if i + 1 < h:
                        sums[1] += (v[a][b][i][j] - v[a][b][i + 1][j]) ** 2
                    if i + 1 < h and j + 1 < w:
                        sums[2] += (v[a][b][i + 1][j] - v[a][b][i][j + 1]) ** 2
                        sums[3] += (v[a][b][i][j] - v[a][b][i + 1][j + 1]) ** 2
    return sum(math.sqrt(t) for t in sums)


def test_inversion_loss_scores_the_rolled_images_in_every_term():
    """The teacher, TV and L2 all see the rolled images x~ (purer.md §6.2), with the given weights."""
    images = (torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5) ** 1.5) / 10
    rolled = torch.roll(images, shifts=(1, -2), dims=(2, 3))
    assert abs(_tv_by_hand(rolled) - _tv_by_hand(images)) > 1.0  # the roll matters to TV here
    seen: list[torch.Tensor] = []

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, list]:
        seen.append(x.detach().clone())
        return x.flatten(1)[:, :3], []

    weights = InversionWeights(ce=0.7, bn=0.0, tv=0.3, l2=0.05, jitter=2)
    targets = [2, 0]
    loss, parts = inversion_loss(
        forward, [], images, torch.tensor(targets), weights, None, torch.tensor([1, -2])
    )
    assert torch.equal(seen[0], rolled)
    rows = rolled.flatten(1)[:, :3].tolist()
    ce = (
        sum(math.log(sum(math.exp(z) for z in row)) - row[t] for row, t in zip(rows, targets, strict=True))
        / 2
    )
    tv = _tv_by_hand(rolled)
    l2 = math.sqrt(sum(float(v) ** 2 for v in rolled.flatten()))
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(parts["tv"]) == pytest.approx(tv, rel=1e-5)
    assert float(parts["l2"]) == pytest.approx(l2, rel=1e-5)
    assert float(loss) == pytest.approx(0.7 * ce + 0.3 * tv + 0.05 * l2, rel=1e-5)
    # drawn from a generator instead: still exactly one circular roll within the jitter
    inversion_loss(forward, [], images, torch.tensor(targets), weights, torch.Generator().manual_seed(5))
    offsets = [
        (dx, dy)
        for dx in range(-2, 3)
        for dy in range(-2, 3)
        if torch.equal(seen[-1], torch.roll(images, shifts=(dx, dy), dims=(2, 3)))
    ]
    assert len(offsets) == 1


def test_bn_stat_loss_sums_layers_by_hand():
    moments = [
        (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])),
        (torch.tensor([0.0]), torch.tensor([2.0])),
    ]
    targets = [
        (torch.tensor([1.0, 0.0]), torch.tensor([4.0, 5.0])),  # 5 + 2
        (torch.tensor([-3.0]), torch.tensor([0.5])),  # 1.5 + 3
    ]
    assert float(bn_stat_loss(moments, targets)) == pytest.approx(5.0 + 2.0 + 1.5 + 3.0)


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


def test_hooked_moments_line_up_with_running_targets_on_a_resnet():
    """Forward order of the hooks = ``running_targets``' order, on a resnet with shortcut BNs.

    Each BN's running statistics are set to the (mean, biased var) of its own input on a batch x
    (repeated until fixed: a layer's input depends on the earlier layers' statistics). Then x
    matches every layer, so the BN loss is ~0; any mispairing of layers would not be.
    """
    torch.manual_seed(0)
    model = ResNet((1, 1, 1, 1), 5, 3).eval().requires_grad_(False)
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(layers) > 9  # stem, two per block and the down-sampling shortcuts
    x = torch.randn(16, 3, 32, 32)
    inputs: dict[nn.Module, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda m, inp: inputs.__setitem__(m, inp[0])) for m in layers]
    try:
        for _ in range(len(layers) + 1):
            model(x)
            for layer in layers:
                layer.running_mean.copy_(inputs[layer].mean((0, 2, 3)))
                layer.running_var.copy_(inputs[layer].var((0, 2, 3), unbiased=False))
    finally:
        for handle in handles:
            handle.remove()
    targets = running_targets(model)
    _, moments = HookedTeacher(model)(x)
    assert float(bn_stat_loss(moments, targets)) < 1e-3
    swapped = targets[:]
    swapped[-1], swapped[-2] = swapped[-2], swapped[-1]
    assert float(bn_stat_loss(moments, swapped)) > 0.1


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


def test_a_bn_whose_offset_dwarfs_its_spread_is_hooked_not_folded():
    """Folding recovers var_z from E[y^2] - E[y]^2 of the BN *output*; with a tiny gamma and a large
    beta that cancels in float32 (32 % off at gamma 1e-3, beta 1): such teachers take the hooked path."""
    model = copy.deepcopy(synthetic_conv4_zoo(1, 5).members[0].model).eval()
    bn = model.features[5]  # the second block's BN
    with torch.no_grad():
        bn.weight[0], bn.bias[0], bn.running_var[0] = 1e-3, 1.0, 0.5
    with pytest.raises(ValueError, match="lose float32 precision"):
        FoldedConv4Teacher(model)
    chosen = teacher_forward(model)
    assert isinstance(chosen, HookedTeacher)
    x = torch.randn(40, 3, 32, 32, dtype=torch.float64)
    _, exact = HookedTeacher(copy.deepcopy(model).double())(x)
    _, moments = chosen(x.float())
    assert torch.allclose(moments[1][1].double(), exact[1][1], rtol=1e-4)


def test_a_teacher_without_bn_running_statistics_is_refused_by_name():
    from bench.errors import BenchError
    from zoos.architectures import build_model

    model = build_model("conv4", 5, 32, 3, torch.Generator(), width=32, batch_stat_bn=True).eval()
    assert isinstance(teacher_forward(model), HookedTeacher)  # nothing to fold: no TypeError
    with pytest.raises(BenchError, match="without running statistics"):
        running_targets(model)
