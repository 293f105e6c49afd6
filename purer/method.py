"""PURER and its ablations, registered as methods.

Ref: Hu et al., "Architecture, Dataset and Model-Scale Agnostic Data-free Meta-Learning",
CVPR 2023 (arXiv 2303.11183).

- ``purer``: ECI meta-training (dynamic dataset + curriculum/adversarial switch) + ICFIL at test.
- ``purer_no_icfil``: what the reference code computes (ECI only).
- ``purer_ei``: episode inversion without curriculum/adversarial term, no ICFIL.
"""

from __future__ import annotations

import json

import torch

from bench.atomic import atomic_write_text
from bench.learners.maml import FineTuneLearner
from bench.method import METHODS, Budget, Learner, MetaLearner
from purer.config import PurerConfig
from purer.icfil import IcfilLearner
from purer.trainer import PurerTrainer
from zoos.zoo import Zoo


def probe_metrics(test_evals: list[dict], selected: int, last: int) -> dict[str, float]:
    """Labelled test-probe numbers (purer.md §10), from the probes already run at each selection.

    The probe is the first ``val_episodes`` episodes of the test suite at the primary readout,
    without ICFIL. ``acc_test_best_of_evals`` is the reference's selection on test (only to compare
    with published numbers); ``acc_test_probe_last`` scores the last checkpoint and
    ``acc_test_probe_selected`` the meta-val-selected one on the same probe, so the two compare
    like for like. A key is absent when no probe ran at that iteration.
    """
    if not test_evals:
        return {}
    by_iteration = {int(e["iteration"]): float(e["test_acc"]) for e in test_evals}
    metrics = {"acc_test_best_of_evals": max(by_iteration.values())}
    for name, iteration in (("acc_test_probe_last", last), ("acc_test_probe_selected", selected)):
        if iteration in by_iteration:
            metrics[name] = by_iteration[iteration]
    return metrics


@METHODS.register("purer")
class Purer(MetaLearner):
    """PURER: ECI meta-training on pixels inverted from the zoo + ICFIL test-time calibration."""

    Config = PurerConfig
    #: ICFIL acts at test time only: purer and purer_no_icfil share one meta-training.
    eval_only_keys = ("icfil",)

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Meta-train on the dynamic dataset; select on meta-val; wrap with ICFIL if enabled."""
        cfg: PurerConfig = self.cfg  # type: ignore[assignment]
        seed = int(gen.initial_seed())
        trainer = PurerTrainer(self, cfg, zoo, budget, seed)
        trainer.run()
        model, iteration, rule = trainer.selected_model()
        self.train_stats.update(trainer.stats())
        self.train_stats.update({"selected_iteration": float(iteration)})
        if trainer.best["val_acc"] is not None:
            self.train_stats["val_acc_selected"] = float(trainer.best["val_acc"])
        self.extra_metrics["selection_rule_is_meta_val"] = float(rule == "meta_val_best")
        self.extra_metrics.update(probe_metrics(trainer.test_evals, iteration, trainer.it))
        self._write_log(trainer)
        learner = FineTuneLearner(model, cfg.inner_lr)
        return IcfilLearner(learner, cfg.icfil, seed) if cfg.icfil.enabled else learner

    def _write_log(self, trainer: PurerTrainer) -> None:
        if self.context.work_dir is None:
            return
        payload = {
            "curriculum_events": trainer.curriculum.events if trainer.curriculum else [],
            "test_evals": trainer.test_evals,
            "history": trainer.history,
        }
        path = self.context.work_dir / "purer_log.json"
        atomic_write_text(path, json.dumps(payload, indent=1))
        self.artifacts.append(path)


@METHODS.register("purer_no_icfil")
class PurerNoIcfil(Purer):
    """PURER without ICFIL (ECI only): what the reference code computes."""


@METHODS.register("purer_ei")
class PurerEI(Purer):
    """Ablation: episode inversion only (no curriculum, no adversarial term, no ICFIL)."""
