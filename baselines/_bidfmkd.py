"""BiDf-MKD's meta-training, shared by ``bidfmkd`` (white-box) and ``bidfmkd_zo`` (black-box).

Ref: Hu et al., "Learning to Learn from APIs: Black-Box Data-Free Meta-Learning", ICML 2023
(arXiv 2305.18413); Trustworthy-DFML ``method/bidfmkd.py``. baselines.md §3.8, re-implemented:

1. **Inversion** of one random member: a freshly initialised generator and latent codes (Adam 1e-3,
   betas 0.5/0.999, ``generate_iterations`` steps) make ``bank_support`` + ``bank_query`` images per
   class that the member labels as that class (CE). White-box: true gradients. Black-box: the member
   is only a query-counting ``probabilities(x)`` API (softmax outputs; the losses use their logs)
   and the image gradient is the zero-order estimate, reaching the generator through the surrogate
   ⟨ĝ, x⟩. After ``boundary_start`` iterations the query images also move towards teacher-student
   disagreement on images where both agree (white-box: per-image KL, ``masked_disagreement``;
   black-box: L1 between teacher and student log-probabilities). ``boundary_inversions`` counts the
   query sets synthesised with this term.
2. **Bi-level KD** on the new member's task (one outer step): inner ``kd_inner_steps`` SGD steps
   matching the student to the teacher on the synthetic support, outer the same matching on the
   synthetic query (``kd_loss``: ``kl`` on log-probabilities by default, ``kl_prob_legacy`` = the
   reference's KL on probabilities).
3. **Replay** between inversions: second-order MAML with hard-label CE on bank tasks that mix classes
   across members (a bank keeping ``bank_capacity`` batches per class). The next member is inverted
   after ``patience`` iterations without a new best replay training accuracy.

Checkpoints are selected on the harness's meta-val probe; the learner fine-tunes at test. The record
carries ``inversion_seconds_per_member`` (support + query synthesis of one member), as ``dfmaml`` and
``free`` do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from baselines._bank import ClassBank
from baselines._generator import fresh_generator
from baselines._kd import KDEpisode, bilevel_kd_loss
from baselines._replay import (
    GeneratorReplayConfig,
    ReplayStall,
    check_generator_setup,
    masked_disagreement,
    train_replay_maml,
)
from baselines._zero_order import QueryCountingTeacher, log_probabilities, zero_order_gradient
from bench.learners.episodic import Resumable
from bench.learners.maml import FineTuneLearner, forward, maml_task_loss, module_params
from bench.method import Budget, Learner, MetaLearner
from bench.seeding import derive_seed, make_generator
from purer.agreement import agreement_stats, count_agreement, zero_counts
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo, ZooMember


@dataclass
class BiDfMkdConfig(GeneratorReplayConfig):
    """BiDf-MKD hyper-parameters (paper values in the YAML comments; CPU schedule by default)."""

    kd_inner_steps: int = 10
    generate_iterations: int = 200
    bank_support: int = 30
    bank_query: int = 30
    boundary_start: int | None = None
    boundary_weight: float = 1.0


@dataclass
class BiDfMkdZoConfig(BiDfMkdConfig):
    """Zero-order estimator settings of the black-box variant."""

    zo_directions: int = 100
    zo_mu: float = 0.005
    zo_chunks: int = 5


class BiDfMkdBase(MetaLearner):
    """The BiDf-MKD loop; subclasses fix ``black_box``."""

    black_box: bool = False

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Invert / distil / replay for the scheduled iterations; meta-val selection; fine-tune learner."""
        cfg: BiDfMkdConfig = self.cfg  # type: ignore[assignment]
        ctx = self.context
        zoo = check_generator_setup(cfg, zoo, self, str(cfg.name))
        iterations = budget.meta_iterations or cfg.meta_iterations
        boundary_start = (
            cfg.boundary_start if cfg.boundary_start is not None else round(iterations * 4000 / 60000)
        )
        gens = {
            k: make_generator(derive_seed(ctx.seed, str(cfg.name), k)) for k in ("members", "synth", "tasks")
        }
        bank = ClassBank(cfg.bank_capacity)
        state = {"kd_task": None, "model": None}
        stall = ReplayStall(cfg.patience)
        stats = {
            "member_inversions": 0.0,
            "boundary_inversions": 0.0,
            "teacher_queries": 0.0,
            "inversion_seconds": 0.0,
            "kd_steps": 0.0,
            **zero_counts(),
        }

        def before(it: int) -> None:
            if not stall.step() and it > 1:
                return
            index = int(torch.randint(len(zoo.members), (1,), generator=gens["members"]))
            started = time.perf_counter()
            member = zoo.members[index]
            pools = self._invert(zoo, member, state["model"], it > boundary_start, gens["synth"], stats)
            stats["inversion_seconds"] += time.perf_counter() - started
            stats["member_inversions"] += 1
            for local, key in enumerate(member.class_keys):
                bank.add_class(key, pools["support"][local], pools["query"][local])
            state["kd_task"] = pools
            stall.reset()

        def sample(_it: int) -> list:
            pools, state["kd_task"] = state["kd_task"], None
            if pools is not None:
                stats["kd_steps"] += 1
                return [self._kd_episode(pools, gens["tasks"]) for _ in range(cfg.meta_batch)]
            return [
                bank.sample_task(ctx.n_way, ctx.k_shot, cfg.n_query, gens["tasks"])
                for _ in range(cfg.meta_batch)
            ]

        def loss(model: torch.nn.Module, task):  # noqa: ANN001, ANN202
            state["model"] = model
            params = module_params(model)
            if isinstance(task, KDEpisode):
                return bilevel_kd_loss(
                    model,
                    params,
                    task,
                    cfg.kd_inner_steps,
                    cfg.inner_lr,
                    cfg.kd_loss,
                    cfg.kd_temperature,
                    cfg.second_order,
                )
            value, acc = maml_task_loss(model, params, task, cfg.inner_steps, cfg.inner_lr, cfg.second_order)
            stall.record(float(acc))
            return value, acc

        model = fresh_meta_model(ctx, cfg.width)

        def save() -> dict:
            return {"kd_task": state["kd_task"], "student_seen": state["model"] is not None}

        def load(saved: dict) -> None:
            state["kd_task"] = saved["kd_task"]
            state["model"] = model if saved["student_seen"] else None

        model, result = train_replay_maml(
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
        seconds = max(result.seconds, 1e-9)
        self.train_stats.update(stats)
        self.train_stats.update(
            {
                **agreement_stats(stats),
                "inversion_steps": stats["member_inversions"] * 2 * cfg.generate_iterations,
                "inversion_seconds_per_member": stats["inversion_seconds"]
                / max(stats["member_inversions"], 1.0),
                "synth_images": float(bank.images_synthesised),
                "synth_images_per_s": bank.images_synthesised / seconds,
                "bank_classes": float(bank.n_classes),
                "boundary_start": float(boundary_start),
                "black_box": float(self.black_box),
            }
        )
        return FineTuneLearner(model, cfg.inner_lr)

    def _invert(
        self,
        zoo: Zoo,
        member: ZooMember,
        student: torch.nn.Module | None,
        boundary: bool,
        generator: torch.Generator,
        stats: dict[str, float],
    ) -> dict[str, list[torch.Tensor]]:
        """Per-class images and teacher scores: {"support": [(S, C, H, W)] * n_classes, "support_t": ...}.

        Teacher scores (S, n_classes) are logits (white-box) or log-probabilities (black-box); the KD
        losses are softmaxes of them, which a per-row shift leaves unchanged. A query set made with
        the boundary term adds 1 to ``stats["boundary_inversions"]``.
        """
        cfg: BiDfMkdConfig = self.cfg  # type: ignore[assignment]
        n_classes = len(member.spec.classes)
        pools: dict[str, list[torch.Tensor]] = {}
        for part, per_class in (("support", cfg.bank_support), ("query", cfg.bank_query)):
            use_boundary = boundary and part == "query" and student is not None and cfg.boundary_weight > 0
            stats["boundary_inversions"] += float(use_boundary)
            images, logits = self._synthesize(
                zoo, member, n_classes, per_class, student if use_boundary else None, generator, stats
            )
            pools[part] = list(images.split(per_class))
            pools[f"{part}_t"] = list(logits.split(per_class))
        return pools

    def _synthesize(
        self,
        zoo: Zoo,
        member: ZooMember,
        n_classes: int,
        per_class: int,
        student: torch.nn.Module | None,
        generator: torch.Generator,
        stats: dict[str, float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n_classes*per_class, C, H, W), teacher scores (n_classes*per_class, n_classes)).

        A fresh generator, class-blocked; scores as in :meth:`_invert`.
        """
        cfg: BiDfMkdConfig = self.cfg  # type: ignore[assignment]
        device = self.context.device
        net = fresh_generator(
            cfg.nz, cfg.ngf, zoo.image_size, zoo.channels, zoo.mean, zoo.std, generator, device
        )
        n = n_classes * per_class
        z = torch.randn(n, cfg.nz, generator=generator).to(device).requires_grad_(True)
        labels = torch.arange(n_classes, device=device).repeat_interleave(per_class)
        optimizer = torch.optim.Adam([*net.parameters(), z], lr=cfg.generator_lr, betas=(0.5, 0.999))
        frozen = None if student is None else {k: v.detach() for k, v in module_params(student).items()}
        api = QueryCountingTeacher(member.run_model) if self.black_box else None
        for _ in range(cfg.generate_iterations):
            x = net(z)
            if api is not None:
                loss = self._zero_order_loss(api, x, labels, student, frozen, generator)
            else:
                loss = self._white_box_loss(member, x, labels, student, frozen)
                stats["teacher_queries"] += n
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            images = net(z)
            if api is None:
                scores = member.run_model(images)
                stats["teacher_queries"] += n
            else:
                scores = log_probabilities(api.probabilities(images))
                stats["teacher_queries"] += api.queries
        count_agreement(stats, scores, labels)  # the member's scores on the final images, already queried
        return images, scores

    def _white_box_loss(
        self,
        member: ZooMember,
        x: torch.Tensor,
        labels: torch.Tensor,
        student: torch.nn.Module | None,
        frozen: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Member CE on images x (B, C, H, W), labels (B,), minus the boundary term given a student."""
        cfg: BiDfMkdConfig = self.cfg  # type: ignore[assignment]
        logits = member.run_model(x)
        loss = F.cross_entropy(logits, labels)
        if frozen is not None:
            boundary = masked_disagreement(logits, forward(student, frozen, x))  # (B,)
            loss = loss - cfg.boundary_weight * boundary.mean()
        return loss

    def _zero_order_loss(
        self,
        api: QueryCountingTeacher,
        x: torch.Tensor,
        labels: torch.Tensor,
        student: torch.nn.Module | None,
        frozen: dict[str, torch.Tensor] | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Surrogate whose x-gradient is the ZO estimate of the teacher terms (+ the exact student term).

        Images x (B, C, H, W), labels (B,). Teacher terms use only log p of the API's answers: CE is
        -log p[label] (= CE on the logits), the boundary term the L1 distance between teacher and
        student log-probabilities on the images where their argmax agree.
        """
        cfg: BiDfMkdZoConfig = self.cfg  # type: ignore[assignment]
        s_log = None if frozen is None else F.log_softmax(forward(student, frozen, x), 1)
        s_fixed = None if s_log is None else s_log.detach()
        agree = None

        def per_image(images: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            log_t = log_probabilities(api.probabilities(images))
            value = F.nll_loss(log_t, labels[source], reduction="none")
            if s_fixed is not None:
                value = value - cfg.boundary_weight * agree[source] * (log_t - s_fixed[source]).abs().sum(1)
            return value

        if s_fixed is not None:
            log_t_now = log_probabilities(api.probabilities(x))
            agree = (log_t_now.argmax(1) == s_fixed.argmax(1)).float()
        g = zero_order_gradient(per_image, x.detach(), cfg.zo_directions, cfg.zo_mu, cfg.zo_chunks, generator)
        surrogate = (g * x).sum() / x.shape[0]
        if s_log is not None:  # the student is ours: its part of the boundary term is exact
            surrogate = surrogate - cfg.boundary_weight * (agree * (log_t_now - s_log).abs().sum(1)).mean()
        return surrogate

    def _kd_episode(self, pools: dict[str, list[torch.Tensor]], generator: torch.Generator) -> KDEpisode:
        """An N-way KD task from the freshly inverted member (teacher scores restricted to its classes)."""
        ctx, cfg = self.context, self.cfg
        chosen = torch.randperm(len(pools["support"]), generator=generator)[: ctx.n_way].tolist()
        parts: dict[str, list[torch.Tensor]] = {"sx": [], "st": [], "qx": [], "qt": []}
        for c in chosen:
            s = torch.randperm(len(pools["support"][c]), generator=generator)[: ctx.k_shot]
            q = torch.randperm(len(pools["query"][c]), generator=generator)[: cfg.n_query]
            parts["sx"].append(pools["support"][c][s])
            parts["st"].append(pools["support_t"][c][s][:, chosen])
            parts["qx"].append(pools["query"][c][q])
            parts["qt"].append(pools["query_t"][c][q][:, chosen])
        labels = torch.arange(ctx.n_way, device=ctx.device)
        return KDEpisode(
            torch.cat(parts["sx"]),
            labels.repeat_interleave(ctx.k_shot),
            torch.cat(parts["qx"]),
            labels.repeat_interleave(cfg.n_query),
            torch.tensor(chosen),
            torch.cat(parts["st"]),
            torch.cat(parts["qt"]),
        )
