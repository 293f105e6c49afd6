"""CUDA: the GPU paths compute what the CPU computes, within float tolerance (skipped without a GPU).

Run on a GPU machine with ``pytest -m gpu -n0 tests/test_cuda.py``. Each check builds the same
objects on the CPU and on CUDA from the same seeds (generators are CPU generators; tensors move
to the device after drawing) and compares. float32 on CUDA is IEEE float32 here (``resolve_device``
turns cuDNN's TF32 default off), so fp32 agreement is ~1e-6; bf16 and the compiled paths get the
tolerances their CPU tests use.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.learners.maml import FineTuneLearner, meta_step
from bench.method import Budget, MethodContext
from bench.tasks import Episode
from bench.timing import cuda_fp32_precision, peak_memory_gb, reset_peak_memory, resolve_device
from purer.config import PurerConfig
from purer.icfil import IcfilLearner
from purer.inversion import draw_shifts
from purer.method import Purer
from purer.trainer import PurerTrainer
from tests.benchmarks.purer_shapes import synthetic_conv4_zoo
from zoos.architectures import build_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _trainer(device: str, cfg: PurerConfig | None = None, members: int = 3) -> PurerTrainer:
    resolved = resolve_device(device)  # IEEE fp32 on CUDA, as dfml-run runs it
    cfg = cfg or PurerConfig(meta_iterations=4)
    context = MethodContext(5, 1, 32, 3, resolved, 0)
    zoo = synthetic_conv4_zoo(n_members=members, n_classes=5 * members, device=device)
    return PurerTrainer(Purer(cfg, context), cfg, zoo, Budget(), 0)


def _objective_and_grad(trainer: PurerTrainer, seed: int = 5) -> tuple[float, torch.Tensor]:
    """The inversion objective over every teacher and its pixel gradient (moved to the CPU)."""
    ids = list(range(len(trainer.data.teachers)))
    shifts = draw_shifts(trainer.weights.jitter, len(ids), torch.Generator().manual_seed(seed))
    if trainer.cfg.compile != "off":
        shifts = shifts.to(trainer.ctx.device)
    with torch.autocast(trainer.ctx.device.type, torch.bfloat16, enabled=trainer.cfg.precision == "bf16"):
        value, _ = trainer.objective(trainer.weights, None, ids, False, shifts)
    (grad,) = torch.autograd.grad(value, trainer.data.X)
    return float(value.detach()), grad.float().cpu()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_resolve_device_keeps_cuda_fp32_ieee_unless_tf32_is_asked_for():
    resolve_device("cuda", tf32=True)
    assert cuda_fp32_precision() == {"conv": "tf32", "matmul": "tf32"}
    resolve_device("cuda")
    assert cuda_fp32_precision() == {"conv": "ieee", "matmul": "ieee"}


def test_purer_inversion_objective_on_cuda_matches_cpu():
    cpu_value, cpu_grad = _objective_and_grad(_trainer("cpu"))
    cuda_value, cuda_grad = _objective_and_grad(_trainer("cuda"))
    assert cuda_value == pytest.approx(cpu_value, rel=1e-5)
    assert _relative(cuda_grad, cpu_grad) < 1e-4


def _relative_state_gap(cpu: PurerTrainer, cuda: PurerTrainer) -> tuple[float, float]:
    """(relative gap of the pixels X, of all meta-model parameters)."""
    pixels = _relative(cuda.data.X.detach().cpu(), cpu.data.X.detach())
    a = torch.cat([p.detach().flatten() for p in cpu.model.parameters()])
    b = torch.cat([p.detach().cpu().flatten() for p in cuda.model.parameters()])
    return pixels, _relative(b, a)


def test_purer_meta_iterations_on_cuda_track_cpu():
    """Three full meta-iterations (data step, adversarial step on the third, 4 MAML tasks, outer step).

    Adam amplifies float noise: its first step is lr * g / (|g| + eps), a full +-lr wherever the
    true gradient is zero (conv biases before batch-statistics BN) and float noise picks the sign;
    pixels (lr 0.25) then feed that back. Measured on an H200 against this CPU: after iteration 1
    the pixels differ by 7e-6 (relative) and no parameter by more than 2 lr (not asserted: any
    finite Adam step passes that bound); after iteration 3
    (adversarial) the pixels by 4e-2 and the losses by < 1e-3 (relative).
    """
    cpu, cuda = _trainer("cpu"), _trainer("cuda")
    for iteration in range(3):
        for trainer in (cpu, cuda):
            trainer.curriculum.flag = iteration == 2
        a, b = cpu.meta_iteration(), cuda.meta_iteration()
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-5 if iteration == 0 else 1e-3)
        assert b["outer_loss"] == pytest.approx(a["outer_loss"], rel=1e-3)
        assert b["adversarial"] == a["adversarial"]
        pixels, params = _relative_state_gap(cpu, cuda)
        if iteration == 0:
            assert pixels < 1e-4
    assert a["adversarial"] == 1.0
    assert pixels < 0.1 and params < 0.02


def test_purer_bf16_autocast_on_cuda_stays_within_tolerance_of_fp32():
    """The bf16 acceptance test of the CPU path (objective within 1e-2, gradient cosine > 0.95)."""
    value32, grad32 = _objective_and_grad(_trainer("cuda"))
    value16, grad16 = _objective_and_grad(_trainer("cuda", PurerConfig(meta_iterations=4, precision="bf16")))
    assert value16 == pytest.approx(value32, rel=1e-2)
    cosine = float(torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0))
    assert cosine > 0.95


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_purer_compiled_objective_on_cuda_matches_eager(mode):
    """torch.compile (and with reduce-overhead, CUDA graphs) computes the eager objective."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, fused = _trainer("cuda"), _trainer("cuda", PurerConfig(meta_iterations=4, compile=mode))
    assert fused.objective is not fused.data.inversion_objective
    for seed in (5, 6):  # two offsets: the second call replays, no recompile
        (value, grad), (fused_value, fused_grad) = (_objective_and_grad(t, seed) for t in (eager, fused))
        assert fused_value == pytest.approx(value, rel=1e-5)
        assert _relative(fused_grad, grad) < 1e-4
    for _ in range(3):
        a, b = eager.meta_iteration(), fused.meta_iteration()
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-4)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    if mode == "reduce-overhead":
        assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])


