"""ProtoNet on **real** meta-train episodes: the metric-learning ceiling (not data-free).

Ref: Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017 (arXiv 1703.05175);
baselines.md §3.5. A conv4-32 embedding (batch-statistic BN, flattened features) trained with
squared-Euclidean prototypes, Adam 1e-3, meta-batch 4, selection on meta-val. Declares
``uses_real_data``; every table labels it "oracle (real data)".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from baselines._episodes import train_on_real_episodes
from bench.learners.episodic import EpisodicConfig
from bench.learners.protonet import ProtoNetLearner, protonet_task_loss
from bench.method import METHODS, Budget, Learner, MetaLearner
from zoos.zoo import Zoo


@dataclass
class ProtoNetOracleConfig(EpisodicConfig):
    """ProtoNet hyper-parameters (CPU schedule)."""


@METHODS.register("protonet_oracle")
class ProtoNetOracle(MetaLearner):
    """ProtoNet on real meta-train episodes (the ceiling; uses real data)."""

    Config = ProtoNetOracleConfig
    uses_real_data = True

    @classmethod
    def reads_zoo(cls, method_cfg: Mapping[str, Any]) -> bool:
        """Never: it meta-trains on real episodes only."""
        return False

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Ignore the zoo; train a conv4 embedding on real episodes; select on meta-val."""
        n_way = self.context.n_way
        model = train_on_real_episodes(
            self,
            budget,
            lambda m, task: protonet_task_loss(m.embed, task, n_way),
            lambda m: ProtoNetLearner(m.embed),
        )
        return ProtoNetLearner(model.embed)
