from __future__ import annotations

import torch

from bench.learners.protonet import ProtoNetLearner, protonet_logits, protonet_task_loss, prototypes
from bench.tasks import Episode


def test_prototypes_are_class_means():
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0], [10.0, 0.0], [12.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert torch.equal(prototypes(z, y, 2), torch.tensor([[1.0, 1.0], [11.0, 0.0]]))


def test_logits_are_negative_squared_distances_and_classify_nearest():
    def identity(x):
        return x

    support = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    query = torch.tensor([[1.0, 0.0], [9.0, 1.0]])
    logits = protonet_logits(identity, support, torch.tensor([0, 1]), query, 2)
    assert torch.allclose(logits, torch.tensor([[-1.0, -81.0], [-82.0, -2.0]]))
    learner = ProtoNetLearner(identity, transductive=False)
    classifier = learner.adapt(support, torch.tensor([0, 1]))
    assert classifier(query).argmax(1).tolist() == [0, 1]
    assert set(learner.adapt_readouts(support, torch.tensor([0, 1]), [1, 10])) == {1, 10}


def test_task_loss_backpropagates_into_the_embedding():
    weight = torch.randn(2, 2, requires_grad=True)

    def embed(x):
        return x @ weight

    task = Episode(
        torch.randn(4, 2),
        torch.tensor([0, 0, 1, 1]),
        torch.randn(6, 2),
        torch.tensor([0, 0, 0, 1, 1, 1]),
        torch.tensor([0, 1]),
    )
    loss, accuracy = protonet_task_loss(embed, task, 2)
    loss.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert 0.0 <= float(accuracy) <= 100.0
