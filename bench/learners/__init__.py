"""Meta-learning building blocks shared by PURER and the baselines: functional MAML, ProtoNet."""

from __future__ import annotations

from bench.learners.maml import (
    FineTuneLearner,
    inner_loop,
    maml_task_loss,
    meta_step,
    module_params,
)
from bench.learners.protonet import ProtoNetLearner, protonet_logits, protonet_task_loss

__all__ = [
    "FineTuneLearner",
    "ProtoNetLearner",
    "inner_loop",
    "maml_task_loss",
    "meta_step",
    "module_params",
    "protonet_logits",
    "protonet_task_loss",
]
