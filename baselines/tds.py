"""TDS ("TACO"): trustworthy DFML with a conditional generator, task memory and member selection.

Ref: Hu et al., "Task-Distributionally Robust Data-Free Meta-Learning", arXiv 2311.14756 (TPAMI
2025); Trustworthy-DFML ``method/taco6.py``. Re-implemented from baselines.md §3.9:

- **Synthesiser**: per inverted member, a fresh conditional generator G(z, y) trained for
  ``generate_iterations`` Adam steps (lr 1e-3) on member CE + ``bn`` x BN-statistic matching (the
  DeepInversion term shared with ``purer.inversion``), then sampled for a task-shaped support /
  query set per class and a held-out pseudo-validation set.
- **Meta-learner**: ProtoNet (nearest prototype at test). Fresh tasks from a newly inverted member
  use KD: KL(member logits || prototype logits) on the query.
- **Memory**: a per-class bank (``bank_capacity`` batches). Each replayed task is, by a fair coin,
  plain ProtoNet CE on a bank task or **task interpolation**: the embeddings of two bank tasks are
  mixed with λ ~ Beta(0.5, 0.5) and ProtoNet CE is applied to the mixed prototypes and queries.
- **Re-inversion**: ``val_checks`` pseudo-validation episodes are scored every ``check_every``
  iterations (the paper: every iteration); after ``patience`` checks without a new best, a round
  inverts ``members_per_round`` members.
- **Member selection**: one logit per member, softmax sampling without replacement, REINFORCE (Adam
  lr 0.1) with a moving-average baseline; the reward of a round is the change of the mean
  pseudo-validation accuracy (over the plateau window) from one round to the next (so the first
  round, which has no level before it, updates nothing).

Real meta-val (opt-in): the paper scores the plateau check and the reward on real meta-val episodes.
``tds`` (the default) uses held-out *pseudo* episodes instead, so it stays data-free;
``tds_real_val`` (``val_signal: real``) is the paper's variant: ``val_checks`` fresh real meta-val
episodes per check, drawn through the harness's ``sample_real_val``; its records say
``data_free: false``, ``real_data: meta_val`` and the leaderboard marks the row. Images are at the
zoo's resolution (the paper uses 32 px everywhere). The record carries
``inversion_seconds_per_member`` (generator training + sampling of one member), as ``dfmaml`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F

from baselines._bank import ClassBank, distillable_members
from baselines._generator import fresh_conditional_generator, fresh_generator
from baselines._kd import kd_loss
from bench.errors import BenchError
from bench.learners.episodic import (
    EpisodicConfig,
    Resumable,
    generator_states,
    restore_generators,
    train_episodic,
)
from bench.learners.protonet import Embed, ProtoNetLearner, protonet_logits, protonet_task_loss, prototypes
from bench.method import METHODS, Budget, Learner, MetaLearner
from bench.seeding import derive_seed, make_generator
from bench.tasks import Episode
from purer.agreement import agreement_stats, count_agreement, zero_counts
from purer.inversion import bn_stat_loss, running_targets
from purer.teachers import teacher_forward
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo, ZooMember


@dataclass
class TdsConfig(EpisodicConfig):
    """TDS hyper-parameters (CPU schedule by default; paper values in the YAML comments)."""

    at_least_one: ClassVar[tuple[str, ...]] = ("val_checks", "check_every", "patience")
    nz: int = 256
    ngf: int = 64
    generator_lr: float = 0.001
    generate_iterations: int = 200
    bn: float = 1.0
    bank_capacity: int = 20
    interpolation_prob: float = 0.5
    beta: float = 0.5
    val_checks: int = 4
    #: Episodes of the plateau check / reward: ``pseudo`` (held-out synthetic) or ``real`` (meta-val).
    val_signal: str = "pseudo"
    check_every: int = 1
    patience: int = 10
    members_per_round: int = 4
    policy_lr: float = 0.1
    baseline_momentum: float = 0.9
    kd_temperature: float = 1.0


@dataclass
class _FreshTask:
    """A task from a newly inverted member with the member's query logits (n_way*q, n_way)."""

    episode: Episode
    teacher_query: torch.Tensor


@dataclass
class _Interpolated:
    """Two bank tasks whose embeddings are mixed with weight ``lam`` on the first."""

    first: Episode
    second: Episode
    lam: float


def _fresh_to_dict(task: _FreshTask) -> dict:
    """A pending fresh task as plain tensors (for loop checkpoints)."""
    episode = [getattr(task.episode, f.name) for f in fields(task.episode)]
    return {"episode": episode, "teacher_query": task.teacher_query}


def _fresh_from_dict(saved: dict) -> _FreshTask:
    """Inverse of :func:`_fresh_to_dict`."""
    return _FreshTask(Episode(*saved["episode"]), saved["teacher_query"])


