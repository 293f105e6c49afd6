"""ECI meta-training: one data step, then a MAML meta-batch from the detached pixels (purer.md §8).

```
for it in 1..meta_iterations:
    data step: Adam on X with sum_i w_i * L_inv,i  (- adv.scale * L_outer on a fresh non-detached
               pseudo task when the curriculum fired at the end of the previous iteration)
    meta step: meta_batch pseudo tasks from X.detach(); second-order MAML; Adam on theta
    curriculum.observe(it, mean pseudo-query accuracy)
    every selection.every: score theta on meta-val (and the labelled test probe); checkpoint
```
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.atomic import atomic_write_bytes
from bench.checkpoint import CHECKPOINT_MAX_INTERVAL_S, load_checkpoint, save_checkpoint
from bench.errors import BenchError, IntegrityError
from bench.learners.maml import FineTuneLearner, maml_task_loss, meta_step, module_params
from bench.method import Budget, MetaLearner
from bench.profiles import PROFILES
from bench.progress import progress_options
from bench.seeding import derive_seed, make_generator
from bench.timing import synchronize
from purer.agreement import agreement_stats
from purer.artefacts import save_curves, save_image_grid
from purer.compilation import compiled
from purer.config import PAPER_SCHEDULE, PurerConfig, check_counts
from purer.curriculum import Curriculum
from purer.dynamic_data import DynamicDataset
from purer.inversion import draw_shifts
from zoos.averaging import load_average_init
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo

log = logging.getLogger(__name__)


GRID_TAGS = ("start", "middle", "end")


def adv_start(cfg: PurerConfig, iterations: int) -> int:
    """``adv.start`` or the paper's fraction 4000/60000 of the schedule."""
    return cfg.adv.start if cfg.adv.start is not None else max(1, round(iterations * 4000 / 60000))


WARMUP_ITERATIONS = 5
"""Meta-iterations at the start of each process counted as warm-up (compile, graph capture)."""


def _fresh_step_timer() -> dict[str, float]:
    """The step timer's counters at zero (see :meth:`PurerTrainer.stats`)."""
    return {"seconds": 0.0, "iterations": 0, "images": 0.0, "warmup_seconds": 0.0, "warmup_iterations": 0}


