"""The per-class synthetic image bank of invert-then-meta-learn baselines (dfmaml, dfprotonet).

``invert_member`` runs DeepInversion on one zoo member (the shared terms of ``purer.inversion``:
CE + BN-statistics + TV + L2 on a jittered batch, Adam on the pixels) for a support batch and a
separate query batch per class; :class:`ClassBank` keeps the latest images of each class (keyed by
dataset-qualified class name, so classes of different members never collide) and samples N-way
pseudo tasks across members.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from bench.errors import BenchError
from bench.progress import progress_options
from bench.tasks import Episode
from purer.agreement import check_images, zero_counts
from purer.inversion import InversionWeights, inversion_loss, running_targets
from purer.teachers import teacher_forward
from zoos.zoo import ZooMember

log = logging.getLogger(__name__)


def distillable_members(zoo, n_way: int, method: str, train_stats: dict[str, float]):  # noqa: ANN001, ANN201 - Zoo
    """``zoo`` restricted to the members holding >= ``n_way`` classes.

    For the methods that distil one member's ``n_way``-way task at a time. PURER's 13-member split
    of 64 classes leaves the last member 4 classes: it cannot give a 5-way task, so it is left
    out, with a warning and ``train_stats["members_too_few_classes"]`` in the record. Raises when
    no member is left.
    """
    import dataclasses

    small = [m for m in zoo.members if len(m.spec.classes) < n_way]
    train_stats["members_too_few_classes"] = float(len(small))
    if not small:
        return zoo
    names = ", ".join(f"member {m.spec.index} ({len(m.spec.classes)})" for m in small[:5])
    if len(small) == len(zoo.members):
        raise BenchError(
            f"{method} distils one member's task at a time, so members need >= {n_way} classes for "
            f"{n_way}-way tasks; none has: {names}"
        )
    log.warning("%s: %d member(s) with fewer than %d classes left out: %s", method, len(small), n_way, names)
    return dataclasses.replace(zoo, members=[m for m in zoo.members if len(m.spec.classes) >= n_way])


def invert_batch(
    member: ZooMember,
    per_class: int,
    steps: int,
    lr: float,
    weights: InversionWeights,
    generator: torch.Generator,
    device: torch.device,
    description: str = "inversion",
) -> torch.Tensor:
    """(n_classes * per_class, C, H, W) images inverted from ``member`` (class-blocked, local order).

    ``description`` names the Adam-step progress bar (a resnet member takes minutes on a CPU).
    """
    n_classes = len(member.spec.classes)
    shape = (n_classes * per_class, member.spec.channels, member.spec.image_size, member.spec.image_size)
    images = torch.randn(shape, generator=generator).to(device).requires_grad_(True)
    labels = torch.arange(n_classes, device=device).repeat_interleave(per_class)
    forward, targets = teacher_forward(member.run_model), running_targets(member.model)
    optimizer = torch.optim.Adam([images], lr=lr)
    for _ in tqdm(range(steps), desc=description, unit="step", leave=False, **progress_options()):
        loss, _ = inversion_loss(forward, targets, images, labels, weights, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return images.detach()


class ClassBank:
    """Synthetic support / query pools per class: ``support[key]`` (S, C, H, W).

    Each class keeps its last ``capacity`` inverted batches (1 = only the latest, dfmaml; BiDf-MKD's
    replay memory keeps 20); the pools are their concatenation.
    """

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise BenchError(f"bank capacity must be >= 1 batch per class; got {capacity}")
        self.capacity = capacity
        self.support: dict[str, torch.Tensor] = {}
        self.query: dict[str, torch.Tensor] = {}
        self._batches: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.images_synthesised = 0
        self.agreement = zero_counts()  # label agreement of the images add_member inverted

    def add_class(self, key: str, support: torch.Tensor, query: torch.Tensor) -> None:
        """Append one batch of ``key``'s images (support (S, C, H, W), query (Q, C, H, W))."""
        batches = self._batches.setdefault(key, [])
        batches.append((support, query))
        del batches[: -self.capacity]
        self.support[key] = batches[0][0] if len(batches) == 1 else torch.cat([b[0] for b in batches])
        self.query[key] = batches[0][1] if len(batches) == 1 else torch.cat([b[1] for b in batches])
        self.images_synthesised += len(support) + len(query)

    def add_member(
        self,
        member: ZooMember,
        n_support: int,
        n_query: int,
        steps: int,
        lr: float,
        weights: InversionWeights,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        """Invert ``member``'s classes (a support batch and a separate query batch) into the bank."""
        log.info(
            "inverting zoo member %d (%s, %d classes): 2 batches x %d Adam steps, %d + %d images per class",
            member.spec.index,
            member.spec.arch,
            len(member.spec.classes),
            steps,
            n_support,
            n_query,
        )
        name = f"member {member.spec.index}"
        support = invert_batch(member, n_support, steps, lr, weights, generator, device, f"{name} support")
        query = invert_batch(member, n_query, steps, lr, weights, generator, device, f"{name} query")
        labels = torch.arange(len(member.spec.classes), device=device)
        check_images(self.agreement, member.run_model, support, labels.repeat_interleave(n_support))
        check_images(self.agreement, member.run_model, query, labels.repeat_interleave(n_query))
        for local, key in enumerate(member.class_keys):
            self.add_class(
                key,
                support[local * n_support : (local + 1) * n_support],
                query[local * n_query : (local + 1) * n_query],
            )

    def state_dict(self) -> dict:
        """The batches per class and the synthesis and agreement counters (for loop checkpoints)."""
        return {
            "batches": {k: [list(b) for b in v] for k, v in self._batches.items()},
            "images_synthesised": self.images_synthesised,
            "agreement": dict(self.agreement),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s contents (replaces everything held now)."""
        self.support, self.query, self._batches = {}, {}, {}
        for key, batches in state["batches"].items():
            for support, query in batches:
                self.add_class(key, support, query)
        self.images_synthesised = int(state["images_synthesised"])
        # A checkpoint written before the counters existed: its earlier inversions go unchecked
        # (the record's synth_labels_checked says how many images the agreement covers).
        self.agreement = {**zero_counts(), **state.get("agreement", {})}

    @property
    def n_classes(self) -> int:
        """Classes currently in the bank."""
        return len(self.support)

    def sample_task(self, n_way: int, k_shot: int, n_query: int, generator: torch.Generator) -> Episode:
        """An N-way pseudo task over the bank's classes (possibly from different members)."""
        keys = sorted(self.support)
        if len(keys) < n_way:
            raise BenchError(f"the class bank holds {len(keys)} classes; an {n_way}-way task needs {n_way}")
        chosen = torch.randperm(len(keys), generator=generator)[:n_way].tolist()
        support, query = [], []
        for index in chosen:
            pool_s, pool_q = self.support[keys[index]], self.query[keys[index]]
            if k_shot > len(pool_s) or n_query > len(pool_q):
                raise BenchError(
                    f"bank pools hold {len(pool_s)} support / {len(pool_q)} query images per class; "
                    f"the task needs {k_shot} / {n_query}"
                )
            support.append(pool_s[torch.randperm(len(pool_s), generator=generator)[:k_shot]])
            query.append(pool_q[torch.randperm(len(pool_q), generator=generator)[:n_query]])
        labels = torch.arange(n_way, device=support[0].device)
        return Episode(
            torch.cat(support),
            labels.repeat_interleave(k_shot),
            torch.cat(query),
            labels.repeat_interleave(n_query),
            torch.tensor(chosen),
        )
