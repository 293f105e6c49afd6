"""Pretrain one zoo member on its classes (purer.md §5).

Per class, the first ``1 - holdout_fraction`` of its images (stored order) train and the rest are
held out; labels are local (0..n-1 in the member's class order); no augmentation unless
``recipe.augment`` (seeded random crop + flip); the reference's optimisers, MultiStep schedule and
gradient clipping.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.base import ImageClassDataset
from bench.errors import BenchError
from bench.seeding import derive_seed, make_generator
from zoos.architectures import build_model
from zoos.spec import MemberSpec, TrainRecipe

log = logging.getLogger(__name__)


#: A member whose held-out accuracy is at most this multiple of chance is flagged (build log, card).
NEAR_CHANCE = 1.5


def near_chance(heldout_acc: float, n_classes: int, extra: dict | None = None) -> bool:
    """Whether a held-out accuracy (%) is at most :data:`NEAR_CHANCE` x chance (100 / n_classes).

    A member shipped untrained on purpose (``extra["untrusted"] == "untrained"``) is never flagged.
    """
    if (extra or {}).get("untrusted") == "untrained":
        return False
    return heldout_acc <= NEAR_CHANCE * 100.0 / n_classes


@dataclass
class TrainedMember:
    """A trained member: its weights and held-out accuracy (%)."""

    model: nn.Module
    heldout_acc: float
    train_acc: float


def member_tensors(
    spec: MemberSpec, dataset: ImageClassDataset, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, holdout_x, holdout_y) for the member's classes, normalised, on ``device``.

    Shapes: x (n, C, H, W) float32, y (n,) int64 local labels (permuted for a relabelled member).
    A ``foreign`` member's tensors come from its training dataset's classes (``spec.training_*``).
    """
    if dataset.name != spec.training_dataset:
        raise BenchError(f"member {spec.index} trains on {spec.training_dataset!r}, not {dataset.name!r}")
    name_to_index = {name: i for i, name in enumerate(dataset.class_names)}
    train_split = set(dataset.split_classes("train"))
    parts: dict[str, list[torch.Tensor]] = {"tx": [], "ty": [], "hx": [], "hy": []}
    for local, class_name in enumerate(spec.training_classes):
        index = name_to_index.get(class_name)
        if index is None or index not in train_split:
            raise BenchError(
                f"member {spec.index} class {class_name!r} is not in the meta-train split of "
                f"dataset {dataset.name!r}"
            )
        rows = dataset.class_rows(index)
        n_train = max(1, round(rows.numel() * (1 - spec.recipe.holdout_fraction)))
        images = dataset.normalize(dataset.read_rows(rows), device)
        label = spec.extra["label_permutation"][local] if "label_permutation" in spec.extra else local
        labels = torch.full((rows.numel(),), label, dtype=torch.long, device=device)
        parts["tx"].append(images[:n_train])
        parts["ty"].append(labels[:n_train])
        parts["hx"].append(images[n_train:])
        parts["hy"].append(labels[n_train:])
    return tuple(torch.cat(parts[k]) for k in ("tx", "ty", "hx", "hy"))  # type: ignore[return-value]


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """Adam (conv4 recipe) or SGD with momentum and weight decay (resnet recipe)."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    raise BenchError(f"unknown optimizer {recipe.optimizer!r}; valid: adam, sgd")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on (x, y); nan when empty."""
    if y.numel() == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch)
    )
    model.train(was_training)
    return 100.0 * correct / y.numel()


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``H // 8`` and a random horizontal flip, per image.

    x: (B, C, H, W) normalised images (zero = the mean colour); draws come from ``generator``.
    """
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    flips = torch.rand(n, generator=generator).lt(0.5).tolist()
    crops = []
    for image, (dy, dx), flip in zip(padded, offsets, flips, strict=True):
        crop = image[:, dy : dy + h, dx : dx + w]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, x: torch.Tensor, batch: int, generator: torch.Generator | None = None
) -> None:
    """Set every BN layer's running mean/var to its batch statistics' average over ``x`` (N, C, H, W).

    One train-mode forward pass over ``x`` in the order of a permutation drawn from ``generator``
    (identity without one), ``batch`` images at a time: the cumulative average of PyTorch's
    ``momentum=None`` (a single batch gives that batch's statistics). A member's images are stored
    class by class, so the permutation keeps each batch from holding one class (whose statistics
    are not the eval-time ones). Weights and BN affine parameters are unchanged; each layer's
    momentum is restored afterwards.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or len(x) == 0:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    was_training = model.training
    model.train()
    order = torch.arange(len(x)) if generator is None else torch.randperm(len(x), generator=generator)
    order = order.to(x.device)
    for start in range(0, len(x), batch):
        model(x[order[start : start + batch]])
    model.train(was_training)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


def train_member(spec: MemberSpec, dataset: ImageClassDataset, device: torch.device) -> TrainedMember:
    """Pretrain the member described by ``spec``; deterministic on CPU for a fixed spec."""
    recipe = spec.recipe
    if recipe.select not in ("final", "best_holdout"):
        raise BenchError(f"unknown train.select {recipe.select!r}; valid: final, best_holdout")
    train_x, train_y, hold_x, hold_y = member_tensors(spec, dataset, device)
    if recipe.select == "best_holdout" and len(hold_y) == 0:  # else the final weights, silently
        raise BenchError(
            f"zoo member {spec.index}: zoo.recipe.select='best_holdout' needs held-out images, but "
            f"holdout_fraction={recipe.holdout_fraction} leaves none of its classes' images; use "
            "zoo.recipe.select=final or a larger zoo.recipe.holdout_fraction"
        )
    init_gen = make_generator(derive_seed(spec.seed, "member-init", spec.index))
    model = build_model(
        spec.arch, spec.head_width, spec.image_size, spec.channels, init_gen, **spec.arch_options
    ).to(device)
    optimizer = make_optimizer(model, recipe)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    order_gen = make_generator(derive_seed(spec.seed, "member-batches", spec.index))
    best_state, best_acc = None, -1.0
    epochs = 0 if spec.extra.get("untrusted") == "untrained" else recipe.epochs  # shipped untrained
    for _epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=order_gen).to(device)
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            inputs = train_x[batch]
            if recipe.augment:
                inputs = augment_batch(inputs, order_gen)
            loss = F.cross_entropy(model(inputs), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
            optimizer.step()
        schedule.step()
        if recipe.select == "best_holdout":
            acc = accuracy(model, hold_x, hold_y)
            if acc > best_acc:
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    if recipe.recalibrate_bn_batch and epochs:
        recalibrate_bn(model, train_x, recipe.recalibrate_bn_batch, order_gen)
    model.eval()
    return TrainedMember(model, accuracy(model, hold_x, hold_y), accuracy(model, train_x, train_y))
