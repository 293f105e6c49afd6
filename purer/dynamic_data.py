"""PURER's dynamic dataset: learnable pixels inverted from the zoo (purer.md §6).

``X`` holds ``images_per_class`` learnable images per zoo class, N(0, 1) in normalised input
space, optimised by Adam (lr 0.25, never reset). Each class is inverted by the member(s) that hold
it, with that member's local label. Teachers are frozen, in eval mode and kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.tasks import Episode
from purer.agreement import count_agreement, zero_counts
from purer.inversion import InversionWeights, draw_shifts, inversion_loss, running_targets
from purer.teachers import teacher_forward
from zoos.zoo import Zoo


@dataclass
class TeacherSlot:
    """One teacher and the rows of X it inverts (with their local targets)."""

    forward: Callable[[torch.Tensor], tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]]
    bn_targets: list[tuple[torch.Tensor, torch.Tensor]]
    rows: torch.Tensor  # (n_i,) indices into X
    targets: torch.Tensor  # (n_i,) local labels


class DynamicDataset:
    """The learnable pixel tensor X (C*P, ch, s, s) with labels y (C*P,) over the zoo's classes."""

    def __init__(
        self,
        zoo: Zoo,
        images_per_class: int,
        lr: float,
        device: torch.device,
        generator: torch.Generator,
        channels_last: bool = False,
        fold_teachers: bool = True,
    ) -> None:
        self.class_names = sorted({c for m in zoo.members for c in m.class_keys})
        self.images_per_class = images_per_class
        shape = (len(self.class_names) * images_per_class, zoo.channels, zoo.image_size, zoo.image_size)
        self.channels_last, self.fold_teachers = channels_last, fold_teachers
        self.X = nn.Parameter(torch.randn(shape, generator=generator).to(device))
        self.y = torch.arange(len(self.class_names), device=device).repeat_interleave(images_per_class)
        self.optimizer = torch.optim.Adam([self.X], lr=lr)
        self.teachers = [self._slot(m.run_model, m.class_keys, device) for m in zoo.members]
        # One gather for all teachers, then a split: autograd then builds one X-sized gradient
        # instead of one per teacher (13 X-sized zero fills and adds per data step otherwise).
        self._all_rows = torch.cat([slot.rows for slot in self.teachers])
        self._sizes = [len(slot.rows) for slot in self.teachers]
        identity = torch.arange(len(self.X), device=device)
        self._rows_are_identity = torch.equal(self._all_rows, identity)  # disjoint, in order

    def _slot(self, model: nn.Module, classes: tuple[str, ...], device: torch.device) -> TeacherSlot:
        index = {name: i for i, name in enumerate(self.class_names)}
        p = self.images_per_class
        rows, targets = [], []
        for local, name in enumerate(classes):
            start = index[name] * p
            rows.append(torch.arange(start, start + p))
            targets.append(torch.full((p,), local))
        if self.channels_last:  # converted here already: a hooked teacher needs no copy of its own
            model = model.to(memory_format=torch.channels_last)
        return TeacherSlot(
            teacher_forward(model, self.fold_teachers, channels_last=False if self.channels_last else None),
            running_targets(model),
            torch.cat(rows).to(device),
            torch.cat(targets).to(device),
        )

    @property
    def n_classes(self) -> int:
        """Number of zoo classes (global labels 0..n_classes-1)."""
        return len(self.class_names)

    def inversion_objective(
        self,
        weights: InversionWeights,
        generator: torch.Generator | None,
        teacher_ids: list[int],
        cumulative: bool = False,
        shifts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(Sum over the selected teachers of their inversion losses, mean of each term) (§6.3).

        The term means are 0-d tensors.

        ``cumulative`` reproduces the reference's partial-sum bug: teacher i weighs (M - i).
        ``shifts`` (len(teacher_ids), 2): each teacher's roll offset, drawn beforehand with
        :func:`purer.inversion.draw_shifts` (the trainer does, so a compiled objective sees no
        generator); None draws them here from ``generator``, in the same order.
        """
        if shifts is None:
            shifts = draw_shifts(weights.jitter, len(teacher_ids), generator)
        total = self.X.new_zeros(())
        collected = []
        gathered = self.X if self._rows_are_identity else self.X[self._all_rows]
        blocks = torch.split(gathered, self._sizes)
        for position, i in enumerate(teacher_ids):
            slot = self.teachers[i]
            images = blocks[i]
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            shift = None if shifts is None else shifts[position]
            loss, loss_parts = inversion_loss(
                slot.forward, slot.bn_targets, images, slot.targets, weights, None, shift
            )
            weight = (len(teacher_ids) - position) if cumulative else 1
            total = total + weight * loss
            collected.append(loss_parts)
        parts = {  # 0-d tensors: a float() here would break a compiled graph
            key: torch.stack([c[key] for c in collected]).mean() if collected else total.new_zeros(())
            for key in ("ce", "bn", "tv", "l2")
        }
        return total, parts

    @torch.no_grad()
    def label_agreement(self) -> dict[str, float]:
        """``purer.agreement`` counters of X as it is now: each teacher on the rows it inverts."""
        counts = zero_counts()
        for slot in self.teachers:
            images = self.X[slot.rows]
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            count_agreement(counts, slot.forward(images)[0], slot.targets)
        return counts

    def sample_task(
        self, n_way: int, k_shot: int, n_query: int, generator: torch.Generator, detach: bool = True
    ) -> Episode:
        """A pseudo task of ``n_way`` classes drawn uniformly without replacement.

        Each class's images are permuted into ``k_shot`` support + ``n_query`` query; labels follow
        the sampling order. ``detach=False`` keeps the graph to X (the adversarial step).
        """
        device = self.X.device
        classes = torch.randperm(self.n_classes, generator=generator)[:n_way]
        p = self.images_per_class
        support, query = [], []
        for c in classes.tolist():
            order = torch.randperm(p, generator=generator)[: k_shot + n_query] + c * p
            support.append(order[:k_shot])
            query.append(order[k_shot:])
        source = self.X.detach() if detach else self.X
        labels = torch.arange(n_way, device=device)
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        return Episode(
            support_x=source[torch.cat(support).to(device)].contiguous(memory_format=memory),
            support_y=labels.repeat_interleave(k_shot),
            query_x=source[torch.cat(query).to(device)].contiguous(memory_format=memory),
            query_y=labels.repeat_interleave(n_query),
            classes=classes,
        )