def interpolated_loss(
    embed: Embed, first: Episode, second: Episode, lam: float, n_way: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProtoNet CE on mixed embeddings: z = λ z_first + (1 - λ) z_second (class-aligned, same shapes)."""
    support = lam * embed(first.support_x) + (1 - lam) * embed(second.support_x)
    query = lam * embed(first.query_x) + (1 - lam) * embed(second.query_x)
    logits = -torch.cdist(query, prototypes(support, first.support_y, n_way)).pow(2)
    loss = F.cross_entropy(logits, first.query_y)
    return loss, (logits.argmax(1) == first.query_y).float().mean().detach() * 100.0


@METHODS.register("tds")
class Tds(MetaLearner):
    """Conditional-generator inversion, KD on fresh tasks, interpolated replay, REINFORCE member selection."""

    Config = TdsConfig
    #: 2: the first round no longer updates the member-selection policy. It has no level to start
    #: from, so its "reward" was the raw pseudo-val accuracy (~50 points against later changes of a
    #: few), which pushed the policy away from the members it had just chosen for ~15 rounds.
    code_version = 2

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Rounds of member inversion driven by a pseudo-val plateau; ProtoNet meta-training."""
        cfg: TdsConfig = self.cfg  # type: ignore[assignment]
        ctx, n_way = self.context, self.context.n_way
        zoo = distillable_members(zoo, n_way, "tds", self.train_stats)
        self._check_val_signal()
        iterations = budget.meta_iterations or cfg.meta_iterations
        streams = ("policy", "synth", "tasks", "mix") + (("real_val",) if cfg.val_signal == "real" else ())
        gens = {k: make_generator(derive_seed(ctx.seed, "tds", k)) for k in streams}
        train_bank, val_bank = ClassBank(cfg.bank_capacity), ClassBank(cfg.bank_capacity)
        policy = torch.zeros(len(zoo.members), requires_grad=True)
        policy_opt = torch.optim.Adam([policy], lr=cfg.policy_lr)
        state = {"fresh": [], "best": -1.0, "stale": 0, "window": [], "round": None, "baseline": 0.0}
        stats = {
            "member_inversions": 0.0,
            "rounds": 0.0,
            "policy_updates": 0.0,
            "inversion_seconds": 0.0,
            "interpolated_tasks": 0.0,
            **zero_counts(),
        }
        if cfg.val_signal == "real":
            stats["real_val_episodes"] = 0.0
        model_box: list[torch.nn.Module] = [fresh_meta_model(ctx, cfg.width)]

        def val_check() -> float:
            model = model_box[0]
            with torch.no_grad():
                accs = []
                for _ in range(cfg.val_checks):
                    if cfg.val_signal == "real":
                        task = self.sample_real_val(gens["real_val"])  # type: ignore[misc]
                        stats["real_val_episodes"] += 1
                    else:
                        task = val_bank.sample_task(n_way, ctx.k_shot, cfg.n_query, gens["tasks"])
                    logits = protonet_logits(model.embed, task.support_x, task.support_y, task.query_x, n_way)
                    accs.append(float((logits.argmax(1) == task.query_y).float().mean()) * 100.0)
            return sum(accs) / len(accs)

        def new_round() -> None:
            level = sum(state["window"]) / len(state["window"]) if state["window"] else None
            previous = state["round"]
            # REINFORCE update for the previous round's selection. The first round has no level to
            # start from (the pseudo-val bank is filled by its own inversions): no reward, no update.
            if previous is not None and previous[1] is not None and level is not None:
                log_prob, level_before, _ = previous
                reward = level - level_before
                advantage = reward - state["baseline"]
                state["baseline"] = (
                    cfg.baseline_momentum * state["baseline"] + (1 - cfg.baseline_momentum) * reward
                )
                policy_opt.zero_grad(set_to_none=True)
                (-advantage * log_prob).backward()
                policy_opt.step()
                stats["policy_updates"] += 1
            k = min(cfg.members_per_round, len(zoo.members))
            chosen = torch.multinomial(
                policy.detach().softmax(0), k, replacement=False, generator=gens["policy"]
            )
            log_prob = self._log_prob_without_replacement(policy, chosen)
            state["round"] = (log_prob, level, chosen.tolist())
            stats["rounds"] += 1
            for index in chosen.tolist():
                fresh = self._invert(zoo, zoo.members[index], train_bank, val_bank, gens["synth"], stats)
                state["fresh"].append(fresh)
            state["best"], state["stale"], state["window"] = -1.0, 0, []

        def before(it: int) -> None:
            if it == 1:
                new_round()
                return
            if (it - 1) % cfg.check_every:
                return
            acc = val_check()
            state["window"] = (state["window"] + [acc])[-cfg.patience :]
            state["best"], state["stale"] = (
                (acc, 0) if acc > state["best"] else (state["best"], state["stale"] + 1)
            )
            if state["stale"] >= cfg.patience:
                new_round()

        def sample(_it: int) -> list:
            if state["fresh"]:
                batch, state["fresh"] = state["fresh"][: cfg.meta_batch], state["fresh"][cfg.meta_batch :]
                return batch
            tasks = []
            for _ in range(cfg.meta_batch):
                first = train_bank.sample_task(n_way, ctx.k_shot, cfg.n_query, gens["tasks"])
                if float(torch.rand((), generator=gens["mix"])) < cfg.interpolation_prob:
                    second = train_bank.sample_task(n_way, ctx.k_shot, cfg.n_query, gens["tasks"])
                    lam = float(
                        torch.distributions.Beta(cfg.beta, cfg.beta).sample()
                    )  # global RNG seeded below
                    tasks.append(_Interpolated(first, second, lam))
                    stats["interpolated_tasks"] += 1
                else:
                    tasks.append(first)
            return tasks

        def loss(model: torch.nn.Module, task):  # noqa: ANN001, ANN202
            if isinstance(task, _FreshTask):
                ep = task.episode
                logits = protonet_logits(model.embed, ep.support_x, ep.support_y, ep.query_x, n_way)
                value = kd_loss(logits, task.teacher_query, "kl", cfg.kd_temperature)
                return value, (logits.argmax(1) == ep.query_y).float().mean().detach() * 100.0
            if isinstance(task, _Interpolated):
                return interpolated_loss(model.embed, task.first, task.second, task.lam, n_way)
            return protonet_task_loss(model.embed, task, n_way)

        def save() -> dict:
            scalars = {k: state[k] for k in ("best", "stale", "window", "baseline")}
            round_ = (
                None if state["round"] is None else {"level": state["round"][1], "chosen": state["round"][2]}
            )
            return {
                "gens": generator_states(gens),
                "global_rng": torch.get_rng_state(),  # the Beta draws' stream (seeded below)
                "policy": policy.detach().clone(),
                "policy_opt": policy_opt.state_dict(),
                "train_bank": train_bank.state_dict(),
                "val_bank": val_bank.state_dict(),
                "fresh": [_fresh_to_dict(task) for task in state["fresh"]],
                "round": round_,
                "scalars": scalars,
                "stats": dict(stats),
            }

        def load(saved: dict) -> None:
            restore_generators(gens, saved["gens"])
            torch.set_rng_state(saved["global_rng"].cpu())
            with torch.no_grad():
                policy.copy_(saved["policy"])
            policy_opt.load_state_dict(saved["policy_opt"])
            train_bank.load_state_dict(saved["train_bank"])
            val_bank.load_state_dict(saved["val_bank"])
            state["fresh"] = [_fresh_from_dict(task) for task in saved["fresh"]]
            state.update(saved["scalars"])
            if saved["round"] is not None:  # the policy has not moved since this draw: same log-prob
                chosen = torch.tensor(saved["round"]["chosen"])
                log_prob = self._log_prob_without_replacement(policy, chosen)
                state["round"] = (log_prob, saved["round"]["level"], saved["round"]["chosen"])
            stats.update(saved["stats"])

        with torch.random.fork_rng(devices=[]):  # Beta draws use the global RNG: seed it per run
            torch.manual_seed(derive_seed(ctx.seed, "tds", "beta"))
            model, result = train_episodic(
                self,
                budget,
                iterations,
                sample,
                loss,
                lambda m: ProtoNetLearner(m.embed),
                before,
                model_box[0],
                Resumable(save, load),
            )
        probabilities = policy.detach().softmax(0)
        self.train_stats.update(stats)
        self.train_stats.update(
            {
                **agreement_stats(stats),
                "synth_images": float(train_bank.images_synthesised + val_bank.images_synthesised),
                "synth_images_per_s": (train_bank.images_synthesised + val_bank.images_synthesised)
                / max(result.seconds, 1e-9),
                "bank_classes": float(train_bank.n_classes),
                "inversion_seconds_per_member": stats["inversion_seconds"]
                / max(stats["member_inversions"], 1.0),
                "policy_max_prob": float(probabilities.max()),
                "policy_entropy": float(-(probabilities * probabilities.clamp_min(1e-12).log()).sum()),
            }
        )
        return ProtoNetLearner(model.embed)

    def _check_val_signal(self) -> None:
        """``val_signal`` must match the class: real meta-val only in the non-data-free variant."""
        signal = self.cfg.val_signal  # type: ignore[attr-defined]
        if signal not in ("pseudo", "real"):
            raise BenchError(f"method.val_signal must be 'pseudo' or 'real'; got {signal!r}")
        if signal == "real" and not self.uses_real_val:
            raise BenchError(
                "method.val_signal=real steers TDS on real meta-val episodes, which is not data-free: "
                "run method=tds_real_val (recorded data_free: false) instead"
            )
        if signal == "pseudo" and self.uses_real_val:
            raise BenchError("tds_real_val needs method.val_signal=real (use method=tds for pseudo episodes)")
        if signal == "real" and self.sample_real_val is None:
            raise BenchError(
                "tds_real_val needs real meta-val episodes: run it through dfml-run (none given)"
            )

    @staticmethod
    def _log_prob_without_replacement(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Log-probability of drawing ``chosen`` in order from softmax(logits) without replacement."""
        total, mask = logits.new_zeros(()), torch.zeros_like(logits, dtype=torch.bool)
        for index in chosen.tolist():
            masked = logits.masked_fill(mask, float("-inf"))
            total = total + masked.log_softmax(0)[index]
            mask = mask.clone()
            mask[index] = True
        return total

    def _invert(
        self,
        zoo: Zoo,
        member: ZooMember,
        train_bank: ClassBank,
        val_bank: ClassBank,
        generator: torch.Generator,
        stats: dict[str, float],
    ) -> _FreshTask:
        """Train a fresh G(z, y) on ``member``; add its images to the banks; return its KD task."""
        cfg: TdsConfig = self.cfg  # type: ignore[assignment]
        ctx = self.context
        started = time.perf_counter()
        n_classes = len(member.spec.classes)
        per_class = ctx.k_shot + cfg.n_query
        body = fresh_generator(
            2 * cfg.nz, cfg.ngf, zoo.image_size, zoo.channels, zoo.mean, zoo.std, generator, ctx.device
        )
        net = fresh_conditional_generator(n_classes, body, generator)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
        forward, targets = teacher_forward(member.run_model), running_targets(member.model)
        labels = torch.arange(n_classes, device=ctx.device).repeat_interleave(per_class)
        for _ in range(cfg.generate_iterations):
            z = torch.randn(len(labels), cfg.nz, generator=generator).to(ctx.device)
            logits, moments = forward(net(z, labels))
            value = F.cross_entropy(logits, labels) + cfg.bn * bn_stat_loss(moments, targets)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        with torch.no_grad():
            train_labels = torch.arange(n_classes, device=ctx.device).repeat_interleave(per_class)
            images = net(
                torch.randn(len(train_labels), cfg.nz, generator=generator).to(ctx.device), train_labels
            )
            held_out = net(
                torch.randn(len(train_labels), cfg.nz, generator=generator).to(ctx.device), train_labels
            )
            teacher_logits = member.run_model(images)
        count_agreement(stats, teacher_logits, train_labels)
        for local, key in enumerate(member.class_keys):  # task-shaped blocks: k_shot support, then queries
            block = slice(local * per_class, (local + 1) * per_class)
            train_bank.add_class(key, images[block][: ctx.k_shot], images[block][ctx.k_shot :])
            val_bank.add_class(key, held_out[block][: ctx.k_shot], held_out[block][ctx.k_shot :])
        stats["member_inversions"] += 1
        stats["inversion_seconds"] += time.perf_counter() - started
        return self._fresh_task(images, teacher_logits, n_classes, per_class, generator)

    def _fresh_task(
        self,
        images: torch.Tensor,
        teacher_logits: torch.Tensor,
        n_classes: int,
        per_class: int,
        generator: torch.Generator,
    ) -> _FreshTask:
        """An N-way task over ``n_way`` of the member's classes with the member's query logits."""
        ctx, cfg = self.context, self.cfg
        chosen = torch.randperm(n_classes, generator=generator)[: ctx.n_way].tolist()
        support, query, logits = [], [], []
        for c in chosen:
            block = slice(c * per_class, (c + 1) * per_class)
            support.append(images[block][: ctx.k_shot])
            query.append(images[block][ctx.k_shot :])
            logits.append(teacher_logits[block][ctx.k_shot :][:, chosen])
        labels = torch.arange(len(chosen), device=ctx.device)
        episode = Episode(
            torch.cat(support),
            labels.repeat_interleave(ctx.k_shot),
            torch.cat(query),
            labels.repeat_interleave(cfg.n_query),
            torch.tensor(chosen),
        )
        return _FreshTask(episode, torch.cat(logits))


@METHODS.register("tds_real_val")
class TdsRealVal(Tds):
    """TDS as published: plateau check and selection reward on real meta-val episodes (not data-free)."""

    uses_real_val = True
