"""Random initialisation + fine-tuning: the floor of every leaderboard.

A fresh conv4 with its last-layer bias zeroed (Trustworthy-DFML ``method/random.py``); at test, SGD
on all parameters on the support set. Uses nothing from the zoo but the input shape.
Ref: Finn et al., "Model-Agnostic Meta-Learning", ICML 2017 (arXiv 1703.03400) for the fine-tune.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from bench.learners.maml import FineTuneLearner
from bench.method import METHODS, Budget, Learner, MetaLearner, MethodConfig
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo


@dataclass
class RandomInitConfig(MethodConfig):
    """Width of the conv4 meta model and the test-time inner learning rate."""

    width: int = 32
    inner_lr: float = 0.01


@METHODS.register("random_init")
class RandomInit(MetaLearner):
    """Random conv4 init, fine-tuned on each support set (no meta-training; the zero point)."""

    Config = RandomInitConfig

    @classmethod
    def reads_zoo(cls, method_cfg: Mapping[str, Any]) -> bool:
        """Never: only the input shape comes from the zoo."""
        return False

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Draw the init; the zoo is not used."""
        cfg: RandomInitConfig = self.cfg  # type: ignore[assignment]
        model = fresh_meta_model(self.context, cfg.width)
        with torch.no_grad():
            model.head.bias.zero_()
        return FineTuneLearner(model, cfg.inner_lr)
