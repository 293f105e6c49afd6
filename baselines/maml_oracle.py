"""MAML on **real** meta-train episodes: the ceiling of MAML-style DFML methods (not data-free).

Ref: Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017
(arXiv 1703.03400); the oracle row of Trustworthy-DFML (``method/maml.py``) and baselines.md §3.5.
Second-order MAML, conv4-32 with batch-statistic BN, Adam 1e-3, meta-batch 4 (summed query losses),
selection on meta-val. It reads the dataset's meta-train split, so it declares
``uses_real_data`` and every table labels it "oracle (real data)".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines._episodes import train_on_real_episodes
from bench.learners.episodic import EpisodicConfig
from bench.learners.maml import FineTuneLearner, maml_task_loss, module_params
from bench.method import METHODS, Budget, Learner, MetaLearner
from zoos.zoo import Zoo


@dataclass
class MamlOracleConfig(EpisodicConfig):
    """MAML hyper-parameters (baselines.md §2 shared defaults; CPU schedule)."""

    inner_lr: float = 0.01
    inner_steps: int = 5
    second_order: bool = True


@METHODS.register("maml_oracle")
class MamlOracle(MetaLearner):
    """Second-order MAML on real meta-train episodes (the ceiling; uses real data)."""

    Config = MamlOracleConfig
    uses_real_data = True

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Ignore the zoo; meta-train a fresh conv4 on real episodes; select on meta-val."""
        cfg: MamlOracleConfig = self.cfg  # type: ignore[assignment]

        def loss(m: torch.nn.Module, task):  # noqa: ANN001, ANN202
            return maml_task_loss(m, module_params(m), task, cfg.inner_steps, cfg.inner_lr, cfg.second_order)

        model = train_on_real_episodes(self, budget, loss, lambda m: FineTuneLearner(m, cfg.inner_lr))
        return FineTuneLearner(model, cfg.inner_lr)
