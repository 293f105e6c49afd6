"""FREE: a meta-learned generator recovers each member's data in a few steps; Reptile-style KD across members.

Ref: Wei et al., "FREE: Faster and Better Data-Free Meta-Learning", CVPR 2024 (arXiv 2405.00984);
reference ``main.py``, ``synthesis/task_recovery.py``. Re-implemented from baselines.md §3.10:

- **FIVE** (meta-generator): every epoch draws ``members_per_epoch`` members; for each, a clone of
  the meta-generator (and fresh latents) adapts ``adapt_steps`` Adam steps on member CE plus an
  adversarial term pushing images towards teacher-student disagreement on images where they agree;
  the clones' last-step gradients are summed into the meta-generator, which takes one Adam step
  (first-order MAML). The first ``warmup_epochs`` epochs train only the generator.
- **BELL** (meta-learner): on a clone θ' of θ, one Adam step per member, in sequence, on KD against
  that member's recovered images; θ's gradient is set to ``reptile_scale`` · (θ − θ') and θ steps
  (a separate Adam here: the loop's own optimiser serves the replay MAML).
- **Replay**: second-order MAML (5 inner steps) on bank tasks; a new epoch starts after
  ``patience`` replay iterations without a new best replay accuracy (or ``max_replay``).

Reference quirks, off by default: ``legacy.bank_last_member_only`` (only the last member's images
reach the bank each epoch) and ``legacy.alias_members`` (the epoch's members alias one network).
The record carries the recovery time per member (``recovery_seconds_per_member``) to check the
"20x faster recovery" claim against ``dfmaml``'s ``inversion_seconds_per_member`` on the same zoo.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from baselines._bank import ClassBank
from baselines._generator import Generator, fresh_generator
from baselines._kd import kd_loss
from baselines._replay import (
    GeneratorReplayConfig,
    ReplayStall,
    check_generator_setup,
    masked_disagreement,
    train_replay_maml,
)
from bench.learners.episodic import Resumable
from bench.learners.maml import FineTuneLearner, forward, maml_task_loss, module_params
from bench.method import METHODS, Budget, Learner, MetaLearner
from bench.progress import progress_options
from bench.seeding import derive_seed, make_generator
from purer.agreement import agreement_stats, count_agreement, zero_counts
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo, ZooMember


@dataclass
class FreeLegacy:
    """Reference behaviours, reproducible on request."""

    bank_last_member_only: bool = False
    alias_members: bool = False


@dataclass
class FreeConfig(GeneratorReplayConfig):
    """FREE hyper-parameters (CPU schedule by default; paper values in the YAML comments)."""

    latent_lr: float = 0.001
    adapt_steps: int = 5
    images_per_class: int = 20
    members_per_epoch: int = 4
    warmup_epochs: int = 20
    adv: float = 1.0
    bell_lr: float = 0.001
    reptile_scale: float = 67.0
    patience: int = 10
    max_replay: int = 100
    legacy: FreeLegacy = field(default_factory=FreeLegacy)


@METHODS.register("free")
class Free(MetaLearner):
    """Meta-generator (FIVE) + sequential Reptile KD across members (BELL) + replay MAML."""

    Config = FreeConfig

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Epochs of FIVE/BELL whenever replay stalls; meta-val selection; fine-tune learner."""
        cfg: FreeConfig = self.cfg  # type: ignore[assignment]
        ctx = self.context
        zoo = check_generator_setup(cfg, zoo, self, "free", cfg.images_per_class)
        iterations = budget.meta_iterations or cfg.meta_iterations
        gens = {k: make_generator(derive_seed(ctx.seed, "free", k)) for k in ("members", "synth", "tasks")}
        meta_gen = fresh_generator(
            cfg.nz, cfg.ngf, zoo.image_size, zoo.channels, zoo.mean, zoo.std, gens["synth"], ctx.device
        )
        gen_opt = torch.optim.Adam(meta_gen.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
        bank = ClassBank(cfg.bank_capacity)
        state = {"model": None, "bell": None}
        stall = ReplayStall(cfg.patience, cfg.max_replay)
        stats = {
            "epochs": 0.0,
            "member_recoveries": 0.0,
            "recovery_seconds": 0.0,
            "bell_steps": 0.0,
            **zero_counts(),
        }

        def epoch(train_student: bool) -> None:
            count = min(cfg.members_per_epoch, len(zoo.members))
            picks = torch.randperm(len(zoo.members), generator=gens["members"])[:count].tolist()
            if cfg.legacy.alias_members:  # the reference's "ma" mode: every slot is the last network
                picks = [picks[-1]] * count
            student = state["model"] if train_student else None
            recovered = [
                self._recover(
                    zoo.members[i], meta_gen, len(zoo.members[i].spec.classes), student, gens["synth"], stats
                )
                for i in picks
            ]
            gen_opt.step()  # the clones' last-step gradients were summed into meta_gen's .grad
            gen_opt.zero_grad(set_to_none=True)
            stats["epochs"] += 1
            if not train_student:
                return
            self._bell(
                state,
                [
                    (zoo.members[i], images, logits)
                    for i, (images, logits) in zip(picks, recovered, strict=True)
                ],
            )
            stats["bell_steps"] += 1
            kept = recovered[-1:] if cfg.legacy.bank_last_member_only else recovered
            kept_picks = picks[-1:] if cfg.legacy.bank_last_member_only else picks
            for index, (images, _) in zip(kept_picks, kept, strict=True):
                blocks = images.split(cfg.images_per_class)
                for key, block in zip(zoo.members[index].class_keys, blocks, strict=True):
                    bank.add_class(key, block[: ctx.k_shot], block[ctx.k_shot :])

        def before(it: int) -> None:
            if it == 1:
                warmup = range(cfg.warmup_epochs)  # generator-only epochs: minutes before iteration 1
                for _ in tqdm(warmup, desc="free warm-up", unit="epoch", leave=False, **progress_options()):
                    epoch(train_student=False)
            if stall.step() or it == 1 or bank.n_classes < ctx.n_way:
                epoch(train_student=True)
                stall.reset()

        def sample(_it: int) -> list:
            return [
                bank.sample_task(ctx.n_way, ctx.k_shot, cfg.n_query, gens["tasks"])
                for _ in range(cfg.meta_batch)
            ]

        def loss(model: torch.nn.Module, task):  # noqa: ANN001, ANN202
            value, acc = maml_task_loss(
                model, module_params(model), task, cfg.inner_steps, cfg.inner_lr, cfg.second_order
            )
            stall.record(float(acc))
            return value, acc

        state["model"] = fresh_meta_model(ctx, cfg.width)

        def save() -> dict:
            return {
                "meta_gen": meta_gen.state_dict(),
                "gen_opt": gen_opt.state_dict(),
                "bell": None if state["bell"] is None else state["bell"].state_dict(),
            }

        def load(saved: dict) -> None:
            meta_gen.load_state_dict(saved["meta_gen"])
            gen_opt.load_state_dict(saved["gen_opt"])
            if saved["bell"] is not None:
                state["bell"] = torch.optim.Adam(state["model"].parameters(), lr=cfg.bell_lr)
                state["bell"].load_state_dict(saved["bell"])

        model, _ = train_replay_maml(
            self,
            budget,
            iterations,
            sample,
            loss,
            before,
            state["model"],
            (gens, bank, stall, stats),
            Resumable(save, load),
        )
        self.train_stats.update(stats)
        self.train_stats.update(
            {
                **agreement_stats(stats),
                "recovery_seconds_per_member": stats["recovery_seconds"]
                / max(stats["member_recoveries"], 1.0),
                "synth_images": float(bank.images_synthesised),
                "bank_classes": float(bank.n_classes),
            }
        )
        return FineTuneLearner(model, cfg.inner_lr)

    def _recover(
        self,
        member: ZooMember,
        meta_gen: Generator,
        n_classes: int,
        student: torch.nn.Module | None,
        generator: torch.Generator,
        stats: dict[str, float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A meta-generator clone adapted to ``member``: (images (n_classes*ipc, C, H, W), member logits)."""
        cfg: FreeConfig = self.cfg  # type: ignore[assignment]
        device = self.context.device
        started = time.perf_counter()
        clone = copy.deepcopy(meta_gen)
        n = n_classes * cfg.images_per_class
        z = torch.randn(n, cfg.nz, generator=generator).to(device).requires_grad_(True)
        labels = torch.arange(n_classes, device=device).repeat_interleave(cfg.images_per_class)
        optimizer = torch.optim.Adam(
            [{"params": clone.parameters(), "lr": cfg.generator_lr}, {"params": [z], "lr": cfg.latent_lr}],
            betas=(0.5, 0.999),
        )
        frozen = None if student is None else {k: v.detach() for k, v in module_params(student).items()}
        for step in range(cfg.adapt_steps):
            x = clone(z)
            logits = member.run_model(x)
            value = F.cross_entropy(logits, labels)
            if frozen is not None and cfg.adv > 0:
                value = value - cfg.adv * masked_disagreement(logits, forward(student, frozen, x)).mean()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if (
                step == cfg.adapt_steps - 1
            ):  # first-order MAML: the last step's gradient goes to the meta-generator
                for meta_p, p in zip(meta_gen.parameters(), clone.parameters(), strict=True):
                    meta_p.grad = p.grad.clone() if meta_p.grad is None else meta_p.grad + p.grad
            optimizer.step()
        with torch.no_grad():
            images = clone(z)
            logits = member.run_model(images)
        count_agreement(stats, logits, labels)
        stats["member_recoveries"] += 1
        stats["recovery_seconds"] += time.perf_counter() - started
        return images, logits

    def _bell(self, state: dict, recovered: list[tuple[ZooMember, torch.Tensor, torch.Tensor]]) -> None:
        """Sequential per-member KD Adam steps on a clone of θ, then θ's Reptile step."""
        cfg: FreeConfig = self.cfg  # type: ignore[assignment]
        model: torch.nn.Module = state["model"]
        clone = copy.deepcopy(model)
        inner = torch.optim.Adam(clone.parameters(), lr=cfg.bell_lr)
        n_way, rows = self.context.n_way, self.context.n_way * cfg.images_per_class
        for _member, images, logits in recovered:  # the member's first n_way classes (class-blocked)
            student = clone(images[:rows])
            value = kd_loss(student, logits[:rows, :n_way], cfg.kd_loss, cfg.kd_temperature)
            inner.zero_grad(set_to_none=True)
            value.backward()
            inner.step()
        if state["bell"] is None:
            state["bell"] = torch.optim.Adam(model.parameters(), lr=cfg.bell_lr)
        outer: torch.optim.Optimizer = state["bell"]
        outer.zero_grad(set_to_none=True)
        for p, q in zip(model.parameters(), clone.parameters(), strict=True):
            p.grad = cfg.reptile_scale * (p.detach() - q.detach())
        outer.step()
        outer.zero_grad(set_to_none=True)
