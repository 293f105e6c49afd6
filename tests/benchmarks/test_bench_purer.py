"""PURER meta-iteration throughput on the CIFAR-FS-shaped configuration (13 conv4-32 teachers,
64 classes x (K + 15) learnable 3x32x32 images, meta-batch 4, 1 second-order inner step).

Measure (they run once as smoke tests otherwise)::

    pytest tests/benchmarks/test_bench_purer.py --benchmark-enable -n0 --benchmark-columns=median,iqr

Variants, interleaved in one process as the 2-core machine's timings drift between processes:

- ``reference_like``: what the reference code does per iteration — teachers reloaded from disk and
  deep-copied, BN statistics by hooks with ``var`` over a permuted copy, no BN folding,
  contiguous memory format, PyTorch's own ``F.max_pool2d`` (not ``zoos.pooling``'s fast path),
  ReLU before max-pool in every conv4 block (teachers and meta model; ours pools first);
- ``fp32``: dfml-bench's default path (teachers in memory, folded BN, channels_last);
- ``bf16``: the same with the inversion step under bfloat16 autocast;
- ``fp32_compiled``: ``fp32`` with ``method.compile=default`` (``torch.compile`` of the inversion
  objective; 1-shot only: each case pays a one-off compile of ~45 s here, excluded from the timing);
- ``bf16_compiled``: ``bf16`` with ``method.compile=default`` (1-shot only, likewise);
- ``fp32_cudagraphs``: ``fp32`` with ``method.compile=reduce-overhead`` (inductor + CUDA graphs;
  CUDA only, 1-shot only);
- ``tf32``: ``fp32`` with ``device.tf32=true`` (TF32 tensor-core convolutions; CUDA only). Every
  other CUDA variant runs IEEE float32, as ``dfml-run`` does by default.

The ``adversarial`` case forces the curriculum switch so the data step includes the
second-order adversarial term.
"""

from __future__ import annotations

import copy
import io
import shutil

import pytest
import torch

import purer.inversion as inversion
import purer.teachers as teachers
import zoos.pooling as pooling
from bench.method import Budget
from bench.timing import set_cuda_fp32_precision
from purer.config import PurerConfig
from purer.method import Purer
from purer.trainer import PurerTrainer
from tests.benchmarks.purer_shapes import context, synthetic_conv4_zoo
from tests.fixtures.conv4_order import relu_before_pool

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _reference_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepInversion's hook statistics, as the reference computes them."""
    channels = x.shape[1]
    mean = x.mean([0, 2, 3])
    var = x.permute(1, 0, 2, 3).contiguous().view([channels, -1]).var(1, unbiased=False)
    return mean, var


def _trainer(variant: str, k_shot: int, device: str) -> PurerTrainer:
    cfg = PurerConfig(meta_iterations=10**6)
    cfg.adv.start = 10**9  # switch forced explicitly where wanted
    if variant == "reference_like":
        cfg.fold_teachers, cfg.channels_last = False, False
    cfg.precision = "bf16" if variant.startswith("bf16") else "fp32"
    if device == "cuda":
        set_cuda_fp32_precision(variant == "tf32")
    cfg.compile = {"compiled": "default", "cudagraphs": "reduce-overhead"}.get(variant.split("_")[-1], "off")
    zoo = synthetic_conv4_zoo(device=device)
    return PurerTrainer(Purer(cfg, context(k_shot, device)), cfg, zoo, Budget(), 0)


def _reload_teachers_like_reference(trainer: PurerTrainer, blobs: list[bytes]) -> None:
    """The reference loads every teacher checkpoint from disk and deep-copies it each iteration."""
    for slot, blob in zip(trainer.data.teachers, blobs, strict=True):
        model = copy.deepcopy(slot.forward.model)
        model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
        slot.forward.model = model.eval()
        slot.forward.recorder.layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k_shot", [1, 5])
@pytest.mark.parametrize(
    "variant", ["reference_like", "fp32", "bf16", "tf32", "fp32_compiled", "bf16_compiled", "fp32_cudagraphs"]
)
@pytest.mark.parametrize("adversarial", [False, True], ids=["plain", "adversarial"])
def test_purer_meta_iteration(benchmark, monkeypatch, variant, k_shot, device, adversarial):
    """One full meta-iteration: inversion step over 13 teachers + 4 MAML tasks + outer step."""
    if variant in ("fp32_cudagraphs", "tf32") and device != "cuda":
        pytest.skip(f"{variant} needs a CUDA device")
    if variant.endswith(("_compiled", "_cudagraphs")) and k_shot != 1:
        pytest.skip("the compiled variants are measured on 1-shot only (a ~45 s compile per case)")
    if variant.endswith("_compiled") and device == "cpu" and shutil.which("g++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++)")
    if variant == "reference_like":  # the reference's teachers are contiguous (NCHW) on every device
        monkeypatch.setattr(teachers, "hooked_channels_last", lambda model: False)
    trainer = _trainer(variant, k_shot, device)
    blobs = []
    if variant == "reference_like":
        monkeypatch.setattr(inversion, "batch_moments", _reference_moments)
        monkeypatch.setattr(pooling, "max_pool_2x2", lambda x: torch.nn.functional.max_pool2d(x, 2))
        relu_before_pool(trainer.model)
        for slot in trainer.data.teachers:
            relu_before_pool(slot.forward.model)
            buffer = io.BytesIO()
            torch.save(slot.forward.model.state_dict(), buffer)
            blobs.append(buffer.getvalue())

    def one_iteration() -> dict:
        if blobs:
            _reload_teachers_like_reference(trainer, blobs)
        if adversarial and trainer.curriculum is not None:
            trainer.curriculum.flag = True
        row = trainer.meta_iteration()
        if device == "cuda":
            torch.cuda.synchronize()
        return row

    one_iteration()  # warm-up (oneDNN primitive creation)
    benchmark.extra_info.update(
        {
            "variant": variant,
            "k_shot": k_shot,
            "device": device,
            "teachers": 13,
            "images": int(trainer.data.X.shape[0]),
            "meta_batch": 4,
            "torch": torch.__version__,
        }
    )
    row = benchmark(one_iteration)
    assert torch.isfinite(torch.tensor(row["outer_loss"]))
