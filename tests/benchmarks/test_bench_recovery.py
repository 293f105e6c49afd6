"""Per-member data recovery: FREE's adapted meta-generator vs dfmaml's DeepInversion (issue 7).

FREE (CVPR 2024) claims a ~20x faster recovery per member than inverting each member from scratch.
Both sides here recover the same conv4-32 member (5 classes, CIFAR-FS shape, 32 px) with the
registered YAML configs, so the ratio of the two medians is the claim checked on this machine:

- ``free``: a clone of the meta-generator adapts ``adapt_steps`` Adam steps on the member's CE
  minus the student-disagreement term, then samples ``images_per_class`` images per class
  (``Free._recover``, what ``recovery_seconds_per_member`` times in a run);
- ``dfmaml``: ``bank_support`` + ``bank_query`` pixels per class, each batch optimised
  ``generate_iterations`` Adam steps on the DeepInversion loss (``ClassBank.add_member``, what
  ``inversion_seconds_per_member`` times in a run).

Measure both in one process (timings differ +-30 % between processes here):

    pytest tests/benchmarks/test_bench_recovery.py --benchmark-enable -n0

The two recover different amounts (FREE 20 images per class, dfmaml 60): ``extra_info`` records
both counts, so time per image can be compared too. Speed is measured here, never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import bench.conf
from baselines._bank import ClassBank
from baselines._generator import fresh_generator
from bench.method import METHODS, validate_method_config
from bench.seeding import make_generator
from purer.inversion import InversionWeights
from tests.benchmarks.purer_shapes import context, synthetic_conv4_zoo
from zoos.meta_model import fresh_meta_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _method(name: str, device: str):  # noqa: ANN202 - a registered MetaLearner
    raw = OmegaConf.to_container(OmegaConf.load(Path(bench.conf.__file__).parent / "method" / f"{name}.yaml"))
    cls = METHODS.get(name)
    return cls(validate_method_config(cls, raw), context(device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["free", "dfmaml"])
def test_member_recovery(benchmark, method, device):
    """Recover one conv4 member's 5 classes the way ``method`` does in a run."""
    zoo = synthetic_conv4_zoo(n_members=1, n_classes=5, device=device)
    member = zoo.members[0]
    learner = _method(method, device)
    cfg = learner.cfg
    gen = make_generator(0)
    if method == "free":
        meta_gen = fresh_generator(
            cfg.nz, cfg.ngf, zoo.image_size, zoo.channels, zoo.mean, zoo.std, gen, torch.device(device)
        )
        student = fresh_meta_model(learner.context, 32)
        stats = {"member_recoveries": 0.0, "recovery_seconds": 0.0}

        def recover() -> int:
            meta_gen.zero_grad(set_to_none=True)
            images, _ = learner._recover(member, meta_gen, 5, student, gen, stats)  # noqa: SLF001
            return int(images.shape[0])

        work = {"images_per_class": cfg.images_per_class, "steps": cfg.adapt_steps}
    else:
        weights = InversionWeights(cfg.ce, cfg.bn, cfg.tv, cfg.l2, cfg.jitter)

        def recover() -> int:
            bank = ClassBank()
            bank.add_member(
                member,
                cfg.bank_support,
                cfg.bank_query,
                cfg.generate_iterations,
                cfg.synthesis_lr,
                weights,
                gen,
                torch.device(device),
            )
            return sum(int(bank.support[k].shape[0] + bank.query[k].shape[0]) for k in bank.support)

        work = {"images_per_class": cfg.bank_support + cfg.bank_query, "steps": cfg.generate_iterations}
    benchmark.extra_info.update({"method": method, "device": device, "classes": 5, **work})
    images = benchmark.pedantic(recover, rounds=3, iterations=1, warmup_rounds=0)
    assert images == 5 * work["images_per_class"]