def _episode(device: str, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(5, 3, 32, 32, generator=g), torch.randn(75, 3, 32, 32, generator=g)
    labels = torch.arange(5)
    query_y = labels.repeat_interleave(15)
    return Episode(sx.to(device), labels.to(device), qx.to(device), query_y.to(device), labels.clone())


def test_maml_meta_step_on_cuda_matches_cpu():
    """Second-order MAML (4 tasks, 1 inner step, BatchNorm in train mode) and one Adam outer step."""
    results = {}
    for device in ("cpu", "cuda"):
        resolve_device(device)
        model = build_model("conv4", 5, 32, 3, torch.Generator().manual_seed(0), width=32).to(device)
        # SGD, not Adam: an Adam step is ~lr * sign(grad), which float noise decides where the true
        # gradient is zero (conv biases before batch-statistics BN); SGD steps by the gradient itself
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        tasks = [_episode(device, seed) for seed in range(4)]
        before = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
        loss, acc = meta_step(model, optimizer, tasks, 1, 0.01, True, "sum")
        after = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
        results[device] = (loss, acc, after - before)  # the SGD update, -lr * meta-gradient
    assert results["cuda"][0] == pytest.approx(results["cpu"][0], rel=1e-5)
    assert results["cuda"][1] == results["cpu"][1]
    # the whole update vector (changed after the last GPU run, which compared the parameters at
    # rtol 1e-4 and passed); on the CPU alone, channels-last against NCHW moves it by 5e-4
    assert _relative(results["cuda"][2], results["cpu"][2]) < 1e-2


def test_fine_tune_and_icfil_adaptation_on_cuda_match_cpu():
    """The evaluation learners: fine-tuning read out after 1 and 10 steps, and ICFIL (inversion,
    calibration, head refit) on top of it.

    One step agrees to float precision. Later steps can amplify float-level differences: on the
    CPU alone, a 1e-6 relative change of the initial weights moved these 10-step logits by 1.4e-2
    (a max-pool or ReLU switching on a 5-image batch-statistics BN); so multi-step readouts are
    compared by their predictions, as accuracy counts them.
    """
    logits = {}
    for device in ("cpu", "cuda"):
        trainer = _trainer(device)
        base = FineTuneLearner(trainer.model, inner_lr=0.01, default_steps=10, channels_last=False)
        icfil = IcfilLearner(base, dataclasses.replace(PurerConfig().icfil, inversion_steps=10), seed=0)
        episode = _episode(device)
        readouts = base.adapt_readouts(episode.support_x, episode.support_y, [1, 10])
        logits[device] = [readouts[1](episode.query_x).cpu(), readouts[10](episode.query_x).cpu()]
        logits[device].append(
            icfil.adapt(episode.support_x, episode.support_y)(episode.query_x).float().cpu()
        )
    assert _relative(logits["cuda"][0], logits["cpu"][0]) < 1e-4
    for cpu_logits, cuda_logits in zip(logits["cpu"][1:], logits["cuda"][1:], strict=True):
        agree = (cuda_logits.argmax(1) == cpu_logits.argmax(1)).float().mean()
        assert float(agree) >= 0.9


def test_peak_memory_is_measured_on_cuda():
    device = resolve_device("cuda")
    reset_peak_memory(device)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB
    peak, what = peak_memory_gb(device)
    del block
    assert what == "cuda_max_allocated" and peak >= 64 / 1024


def test_members_trained_on_cuda_record_their_fp32_precision(small_glyphs, cache_root):
    import json

    from tests.conftest import TINY_ZOO
    from zoos.zoo import load_or_build_zoo, member_dir

    cfg = {**TINY_ZOO, "name": "cuda_precision", "n_members": 1, "seed": 11}
    resolve_device("cuda", tf32=False)
    zoo = load_or_build_zoo(cfg, small_glyphs, device="cuda")
    info = json.loads((member_dir(zoo.members[0].key) / "member.json").read_text())
    assert info["train_cuda_fp32_precision"] == cuda_fp32_precision() == {"conv": "ieee", "matmul": "ieee"}
