"""DFMAML: invert the zoo into a per-class bank, then second-order MAML on bank tasks.

Ref: the invert-then-meta-learn baseline of Hu et al., "Learning to Learn from APIs: Black-Box
Data-Free Meta-Learning" (BiDf-MKD), ICML 2023 (arXiv 2305.18413), and of Trustworthy-DFML
(``method/dfmaml.py``, stale: reimplemented from baselines.md §3.6). DeepInversion terms are shared
with PURER (``purer.inversion``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines._invert_then_learn import InvertThenLearnConfig, invert_then_learn
from bench.learners.maml import FineTuneLearner, maml_task_loss, module_params
from bench.method import METHODS, Budget, Learner, MetaLearner
from zoos.zoo import Zoo


@dataclass
class DfMamlConfig(InvertThenLearnConfig):
    """Bank settings + MAML (baselines' 5 inner steps in training)."""

    inner_lr: float = 0.01
    inner_steps: int = 5
    second_order: bool = True


@METHODS.register("dfmaml")
class DfMaml(MetaLearner):
    """Invert members into a class bank, then MAML on bank tasks; fine-tune at test."""

    Config = DfMamlConfig

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Bank refresh every ``generate_interval`` iterations; MAML; meta-val selection."""
        cfg: DfMamlConfig = self.cfg  # type: ignore[assignment]

        def loss(m: torch.nn.Module, task):  # noqa: ANN001, ANN202
            return maml_task_loss(m, module_params(m), task, cfg.inner_steps, cfg.inner_lr, cfg.second_order)

        model, _ = invert_then_learn(self, zoo, budget, loss, lambda m: FineTuneLearner(m, cfg.inner_lr))
        return FineTuneLearner(model, cfg.inner_lr)
