"""TGR: task groupings of dissimilar members + an implicit-gradient-alignment regulariser.

Ref: Wei et al., "Task Groupings Regularization: Data-Free Meta-Learning with Heterogeneous
Pre-trained Models", ICML 2024 (arXiv 2405.16560); reference ``main.py``, ``task_similarity.py``.
Re-implemented from baselines.md §3.11:

- **Embedding**: ``embed_per_class`` images per class are inverted from every member (fresh generator,
  CE + BN); a probe network's diagonal Fisher information on them (Task2Vec-style: the probe's
  feature-extractor gradients of the CE restricted to the member's classes, squared, averaged) embeds
  each member; similarity = cosine.
- **Grouping**: spectral clustering into ``groups`` clusters with affinity 1 − similarity, so
  *dissimilar* members share a group; each epoch draws ``members_per_epoch`` members of one group
  (all of a smaller group's: a 13-member zoo in 5 groups has groups of 1-4; the record says how
  many members the epochs used, ``epoch_members_mean``, and how many epochs had fewer, ``short_epochs``).
- **Meta-update**: per member, a task from freshly inverted images and the loss KD + CE after MAML
  adaptation on its support. With member gradients g_i and their mean ḡ, each g_i is re-evaluated at
  θ − ``align_step``·(ḡ − g_i); their mean takes an Adam step (a separate Adam from the replay's).
- **Replay**: second-order MAML on bank tasks until ``patience`` iterations without a new best replay
  accuracy (or ``max_replay``).

**Probe (differs from the paper by default).** The paper uses an ImageNet-1k ResNet-34: outside
knowledge (and MiniImageNet's test classes are ImageNet classes). By default the probe here is a
conv4 trained in-harness on the zoo's own inverted images (no outside knowledge). Set
``probe.weights`` to a local torchvision ResNet-34 state dict to reproduce the paper; nothing is
downloaded, and the record then says ``uses_external_model: 1``.

**Timing.** ``member_inversions`` / ``inversion_seconds`` count every inversion; the embedding's
(``embed_per_class`` images per class, once per member) are also counted apart as
``embedding_inversions`` / ``embedding_seconds``, and ``inversion_seconds_per_member`` is the mean
over the epochs' inversions only (``images_per_class`` per class, comparable to ``dfmaml``'s).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from baselines._bank import ClassBank
from baselines._generator import fresh_generator, invert_with_generator
from baselines._kd import kd_loss
from baselines._replay import GeneratorReplayConfig, ReplayStall, check_generator_setup, train_replay_maml
from bench.errors import BenchError
from bench.learners.episodic import Resumable
from bench.learners.maml import FineTuneLearner, forward, inner_loop, maml_task_loss, module_params
from bench.method import METHODS, Budget, Learner, MetaLearner
from bench.seeding import derive_seed, make_generator
from purer.agreement import agreement_stats, count_agreement, zero_counts
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo


@dataclass
class ProbeConfig:
    """``weights: null`` = in-harness conv4 probe; a path = a local torchvision ResNet-34 state dict."""

    weights: str | None = None
    epochs: int = 20
    lr: float = 0.001


@dataclass
class TgrConfig(GeneratorReplayConfig):
    """TGR hyper-parameters (CPU schedule by default; paper values in the YAML comments)."""

    generate_iterations: int = 200
    bn: float = 1.0
    images_per_class: int = 30
    embed_per_class: int = 30
    groups: int = 5
    members_per_epoch: int = 4
    align_step: float = 0.001
    member_lr: float = 0.001
    patience: int = 4
    max_replay: int = 100
    probe: ProbeConfig = field(default_factory=ProbeConfig)


def spectral_groups(similarity: torch.Tensor, k: int, generator: torch.Generator) -> list[list[int]]:
    """Spectral clustering of members with affinity 1 − similarity (M, M) into <= k non-empty groups."""
    m = similarity.shape[0]
    k = max(1, min(k, m))
    affinity = (1.0 - similarity).clamp_min(0.0).double()
    affinity.fill_diagonal_(0.0)
    degree = affinity.sum(1).clamp_min(1e-12)
    scale = degree.rsqrt()
    laplacian = torch.eye(m, dtype=torch.float64) - scale[:, None] * affinity * scale[None, :]
    _, vectors = torch.linalg.eigh(laplacian)
    points = F.normalize(vectors[:, :k], dim=1)
    centres = points[torch.randperm(m, generator=generator)[:k]].clone()
    for _ in range(100):  # Lloyd iterations from a seeded start
        assign = torch.cdist(points, centres).argmin(1)
        moved = torch.stack(
            [points[assign == c].mean(0) if (assign == c).any() else centres[c] for c in range(k)]
        )
        if torch.allclose(moved, centres):
            break
        centres = moved
    groups = [sorted(torch.nonzero(assign == c).flatten().tolist()) for c in range(k)]
    return [g for g in groups if g]


def epoch_inversion_seconds_per_member(stats: dict[str, float]) -> float:
    """Mean seconds of one epoch inversion: all inversions' time less the embedding's, per inversion.

    ``stats`` holds ``member_inversions``, ``inversion_seconds``, ``embedding_inversions`` and
    ``embedding_seconds`` (0.0 when no epoch inverted a member).
    """
    count = stats["member_inversions"] - stats.get("embedding_inversions", 0.0)
    seconds = stats["inversion_seconds"] - stats.get("embedding_seconds", 0.0)
    return seconds / count if count > 0 else 0.0


@METHODS.register("tgr")
class Tgr(MetaLearner):
    """Fisher-embedding groups of dissimilar members, aligned member gradients, replay MAML."""

    Config = TgrConfig

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Embed and group members, then epochs of grouped meta-updates whenever replay stalls."""
        cfg: TgrConfig = self.cfg  # type: ignore[assignment]
        ctx = self.context
        zoo = check_generator_setup(cfg, zoo, self, "tgr", cfg.images_per_class)
        iterations = budget.meta_iterations or cfg.meta_iterations
        gens = {
            k: make_generator(derive_seed(ctx.seed, "tgr", k)) for k in ("synth", "groups", "tasks", "probe")
        }
        stats = {
            "epochs": 0.0,
            "member_inversions": 0.0,
            "inversion_seconds": 0.0,
            "embedding_inversions": 0.0,
            "embedding_seconds": 0.0,
            **zero_counts(),
        }
        groups: list[list[int]] = []  # filled at iteration 1 (a resumed run restores them instead)

        def group_members() -> None:
            started = time.perf_counter()
            groups.extend(spectral_groups(self._similarity(zoo, gens, stats), cfg.groups, gens["groups"]))
            stats["grouping_seconds"] = time.perf_counter() - started

        bank = ClassBank(cfg.bank_capacity)
        model = fresh_meta_model(ctx, cfg.width)
        member_opt = torch.optim.Adam(model.parameters(), lr=cfg.member_lr)
        stall = ReplayStall(cfg.patience, cfg.max_replay)

        def epoch() -> None:
            group = groups[int(torch.randint(len(groups), (1,), generator=gens["groups"]))]
            order = torch.randperm(len(group), generator=gens["groups"])[: cfg.members_per_epoch].tolist()
            tasks = []
            for index in (group[i] for i in order):
                member = zoo.members[index]
                images, logits = self._invert(zoo, member, cfg.images_per_class, gens["synth"], stats)
                for local, key in enumerate(member.class_keys):
                    block = images[local * cfg.images_per_class : (local + 1) * cfg.images_per_class]
                    bank.add_class(key, block[: ctx.k_shot], block[ctx.k_shot :])
                tasks.append(self._member_task(images, logits, len(member.spec.classes), gens["tasks"]))
            self._aligned_step(model, member_opt, tasks)
            stats["epochs"] += 1
            stats["epoch_members"] = stats.get("epoch_members", 0.0) + len(order)  # .get: older checkpoints
            stats["short_epochs"] = stats.get("short_epochs", 0.0) + float(len(order) < cfg.members_per_epoch)

        def before(it: int) -> None:
            if it == 1:
                group_members()
            if stall.step() or it == 1 or bank.n_classes < ctx.n_way:
                epoch()
                stall.reset()

        def sample(_it: int) -> list:
            return [
                bank.sample_task(ctx.n_way, ctx.k_shot, cfg.n_query, gens["tasks"])
                for _ in range(cfg.meta_batch)
            ]

        def loss(m: nn.Module, task):  # noqa: ANN001, ANN202
            value, acc = maml_task_loss(
                m, module_params(m), task, cfg.inner_steps, cfg.inner_lr, cfg.second_order
            )
            stall.record(float(acc))
            return value, acc

        def save() -> dict:
            return {"groups": [list(g) for g in groups], "member_opt": member_opt.state_dict()}

        def load(saved: dict) -> None:
            groups[:] = [list(g) for g in saved["groups"]]
            member_opt.load_state_dict(saved["member_opt"])

        model, _ = train_replay_maml(
            self,
            budget,
            iterations,
            sample,
            loss,
            before,
            model,
            (gens, bank, stall, stats),
            Resumable(save, load),
        )
        self.train_stats.update(stats)
        self.train_stats.update(
            {
                **agreement_stats(stats),
                "groups": float(len(groups)),
                "largest_group": float(max(len(g) for g in groups)),
                "uses_external_model": float(cfg.probe.weights is not None),
                "epoch_members_mean": stats.get("epoch_members", 0.0) / max(stats["epochs"], 1.0),
                "synth_images": float(bank.images_synthesised),
                "inversion_seconds_per_member": epoch_inversion_seconds_per_member(stats),
            }
        )
        return FineTuneLearner(model, cfg.inner_lr)

    def _invert(
        self,
        zoo: Zoo,
        member,  # noqa: ANN001 - ZooMember
        per_class: int,
        generator: torch.Generator,
        stats: dict[str, float],
        embedding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n_classes*per_class, C, H, W), member logits (n_classes*per_class, n_classes)).

        A fresh generator (CE + BN), class-blocked. Counted in ``member_inversions`` /
        ``inversion_seconds``, and also in ``embedding_inversions`` / ``embedding_seconds`` when
        ``embedding`` (the similarity's inversions, not an epoch's).
        """
        cfg: TgrConfig = self.cfg  # type: ignore[assignment]
        started = time.perf_counter()
        net = fresh_generator(
            cfg.nz, cfg.ngf, zoo.image_size, zoo.channels, zoo.mean, zoo.std, generator, self.context.device
        )
        out = invert_with_generator(
            member.run_model,
            len(member.spec.classes),
            per_class,
            cfg.generate_iterations,
            cfg.bn,
            net,
            cfg.nz,
            cfg.generator_lr,
            generator,
            self.context.device,
        )
        seconds = time.perf_counter() - started
        stats["member_inversions"] += 1
        stats["inversion_seconds"] += seconds
        if embedding:
            stats["embedding_inversions"] = stats.get("embedding_inversions", 0.0) + 1
            stats["embedding_seconds"] = stats.get("embedding_seconds", 0.0) + seconds
        else:  # the images an epoch banks and learns from (the similarity's are not replayed)
            labels = torch.arange(len(member.spec.classes), device=out[1].device).repeat_interleave(per_class)
            count_agreement(stats, out[1], labels)
        return out

    def _similarity(self, zoo: Zoo, gens: dict[str, torch.Generator], stats: dict) -> torch.Tensor:
        """Cosine similarity (M, M) of the members' diagonal-Fisher embeddings under the probe."""
        cfg: TgrConfig = self.cfg  # type: ignore[assignment]
        synth, per_class = gens["synth"], cfg.embed_per_class
        inverted = [self._invert(zoo, m, per_class, synth, stats, embedding=True) for m in zoo.members]
        keys = sorted({k for m in zoo.members for k in m.class_keys})
        columns = [[keys.index(k) for k in m.class_keys] for m in zoo.members]
        probe, extractor = self._probe(zoo, inverted, columns, len(keys), gens["probe"])
        embeddings = []
        for (images, _), cols in zip(inverted, columns, strict=True):
            labels = torch.arange(len(cols), device=images.device).repeat_interleave(cfg.embed_per_class)
            fisher = [torch.zeros_like(p) for p in extractor]
            for start in range(0, len(images), 16):
                logits = probe(images[start : start + 16])[:, cols]
                value = F.cross_entropy(logits, labels[start : start + 16], reduction="sum")
                grads = torch.autograd.grad(value, extractor)
                fisher = [f + g.pow(2) for f, g in zip(fisher, grads, strict=True)]
            embeddings.append(torch.cat([f.flatten() for f in fisher]) / len(images))
        stacked = F.normalize(torch.stack(embeddings).double(), dim=1)
        return stacked @ stacked.T

    def _probe(
        self, zoo: Zoo, inverted: list, columns: list[list[int]], n_keys: int, generator: torch.Generator
    ):  # noqa: ANN202
        """(probe module giving logits over the zoo's classes, its feature-extractor parameters)."""
        cfg: TgrConfig = self.cfg  # type: ignore[assignment]
        device = self.context.device
        if cfg.probe.weights is not None:
            return self._external_probe(Path(cfg.probe.weights), n_keys, inverted, columns, generator)
        from zoos.architectures import build_model

        probe = build_model("conv4", n_keys, zoo.image_size, zoo.channels, generator).to(device)
        x = torch.cat([images for images, _ in inverted])
        y = torch.cat(
            [torch.tensor(cols, device=device).repeat_interleave(cfg.embed_per_class) for cols in columns]
        )
        optimizer = torch.optim.Adam(probe.parameters(), lr=cfg.probe.lr)
        for _ in range(cfg.probe.epochs):
            order = torch.randperm(len(y), generator=generator).to(device)
            for start in range(0, len(order), 128):
                batch = order[start : start + 128]
                value = F.cross_entropy(probe(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
        probe.eval()
        return probe, [p for name, p in probe.named_parameters() if not name.startswith("head.")]

    def _external_probe(
        self, path: Path, n_keys: int, inverted: list, columns: list, generator: torch.Generator
    ):  # noqa: ANN001, ANN202
        """A local torchvision ResNet-34 (paper's probe) with a head fitted on the inverted images."""
        import torchvision

        if not path.is_file():
            raise BenchError(
                f"tgr: probe.weights={str(path)!r} does not exist; put a torchvision resnet34 state dict "
                "there (e.g. saved from torchvision.models.resnet34(weights='IMAGENET1K_V1') on a machine "
                "with internet) or set method.probe.weights=null for the in-harness probe"
            )
        if self.context.channels != 3:
            raise BenchError(
                f"tgr: the resnet34 probe needs 3-channel images; this zoo has {self.context.channels}"
            )
        device = self.context.device
        net = torchvision.models.resnet34(weights=None)
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as error:
            raise BenchError(
                f"tgr: probe.weights={str(path)!r} is not a resnet34 state dict: {error}"
            ) from error
        net.fc = nn.Linear(net.fc.in_features, n_keys)
        with torch.no_grad():  # nn.Linear's own init, drawn from the run's generator (not the global RNG)
            bound = 1.0 / net.fc.in_features**0.5
            net.fc.weight.uniform_(-bound, bound, generator=generator)
            net.fc.bias.uniform_(-bound, bound, generator=generator)
        net = net.to(device)
        x = torch.cat([images for images, _ in inverted])
        y = torch.cat(
            [
                torch.tensor(c, device=device).repeat_interleave(len(i) // len(c))
                for (i, _), c in zip(inverted, columns, strict=True)
            ]
        )
        optimizer = torch.optim.Adam(net.fc.parameters(), lr=self.cfg.probe.lr)  # type: ignore[attr-defined]
        net.eval()
        with torch.no_grad():
            features = torch.cat(
                [torch.flatten(net.avgpool(self._trunk(net)(x[s : s + 64])), 1) for s in range(0, len(x), 64)]
            )
        for _ in range(self.cfg.probe.epochs):  # type: ignore[attr-defined]
            value = F.cross_entropy(net.fc(features), y)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        return net, [p for name, p in net.named_parameters() if not name.startswith("fc.")]

    @staticmethod
    def _trunk(net: nn.Module) -> nn.Sequential:
        return nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )

    def _member_task(
        self, images: torch.Tensor, logits: torch.Tensor, n_classes: int, generator: torch.Generator
    ):  # noqa: ANN202
        """(support_x, support_y, query_x, query_y, teacher query logits) over n_way member classes."""
        ctx, cfg = self.context, self.cfg
        chosen = torch.randperm(n_classes, generator=generator)[: ctx.n_way].tolist()
        parts: dict[str, list[torch.Tensor]] = {"sx": [], "qx": [], "qt": []}
        for c in chosen:
            block = slice(c * cfg.images_per_class, (c + 1) * cfg.images_per_class)  # type: ignore[attr-defined]
            parts["sx"].append(images[block][: ctx.k_shot])
            parts["qx"].append(images[block][ctx.k_shot : ctx.k_shot + cfg.n_query])  # type: ignore[attr-defined]
            parts["qt"].append(logits[block][ctx.k_shot : ctx.k_shot + cfg.n_query][:, chosen])  # type: ignore[attr-defined]
        labels = torch.arange(ctx.n_way, device=images.device)
        return (
            torch.cat(parts["sx"]),
            labels.repeat_interleave(ctx.k_shot),
            torch.cat(parts["qx"]),
            labels.repeat_interleave(cfg.n_query),  # type: ignore[attr-defined]
            torch.cat(parts["qt"]),
        )

    def _member_loss(self, model: nn.Module, params: dict[str, torch.Tensor], task: tuple) -> torch.Tensor:
        """KD + CE on the member's query after MAML adaptation on its support."""
        cfg: TgrConfig = self.cfg  # type: ignore[assignment]
        sx, sy, qx, qy, qt = task
        adapted = inner_loop(model, params, sx, sy, cfg.inner_steps, cfg.inner_lr, cfg.second_order)
        if not cfg.second_order:  # first order: the query gradient at the adapted point reaches params
            adapted = {k: params[k] + (v - params[k]).detach() for k, v in adapted.items()}
        logits = forward(model, adapted, qx)
        return kd_loss(logits, qt, cfg.kd_loss, cfg.kd_temperature) + F.cross_entropy(logits, qy)

    def _aligned_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, tasks: list[tuple]) -> None:
        """Re-evaluate each member gradient at θ − align_step·(ḡ − g_i), average, one Adam step."""
        cfg: TgrConfig = self.cfg  # type: ignore[assignment]
        params = module_params(model)
        names = list(params)
        grads = [
            torch.autograd.grad(self._member_loss(model, params, t), [params[n] for n in names])
            for t in tasks
        ]
        mean = [torch.stack(parts).mean(0) for parts in zip(*grads, strict=True)]
        total = [torch.zeros_like(m) for m in mean]
        for task, g in zip(tasks, grads, strict=True):
            shifted = {
                n: (params[n] - cfg.align_step * (gm - gi)).detach().requires_grad_(True)
                for n, gm, gi in zip(names, mean, g, strict=True)
            }
            again = torch.autograd.grad(self._member_loss(model, shifted, task), [shifted[n] for n in names])
            total = [t + a / len(tasks) for t, a in zip(total, again, strict=True)]
        optimizer.zero_grad(set_to_none=True)
        for n, value in zip(names, total, strict=True):
            params[n].grad = value.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
