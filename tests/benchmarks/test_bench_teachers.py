"""One inversion step through a hooked (non-folded) teacher: memory format and precision.

The SH and MH zoos' resnet members are hooked teachers (only eval-mode conv4 teachers are folded),
and with PURER's reference stem (64 channels at full resolution) they dominate a data step. Cases,
measured in one process (timings differ +-30 % between processes here):

- ``contiguous``: NCHW, what a hooked teacher ran before 2026-11-28 (and still runs on CUDA);
- ``channels_last``: what :func:`purer.teachers.teacher_forward` now picks on CPU;
- ``channels_last_bf16``: the same under bfloat16 autocast (``method.precision=bf16``).

Measure::

    pytest tests/benchmarks/test_bench_teachers.py --benchmark-enable -n0 --benchmark-columns=median,iqr

One step = inversion loss (CE + BN + TV + L2, +-2 px roll) of 80 images of 3x32x32 (5 classes x 16)
and its gradient to the images.
"""

from __future__ import annotations

import pytest
import torch

from purer.inversion import InversionWeights, inversion_loss, running_targets
from purer.teachers import HookedTeacher
from zoos.resnets import ResNet

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
WEIGHTS = InversionWeights(ce=1.0, bn=0.01, tv=1e-4, l2=1e-5, jitter=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["contiguous", "channels_last", "channels_last_bf16"])
def test_resnet10_teacher_inversion_step(benchmark, case, device):
    """Inversion loss forward + backward to 80 images through a frozen resnet10 teacher."""
    model = ResNet((1, 1, 1, 1), 5, 3).to(device).eval().requires_grad_(False)
    teacher = HookedTeacher(model, channels_last=case.startswith("channels_last"))
    targets = running_targets(model)
    images = torch.randn(80, 3, 32, 32, device=device, requires_grad=True)
    labels = torch.arange(5, device=device).repeat_interleave(16)
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=case.endswith("bf16")):
            loss, _ = inversion_loss(teacher, targets, images, labels, WEIGHTS, generator)
        loss.backward()
        images.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    step()  # warm-up (oneDNN primitive creation)
    benchmark.extra_info.update({"case": case, "device": device, "images": 80, "torch": torch.__version__})
    assert torch.isfinite(torch.tensor(benchmark(step)))
