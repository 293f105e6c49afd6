"""Prototypical networks (Snell et al., NeurIPS 2017, arXiv 1703.05175).

Logits are negative squared Euclidean distances from query embeddings to class prototypes (the
mean support embedding of each class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bench.method import Classifier, Learner
from bench.tasks import Episode

Embed = Callable[[torch.Tensor], torch.Tensor]


def prototypes(support_z: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class means: support_z (n_support, D), support_y (n_support,) -> (n_way, D)."""
    one_hot = F.one_hot(support_y, n_way).to(support_z.dtype)  # (n_support, n_way)
    return (one_hot.T @ support_z) / one_hot.sum(0).clamp_min(1).unsqueeze(1)


def protonet_logits(
    embed: Embed, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, n_way: int
) -> torch.Tensor:
    """Query logits (n_query_total, n_way) = -squared distance to each prototype."""
    protos = prototypes(embed(support_x), support_y, n_way)
    return -torch.cdist(embed(query_x), protos).pow(2)


def protonet_task_loss(embed: Embed, task: Episode, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query CE loss, query accuracy %) of one episode."""
    logits = protonet_logits(embed, task.support_x, task.support_y, task.query_x, n_way)
    loss = F.cross_entropy(logits, task.query_y)
    return loss, (logits.argmax(1) == task.query_y).float().mean().detach() * 100.0


class _ProtoClassifier:
    def __init__(self, embed: Embed, protos: torch.Tensor) -> None:
        self.embed, self.protos = embed, protos

    @torch.no_grad()
    def __call__(self, query_x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(self.embed(query_x), self.protos).pow(2)


class ProtoNetLearner(Learner):
    """Nearest-prototype classifier over a fixed embedding; no adaptation steps.

    ``transductive`` follows the embedding: True when it uses batch-statistic BN.
    """

    def __init__(self, embed: Embed, transductive: bool = True) -> None:
        self.embed = embed
        self.transductive = transductive

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        """Prototypes of the support set; the classifier scores queries against them."""
        n_way = int(support_y.max()) + 1
        return _ProtoClassifier(self.embed, prototypes(self.embed(support_x), support_y, n_way))

    def adapt_readouts(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: Sequence[int]
    ) -> dict[int, Classifier]:
        """The same classifier for every readout (ProtoNet takes no steps)."""
        classifier = self.adapt(support_x, support_y)
        return dict.fromkeys(steps, classifier)
