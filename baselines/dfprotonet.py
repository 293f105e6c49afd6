"""DFProtoNet: invert the zoo into a per-class bank, then ProtoNet on bank tasks.

Ref: the invert-then-meta-learn ProtoNet baseline of Trustworthy-DFML (TDS, arXiv 2311.14756;
``method/dfprotonet.py``, stale: reimplemented from baselines.md §3.6) with Snell et al.'s
prototypes (NeurIPS 2017). DeepInversion terms are shared with PURER (``purer.inversion``).
"""

from __future__ import annotations

import torch

from baselines._invert_then_learn import InvertThenLearnConfig, invert_then_learn
from bench.learners.protonet import ProtoNetLearner, protonet_task_loss
from bench.method import METHODS, Budget, Learner, MetaLearner
from zoos.zoo import Zoo


@METHODS.register("dfprotonet")
class DfProtoNet(MetaLearner):
    """Invert members into a class bank, then ProtoNet on bank tasks; nearest prototype at test."""

    Config = InvertThenLearnConfig

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Bank refresh every ``generate_interval`` iterations; ProtoNet; meta-val selection."""
        n_way = self.context.n_way
        model, _ = invert_then_learn(
            self,
            zoo,
            budget,
            lambda m, task: protonet_task_loss(m.embed, task, n_way),
            lambda m: ProtoNetLearner(m.embed),
        )
        return ProtoNetLearner(model.embed)
