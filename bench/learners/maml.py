"""Functional MAML (Finn et al., ICML 2017, arXiv 1703.03400) with ``torch.func.functional_call``.

The inner loop is plain SGD over **all** parameters (conv, BN affine, head). Meta models use
BatchNorm on batch statistics (PURER's protocol), so they have no buffers to thread through.
Second order for meta-training (``create_graph=True``), first order at test. Tasks run in a Python
loop: on torch 2.14 ``vmap`` over tasks through BatchNorm returns wrong gradients
(functorch#534) and is slower on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bench.errors import BenchError
from bench.method import Classifier, Learner
from bench.tasks import Episode

Params = dict[str, torch.Tensor]


def module_params(model: nn.Module) -> Params:
    """The model's parameters by name (the tensors themselves, not copies)."""
    return dict(model.named_parameters())


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, n_way) of ``model`` run with ``params`` (and its own buffers)."""
    return functional_call(model, params, (x,))


def inner_steps(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int,
    lr: float,
    create_graph: bool,
) -> Iterator[Params]:
    """Yield the adapted parameters after each of ``steps`` SGD steps on the support CE.

    With ``create_graph=False`` (first order) each step starts from detached tensors, so no graph
    grows across steps; with ``True`` the result stays differentiable w.r.t. ``params``.
    """
    names = list(params)
    current = params
    for _ in range(steps):
        if not create_graph:
            current = {k: v.detach().requires_grad_(True) for k, v in current.items()}
        with torch.enable_grad():
            loss = F.cross_entropy(forward(model, current, support_x), support_y)
            grads = torch.autograd.grad(loss, [current[k] for k in names], create_graph=create_graph)
        current = {k: current[k] - lr * g for k, g in zip(names, grads, strict=True)}
        yield current


def inner_loop(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int,
    lr: float,
    create_graph: bool,
) -> Params:
    """Adapted parameters after ``steps`` inner SGD steps (``params`` itself if steps == 0)."""
    adapted = params
    for step_params in inner_steps(model, params, support_x, support_y, steps, lr, create_graph):
        adapted = step_params
    return adapted


def maml_task_loss(
    model: nn.Module,
    params: Params,
    task: Episode,
    steps: int,
    lr: float,
    second_order: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query CE loss, query accuracy in %) after adapting ``params`` on the task's support set.

    With ``second_order=False`` this is first-order MAML: the meta-gradient is the query gradient
    at the adapted parameters.
    """
    adapted = inner_loop(model, params, task.support_x, task.support_y, steps, lr, second_order)
    if not second_order:
        adapted = {k: params[k] + (v - params[k]).detach() for k, v in adapted.items()}
    logits = forward(model, adapted, task.query_x)
    loss = F.cross_entropy(logits, task.query_y)
    accuracy = (logits.argmax(1) == task.query_y).float().mean() * 100.0
    return loss, accuracy.detach()


def meta_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tasks: Sequence[Episode],
    steps: int,
    lr: float,
    second_order: bool = True,
    reduce: str = "sum",
) -> tuple[float, float]:
    """One outer step on a meta-batch; returns (outer loss, mean query accuracy %).

    ``reduce`` is ``sum`` (PURER's reference: the sum of the tasks' query losses) or ``mean``.
    """
    if reduce not in ("sum", "mean"):
        raise BenchError(f"outer reduce {reduce!r} unknown; valid: sum, mean")
    params = module_params(model)
    losses, accuracies = zip(
        *(maml_task_loss(model, params, t, steps, lr, second_order) for t in tasks), strict=True
    )
    outer = torch.stack(losses).sum() if reduce == "sum" else torch.stack(losses).mean()
    optimizer.zero_grad(set_to_none=True)
    outer.backward()
    optimizer.step()
    return float(outer.detach()), float(torch.stack(accuracies).mean())


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """4-D tensors in channels-last memory format (same values); others unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class _FunctionalClassifier:
    """Query logits of a model under fixed adapted parameters."""

    def __init__(self, model: nn.Module, params: Params, channels_last: bool = False) -> None:
        self.model, self.params = model, {k: v.detach() for k, v in params.items()}
        self.channels_last = channels_last

    @torch.no_grad()
    def __call__(self, query_x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (n_query_total, n_way)."""
        return forward(self.model, self.params, to_channels_last(query_x) if self.channels_last else query_x)


class FineTuneLearner(Learner):
    """A MAML-style learner: SGD on all parameters from an initialisation, then classify.

    BN uses batch statistics, so support and query are each normalised by their own statistics
    (PURER's transductive protocol); ``transductive`` is therefore True.
    """

    transductive = True

    def __init__(
        self, model: nn.Module, inner_lr: float, default_steps: int = 10, channels_last: bool | None = None
    ) -> None:
        """Fine-tune from ``model``'s parameters with SGD at ``inner_lr``.

        ``channels_last`` (default: on CPU) runs adaptation and prediction on channels-last copies
        of the conv weights and images: the same numbers up to float summation order, and on the
        2-core CPU 1.9x faster for a 10-step fine-tune + prediction, 1.4x for an ICFIL episode
        (torch 2.14: NCHW max-pooling is slow). Meta-training (second-order MAML) stays NCHW, where
        channels-last measured slower.
        """
        self.model = model
        if channels_last is None:
            channels_last = next(model.parameters()).device.type == "cpu"
        self.channels_last = channels_last
        layout = to_channels_last if channels_last else (lambda v: v)
        self.init_params = {k: layout(v.detach().clone()) for k, v in module_params(model).items()}
        self.inner_lr, self.default_steps = inner_lr, default_steps

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        """Fine-tune ``default_steps`` first-order SGD steps on the support set."""
        return self.adapt_readouts(support_x, support_y, [self.default_steps])[self.default_steps]

    def adapt_readouts(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: Sequence[int]
    ) -> dict[int, Classifier]:
        """One adaptation run read out after each step count in ``steps`` (0 = the init)."""
        wanted, cl = set(steps), self.channels_last
        readouts: dict[int, Classifier] = {}
        if 0 in wanted:
            readouts[0] = _FunctionalClassifier(self.model, self.init_params, cl)
        support_x = to_channels_last(support_x) if cl else support_x
        runner = inner_steps(
            self.model, self.init_params, support_x, support_y, max(steps), self.inner_lr, False
        )
        for done, params in enumerate(runner, start=1):
            if done in wanted:
                readouts[done] = _FunctionalClassifier(self.model, params, cl)
        return readouts