class PurerTrainer:
    """Holds the whole meta-training state; :meth:`run` trains (resuming from a checkpoint)."""

    def __init__(self, method: MetaLearner, cfg: PurerConfig, zoo: Zoo, budget: Budget, seed: int) -> None:
        ctx = method.context
        self.method, self.cfg, self.zoo, self.ctx = method, cfg, zoo, ctx
        self.iterations = budget.meta_iterations or cfg.meta_iterations
        self.max_seconds = budget.max_seconds
        self.k_shot, self.n_query = ctx.k_shot, cfg.synthesis.n_query
        check_counts(cfg, ctx.k_shot, len(zoo.members))
        per_class = cfg.synthesis.images_per_class or ctx.k_shot + cfg.synthesis.n_query
        self.gens = {
            name: make_generator(derive_seed(seed, "purer", name)) for name in ("pixels", "jitter", "tasks")
        }
        self._check_profile()
        self.model = fresh_meta_model(ctx, cfg.width)
        self._initialise(cfg, zoo)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.outer_lr)
        self.data = DynamicDataset(
            zoo,
            per_class,
            cfg.synthesis.lr,
            ctx.device,
            self.gens["pixels"],
            cfg.channels_last,
            cfg.fold_teachers,
        )
        self.weights = cfg.inversion
        self.objective = compiled(self.data.inversion_objective, cfg.compile, ctx.device)
        use_curriculum = cfg.curriculum and cfg.adv.enabled
        self.curriculum = (
            Curriculum(adv_start(cfg, self.iterations), cfg.adv.patience) if use_curriculum else None
        )
        self.it, self.history, self.test_evals = 0, [], []
        self.best: dict[str, Any] = {"val_acc": None, "iteration": 0, "params": None}
        self.seconds = 0.0
        # time inside meta_iteration() only (no selection, checkpoints or grids), and what it did;
        # warmup_* is the part spent on each process's first WARMUP_ITERATIONS (compile, graph capture)
        self.step = _fresh_step_timer()
        self.process_iterations = 0  # meta-iterations timed by this process (warm-up counting)
        self.resumed_at = 0  # meta-iteration of the checkpoint this process started from
        self.resumed_seconds = 0.0  # meta-training seconds spent by earlier processes

    def _check_profile(self) -> None:
        """``profile: paper`` runs the reference schedule, nothing shorter (the label is in records)."""
        if self.cfg.profile not in PROFILES:
            raise BenchError(f"purer profile {self.cfg.profile!r} unknown; valid: {', '.join(PROFILES)}")
        if self.cfg.profile != "paper":
            return
        actual = {
            "meta_iterations": self.iterations,
            "adv.start": adv_start(self.cfg, self.iterations),
            "selection.every": self.cfg.selection.every,
            "selection.val_episodes": self.cfg.selection.val_episodes,
        }
        wrong = [f"{k}={actual[k]} (paper: {v})" for k, v in PAPER_SCHEDULE.items() if actual[k] != v]
        if wrong:
            raise BenchError(
                f"purer profile 'paper' with a different schedule: {', '.join(wrong)}; set the paper "
                "values (the paper_* experiments do) or use profile cpu"
            )

    def _initialise(self, cfg: PurerConfig, zoo: Zoo) -> None:
        """Averaged init (SS conv4 zoos of the meta model's width) or the random init; else raise."""
        if cfg.precision not in ("fp32", "bf16"):
            raise BenchError(f"purer precision {cfg.precision!r} unknown; valid: fp32, bf16")
        if cfg.init == "random":
            return
        if cfg.init != "average":
            raise BenchError(f"purer init {cfg.init!r} unknown; valid: average, random")
        load_average_init(self.model, zoo, "purer", cfg.width, self.ctx.n_way, cfg.average_head)

    # ----------------------------------------------------------------- one iteration
    def data_step(self) -> dict[str, float]:
        """One Adam step on X (inversion, plus the adversarial term when the switch fired)."""
        ids = list(range(len(self.data.teachers)))
        drawn = self.cfg.synthesis.teachers_per_step  # null or 1..M (check_counts)
        if drawn is not None and drawn < len(ids):
            ids = sorted(torch.randperm(len(ids), generator=self.gens["tasks"])[:drawn].tolist())
        with torch.autocast(self.ctx.device.type, torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            # offsets drawn here, outside a compiled objective (same draws as inside, eager)
            shifts = draw_shifts(self.weights.jitter, len(ids), self.gens["jitter"])
            if shifts is not None and self.cfg.compile != "off":  # a compiled graph reads them on
                shifts = shifts.to(self.ctx.device)  # the device: no host copy (CUDA graphs need none)
            objective, terms = self.objective(
                self.weights, None, ids, self.cfg.legacy.cumulative_node_weighting, shifts
            )
        parts = {key: float(value) for key, value in terms.items()}
        adversarial = self.curriculum is not None and self.curriculum.consume()
        if adversarial:
            task = self.data.sample_task(
                self.ctx.n_way, self.k_shot, self.n_query, self.gens["tasks"], detach=False
            )
            outer, _ = maml_task_loss(
                self.model,
                module_params(self.model),
                task,
                self.cfg.inner_steps,
                self.cfg.inner_lr,
                second_order=True,
            )
            objective = objective - self.cfg.adv.scale * outer
            parts["adv_outer"] = float(outer.detach())
        self.data.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.data.optimizer.step()
        self.model.zero_grad(set_to_none=True)  # theta is not updated on the adversarial task
        parts["objective"], parts["adversarial"] = float(objective.detach()), float(adversarial)
        parts["inverted_images"] = float(sum(len(self.data.teachers[i].rows) for i in ids))
        return parts

    def meta_iteration(self) -> dict[str, Any]:
        """Data step + meta step; raises FloatingPointError on a non-finite loss."""
        parts = self.data_step()
        tasks = [
            self.data.sample_task(self.ctx.n_way, self.k_shot, self.n_query, self.gens["tasks"])
            for _ in range(self.cfg.meta_batch)
        ]
        loss, acc = meta_step(
            self.model,
            self.optimizer,
            tasks,
            self.cfg.inner_steps,
            self.cfg.inner_lr,
            self.cfg.second_order,
            self.cfg.outer_reduce,
        )
        if not (math.isfinite(loss) and math.isfinite(parts["objective"])):
            last = self.history[-1] if self.history else {}
            raise FloatingPointError(
                f"purer: non-finite loss at meta-iteration {self.it + 1} (outer {loss}, data objective "
                f"{parts['objective']}); last finite: {last}"
            )
        return {"outer_loss": loss, "train_acc": acc, **parts}

    # ----------------------------------------------------------------- selection
    def current_learner(self) -> FineTuneLearner:
        """A fine-tune learner from a snapshot of the current meta model."""
        import copy

        return FineTuneLearner(copy.deepcopy(self.model), self.cfg.inner_lr)

    def select(self) -> float | None:
        """Score theta on meta-val (keep the best) and, labelled, on the test probe."""
        val_acc = None
        if self.method.validate is not None:
            val_acc = self.method.validate(self.current_learner())
            if self.best["val_acc"] is None or val_acc > self.best["val_acc"]:
                snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.best = {"val_acc": val_acc, "iteration": self.it, "params": snapshot}
        if self.method.test_probe is not None and self.cfg.selection.test_probe:
            self.test_evals.append(
                {"iteration": self.it, "test_acc": self.method.test_probe(self.current_learner())}
            )
        return val_acc

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit."""
        return {
            "it": self.it,
            "seconds": self.seconds,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "X": self.data.X.detach(),
            "data_optimizer": self.data.optimizer.state_dict(),
            "curriculum": self.curriculum.state_dict() if self.curriculum else None,
            "history": self.history,
            "test_evals": self.test_evals,
            "best": self.best,
            "generators": {k: g.get_state() for k, g in self.gens.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.it, self.seconds = state["it"], state["seconds"]
        # checkpoints written before the step timer existed: the rates cover this process only
        saved = state.get("step", {})
        self.step = {**_fresh_step_timer(), **saved}
        if saved and "warmup_iterations" not in saved:
            # timed before the warm-up split existed: the earlier processes' warm-up (a compile,
            # say) is somewhere in the total, so no steady rate can be told apart for this run
            self.step["warmup_unknown"] = True
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            self.data.X.copy_(state["X"])
        self.data.optimizer.load_state_dict(state["data_optimizer"])
        if self.curriculum and state["curriculum"]:
            self.curriculum.load_state_dict(state["curriculum"])
        self.history, self.test_evals, self.best = state["history"], state["test_evals"], state["best"]
        for name, generator in self.gens.items():
            generator.set_state(state["generators"][name].cpu())

    # ----------------------------------------------------------------- loop
    def _paths(self) -> tuple[Path | None, Path | None]:
        """(checkpoint, artefact dir): the checkpoint lives in the shared train_dir when given."""
        state_dir = self.ctx.train_dir or self.ctx.work_dir
        checkpoint = state_dir / "checkpoint.pt" if state_dir else None
        return checkpoint, (self.ctx.work_dir / "artefacts" if self.ctx.work_dir else None)

    def _grid_dir(self) -> Path | None:
        """The training's grid folder, beside its checkpoint.

        Resumed runs and runs sharing the training (``purer`` evaluates ``purer_no_icfil``'s) thus
        still have the start and middle grids.
        """
        state_dir = self.ctx.train_dir or self.ctx.work_dir
        return state_dir / "grids" if state_dir else None

    def _grid(self, tag: str) -> None:
        """Draw X as ``synthesized_<tag>.png`` in the training's grid folder."""
        grids = self._grid_dir()
        if grids is not None:
            save_image_grid(
                self.data.X,
                self.data.images_per_class,
                self.zoo.mean,
                self.zoo.std,
                grids / f"synthesized_{tag}.png",
            )

    def _publish_grids(self, art: Path) -> None:
        """Copy the training's start / middle / end grids into this run's artefacts and register them."""
        grids = self._grid_dir()
        for tag in GRID_TAGS:
            source = grids / f"synthesized_{tag}.png" if grids is not None else None
            if source is None or not source.exists():
                log.warning("purer: no %s grid for this training (made before grids were kept)", tag)
                continue
            target = art / source.name
            atomic_write_bytes(target, source.read_bytes())
            if target not in self.method.artifacts:
                self.method.artifacts.append(target)

    def run(self) -> None:
        """Train to ``iterations`` (or ``max_seconds``), resuming from the checkpoint if present."""
        checkpoint, art = self._paths()
        if checkpoint is not None and checkpoint.exists():
            try:
                self.load_state_dict(load_checkpoint(checkpoint, self.ctx.device))
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                raise IntegrityError(
                    f"checkpoint {checkpoint} does not fit this PURER trainer's state "
                    f"({type(error).__name__}: {error}); it was written by other code or settings: delete it "
                    "to restart meta-training"
                ) from error
            self.resumed_at, self.resumed_seconds = self.it, self.seconds
            log.info("purer: resumed from %s at meta-iteration %d", checkpoint, self.it)
        if self.it == 0:
            self._grid("start")
        middle = self.iterations // 2
        bar = tqdm(total=self.iterations, initial=self.it, desc="purer", unit="it", **progress_options())
        started = time.perf_counter() - self.seconds
        saved_at, last_save = self.it, time.perf_counter()  # the checkpoint holding self.it (if any)
        while self.it < self.iterations:
            if self.max_seconds is not None and time.perf_counter() - started > self.max_seconds:
                log.warning("purer: budget.max_seconds reached at meta-iteration %d", self.it)
                if checkpoint is not None and self.it:  # a rerun resumes here and ends at once
                    self.seconds = time.perf_counter() - started
                    save_checkpoint(checkpoint, self.state_dict())
                break
            try:
                step_start = time.perf_counter()
                row = self.meta_iteration()
                synchronize(self.ctx.device)
                elapsed = time.perf_counter() - step_start
                self.step["seconds"] += elapsed
                self.step["iterations"] += 1
                self.step["images"] += row["inverted_images"]
                self.process_iterations += 1
                if self.process_iterations <= WARMUP_ITERATIONS:
                    self.step["warmup_seconds"] += elapsed
                    self.step["warmup_iterations"] += 1
            except FloatingPointError as error:
                kept = f"{checkpoint} (meta-iteration {saved_at}) is kept" if checkpoint else "no checkpoint"
                raise FloatingPointError(f"{error}; {kept}") from None
            self.it += 1
            fired = self.curriculum.observe(self.it, row["train_acc"]) if self.curriculum else False
            if fired:
                log.info(
                    "purer: curriculum switch at meta-iteration %d (%s)",
                    self.it,
                    self.curriculum.events[-1]["reason"],
                )
            row = {"iteration": self.it, **row, "switch": fired}
            if self.it % self.cfg.selection.every == 0 or self.it == self.iterations:
                row["val_acc"] = self.select()
            self.history.append(row)
            self.seconds = time.perf_counter() - started
            if self.it == middle:
                self._grid("middle")
            if checkpoint is not None and (
                self.it % self.cfg.checkpoint_every == 0
                or self.it == self.iterations
                or time.perf_counter() - last_save >= CHECKPOINT_MAX_INTERVAL_S
            ):
                save_checkpoint(checkpoint, self.state_dict())
                saved_at, last_save = self.it, time.perf_counter()
            bar.update(1)
            bar.set_postfix(acc=f"{row['train_acc']:.1f}", loss=f"{row['outer_loss']:.2f}", refresh=False)
        bar.close()
        self._grid("end")
        if art is not None:
            self._publish_grids(art)
            events = self.curriculum.events if self.curriculum else []
            self.method.artifacts.append(save_curves(self.history, events, art / "curves.png"))

    def selected_model(self) -> tuple[torch.nn.Module, int, str]:
        """(model with the selected weights, its iteration, rule): meta-val best, else the last."""
        if self.best["params"] is not None:
            self.model.load_state_dict(self.best["params"])
            return self.model, self.best["iteration"], "meta_val_best"
        return self.model, self.it, "last"

    def stats(self) -> dict[str, Any]:
        """Counters and throughput for the record.

        ``meta_iterations_per_s`` is the whole loop (selection probes, checkpoints and grids
        included), as for every method. ``step_meta_iterations_per_s`` and ``synth_images_per_s``
        time the meta-iteration alone (data step + MAML step) and count the images actually
        inverted; they are left out when no iteration was timed (a finished checkpoint written
        before the step timer existed), rather than reported as 0. They include each process's
        first ``WARMUP_ITERATIONS`` meta-iterations, which pay for ``torch.compile``, CUDA-graph
        capture and kernel set-up: ``warmup_s`` is that time and
        ``steady_meta_iterations_per_s`` the rate without it (left out when no later iteration ran),
        so a short compiled run's record says both what it cost and what it would run at. Both are
        left out for a run resumed from a checkpoint timed before that split existed.
        """
        seconds = max(self.seconds, 1e-9)
        adversarial = sum(int(h.get("adversarial", 0)) for h in self.history)
        stats = {
            "meta_iterations": float(self.it),
            "meta_train_episodes": float(self.it * self.cfg.meta_batch),
            "meta_iterations_per_s": self.it / seconds,
            "timed_meta_iterations": float(self.step["iterations"]),
            "synth_images": float(self.data.X.shape[0]),
            "adversarial_steps": float(adversarial),
            "curriculum_switches": float(len(self.curriculum.events) if self.curriculum else 0),
            "resumed_at_iteration": float(self.resumed_at),
            "resumed_seconds": float(self.resumed_seconds),
            **agreement_stats(self.data.label_agreement()),  # of the final pixels
        }
        if self.step["iterations"] and self.step["seconds"] > 0:
            stats["step_meta_iterations_per_s"] = self.step["iterations"] / self.step["seconds"]
            stats["synth_images_per_s"] = self.step["images"] / self.step["seconds"]
            if not self.step.get("warmup_unknown"):
                stats["warmup_s"] = self.step["warmup_seconds"]
                steady = self.step["iterations"] - self.step["warmup_iterations"]
                steady_seconds = self.step["seconds"] - self.step["warmup_seconds"]
                if steady > 0 and steady_seconds > 0:
                    stats["steady_meta_iterations_per_s"] = steady / steady_seconds
        return stats
