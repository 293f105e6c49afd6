"""``dfml-run``: the Hydra app. One job = one method on one task setting of one zoo.

Data flow (architecture.md): config -> run key -> skip if done -> dataset -> zoo -> meta_train
(inside the data-free guard) -> evaluate on the fixed suite -> record.json -> MLflow.
Experiments sweep methods x tasks with Hydra multirun; the leaderboard callback prints the table.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from bench import provenance
from bench.config_checks import check_run_config
from bench.data import forbid_real_data, load_dataset
from bench.data.base import allow_real_data
from bench.environment import code_sha256, environment, git_state
from bench.errors import BenchError, DataFreeViolation
from bench.evaluate import CI_METHOD, EvalResult, evaluate, summarize
from bench.hashing import object_fingerprint, spec_hash
from bench.legacy import legacy_switches
from bench.locks import exclusive, lock_path
from bench.method import (
    METHODS,
    Budget,
    MetaLearner,
    MethodContext,
    check_reference_methods,
    validate_method_config,
)
from bench.overrides import check_shadowed_method_keys, command_line_overrides
from bench.paths import resolve_results_dir
from bench.profiles import check_profile
from bench.records import IDENTITY_KEYS, RunRecord, finished_run, read_record, readout_name, write_record
from bench.seeding import derive_seed, make_generator
from bench.tasks import Episode, EpisodeSampler, TaskShape, TaskSuite
from bench.threads import set_threads
from bench.timing import peak_memory_gb, reset_peak_memory, resolve_device, synchronize
from bench.tracking import MlflowSink, make_sink
from bench.zoo_builds import check_before_building, check_one_zoo_build
from zoos.averaging import refuse_mixed_architecture_config
from zoos.numerics import (
    check_numerics,
    configured_numerics,
    enable_portable_numerics,
    member_numerics,
    portable_numerics_active,
)
from zoos.zoo import load_or_build_zoo

log = logging.getLogger(__name__)


def run_identity(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """The part of the resolved config that determines the numbers, plus the device type."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    identity = {k: plain[k] for k in IDENTITY_KEYS if k in plain}
    for section in ("dataset", "zoo", "method", "task"):
        identity[section] = {k: v for k, v in identity[section].items() if k != "description"}
    # The zoo's own ``dataset`` name is checked equal to the run's dataset (zoo_datasets), whose
    # whole config is already in the identity; dropping it keeps keys stable across that addition.
    identity["zoo"].pop("dataset", None)
    identity["device_type"] = device.type
    if meta_model_global_pool(cfg):  # keys of runs without it stay as they were
        identity["meta_model"] = {"global_pool": True}
    numerics = configured_numerics(cfg)
    if numerics != "native":  # portable CPU numerics change the numbers (native keys stay as they were)
        identity["numerics"] = numerics
    if device.type == "cuda" and cfg.device.get("tf32", False):  # TF32 changes the numbers
        identity["cuda_tf32"] = True
    version = METHODS.get(str(cfg.method.name)).code_version
    if version != 1:
        identity["method_code_version"] = version
    return identity


def train_identity(identity: dict[str, Any], cls: type[MetaLearner]) -> dict[str, Any]:
    """The part of a run's identity that determines its *meta-training* (see MethodContext.train_dir).

    Drops the method's name and ``eval_only_keys``, the evaluation-only settings (``eval``, the
    suite size and readouts), and keys the rest by the code that meta-trains
    (``module.qualname`` of ``meta_train``), so purer and purer_no_icfil share one training.
    """
    method = {k: v for k, v in identity["method"].items() if k != "name" and k not in cls.eval_only_keys}
    task = {k: v for k, v in identity["task"].items() if k not in ("n_episodes", "test_steps", "name")}
    trainer = f"{cls.meta_train.__module__}.{cls.meta_train.__qualname__}"
    kept = {k: v for k, v in identity.items() if k not in ("method", "task", "eval")}
    return {**kept, "method": method, "task": task, "meta_train": trainer}


def meta_train_dir(results: Path, identity: dict[str, Any], cls: type[MetaLearner], zoo_weights: str) -> Path:
    """Where a run's meta-training checkpoints live: ``results/meta_train/<key>``.

    The key hashes :func:`train_identity` and the zoo's *weights* (``Zoo.weights_sha256``). The
    zoo's config key alone does not pin its weights: a rebuild at another thread count or on
    another CPU trains other members, and a checkpoint of the old build must not be resumed on the
    new one (it would mix two zoos in one training). Runs sharing a meta-training (purer,
    purer_no_icfil) on one build still share the directory.
    """
    return results / "meta_train" / spec_hash({**train_identity(identity, cls), "zoo_weights": zoo_weights})


def seed_name(cls: type[MetaLearner]) -> str:
    """The name a method's seed derives from: the key of the class whose ``meta_train`` it runs.

    Runs that share a meta-training (purer, purer_no_icfil) thus share its seed, and the shared
    checkpoint is the same whichever of them trains first.
    """
    owner = next(c for c in cls.__mro__ if "meta_train" in vars(c))
    return next((name for name, entry in METHODS.items() if entry is owner), str(cls.__name__))


def task_shape(cfg: DictConfig) -> TaskShape:
    """The task shape of ``cfg.task``."""
    return TaskShape(int(cfg.task.n_way), int(cfg.task.k_shot), int(cfg.task.n_query))


TASK_INTEGERS = ("n_way", "k_shot", "n_query", "n_episodes", "suite_seed", "primary_steps")


def meta_model_global_pool(cfg: DictConfig) -> bool:
    """``meta_model.global_pool`` (false where the config has no ``meta_model``); a non-bool raises."""
    value = (cfg.get("meta_model") or {}).get("global_pool", False)
    if not isinstance(value, bool):
        raise BenchError(f"meta_model.global_pool={value!r} is not valid; valid: true, false")
    return value


def check_task_values(cfg: DictConfig) -> None:
    """Raise a clear error, before any work, for a ``task.*`` / ``eval.limit`` value that cannot run.

    Counts must be integers (``task.n_episodes=abc`` or ``task.n_way=5.5`` would otherwise fail
    late or be truncated while the run key keeps the float), ``task.test_steps`` a list of integers
    >= 0 that contains ``task.primary_steps`` (the readout reported as ``acc_mean``), and
    ``eval.limit`` null or an integer >= 1.
    """
    for key in TASK_INTEGERS:
        value = OmegaConf.select(cfg, f"task.{key}", default=None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BenchError(f"task.{key}={value!r} is not an integer")
    steps = OmegaConf.select(cfg, "task.test_steps", default=None)
    if steps is not None:
        listed = OmegaConf.to_container(steps) if isinstance(steps, ListConfig) else steps
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in listed)
        ):
            raise BenchError(f"task.test_steps must be a non-empty list of integers >= 0; got {listed!r}")
        primary = OmegaConf.select(cfg, "task.primary_steps", default=None)
        if primary is not None and primary not in listed:
            raise BenchError(
                f"task.primary_steps={primary} is not in task.test_steps={listed}; valid: one of {listed}"
            )
    limit = OmegaConf.select(cfg, "eval.limit", default=None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BenchError(f"eval.limit={limit!r} is not valid; valid: null (every episode) or an integer >= 1")


def build_method(cfg: DictConfig, context: MethodContext) -> MetaLearner:
    """Look the method up, validate its YAML against its Config, instantiate it."""
    cls = METHODS.get(str(cfg.method.name))
    method_cfg = validate_method_config(cls, OmegaConf.to_container(cfg.method, resolve=True))
    return cls(method_cfg, context)


def hydra_choices() -> dict[str, str]:
    """``hydra.runtime.choices`` of the groups (dataset, zoo, ...), when running under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {k: str(v) for k, v in choices.items() if not k.startswith("hydra")}
    except ValueError:
        return {}


def selection_probe_episodes(cfg: DictConfig) -> int:
    """Meta-val episodes per selection probe; raises unless >= 1 (0 is not "use the default").

    ``method.selection.val_episodes`` (PURER), else ``method.val_episodes``, else 200.
    """
    value = OmegaConf.select(cfg, "method.selection.val_episodes", default=None)
    key = "method.selection.val_episodes"
    if value is None:
        value, key = OmegaConf.select(cfg, "method.val_episodes", default=200), "method.val_episodes"
    if int(value) < 1:
        raise BenchError(f"{key} must be >= 1; got {value}")
    return int(value)


def make_probe(dataset, split: str, shape: TaskShape, n_episodes: int, seed: int, steps: int, device):  # noqa: ANN001, ANN201
    """A Probe scoring a learner on the first ``n_episodes`` of a fixed real suite (guard lifted)."""
    suite: list[TaskSuite] = []

    def probe(learner) -> float:  # noqa: ANN001
        with allow_real_data():
            if not suite:
                suite.append(TaskSuite(dataset, split, shape, n_episodes, seed))
            result = evaluate(learner, suite[0], [steps], device, description=f"probe {split}")
        return summarize(result.per_episode[steps])["mean"]

    return probe


def attach_real_data(method: MetaLearner, dataset, shape: TaskShape) -> None:  # noqa: ANN001
    """Give real data only to the methods that declare it; data-free ones never see it.

    Oracles (``uses_real_data``) get the dataset; ``uses_real_val`` methods get a sampler of fresh
    ``shape`` episodes from the **val** split (guard lifted inside the call, nothing else reachable).
    """
    method.real_data = dataset if method.uses_real_data else None
    method.sample_real_val = None
    if method.uses_real_val:
        sampler = EpisodeSampler(dataset, "val", shape)  # class lists only; images read per call
        device = method.context.device

        def sample_real_val(gen: torch.Generator) -> Episode:
            with allow_real_data():
                return sampler.sample(gen, device)

        method.sample_real_val = sample_real_val


def meta_train(cfg: DictConfig, method: MetaLearner, zoo, budget: Budget, seed: int):  # noqa: ANN001, ANN201
    """Run ``method.meta_train`` inside the data-free guard (unless it declares real data); timed."""
    generator = make_generator(seed)
    reset_peak_memory(method.context.device)
    synchronize(method.context.device)
    start = time.perf_counter()
    if method.uses_real_data:
        learner = method.meta_train(zoo, budget, generator)
    else:
        with forbid_real_data(str(cfg.method.name)):
            learner = method.meta_train(zoo, budget, generator)
    synchronize(method.context.device)
    return learner, time.perf_counter() - start


def with_method_overrides(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``method_overrides[<method>]`` merged into ``cfg.method``.

    Experiments sweep several methods; settings that only one method has (PURER's teacher subset,
    ``init: random`` for heterogeneous zoos) go in ``method_overrides`` keyed by method name. The
    merged method config is what the run key and the record see, exactly as if it had been set with
    ``method.<key>=`` on the command line.
    """
    overrides = OmegaConf.select(cfg, "method_overrides", default=None) or {}
    unknown = sorted(set(overrides) - set(METHODS.names()))
    if unknown:
        from bench.registry import unknown_key_message

        raise BenchError(unknown_key_message("method in method_overrides", unknown[0], METHODS.names()))
    name = str(cfg.method.name)
    if name not in overrides:
        return cfg
    merged = cfg.copy()
    with open_dict(merged):
        merged.method = OmegaConf.merge(cfg.method, overrides[name])
    check_shadowed_method_keys(cfg, merged, command_line_overrides())
    return merged


def run_one(cfg: DictConfig) -> Path:
    """Run (or skip, if finished) the job described by ``cfg``; returns its run directory."""
    git_state()  # the code this process imported (cached; the record names it, not a later checkout)
    code_sha256()  # likewise read once, at the start
    provenance.reset()  # code histories of resumed files are per run
    check_run_config(cfg)  # unknown keys and mistyped values, before a cell is skipped or computed
    check_task_values(cfg)
    cfg = with_method_overrides(cfg)
    check_profile(cfg, command_line_overrides())
    check_reference_methods([cfg.experiment.get("reference"), *(cfg.experiment.get("compare_to") or [])])
    results = resolve_results_dir(cfg.paths.results)
    device = resolve_device(str(cfg.device.name), bool(cfg.device.get("tf32", False)))
    numerics = configured_numerics(cfg)
    check_numerics(numerics)
    identity = run_identity(cfg, device)
    key = spec_hash(identity)
    experiment = str(cfg.experiment.name)
    run_dir = results / "runs" / experiment / key
    if finished_run(run_dir) and not cfg.force:
        log.info(
            "skip %s/%s (%s, %s): finished record exists", experiment, key, cfg.method.name, cfg.task.name
        )
        return mirror_skipped(cfg, results, run_dir)
    check_run_numerics(numerics, device)  # before set_threads: MKL's branch is set before any MKL call
    set_threads(cfg.get("threads"))
    with exclusive(lock_path(results, "runs", experiment, key), f"run {experiment}/{key}"):
        if finished_run(run_dir) and not cfg.force:  # finished by the process this one waited for
            log.info("skip %s/%s: another process finished it meanwhile", experiment, key)
            return mirror_skipped(cfg, results, run_dir)
        with member_numerics(numerics, device):  # the zoo, meta-training and evaluation alike
            return run_cell(cfg, results, device, identity, key, numerics)


def mirror_skipped(cfg: DictConfig, results: Path, run_dir: Path) -> Path:
    """Upload a skipped finished record that the tracking store lacks; returns ``run_dir``.

    A process killed between writing the record and logging it (or a store set up after the run, or
    a fresh clone of committed records) would otherwise leave the store without it for good.
    """
    sink = make_sink(cfg.tracking, results, str(cfg.experiment.name))
    if isinstance(sink, MlflowSink):
        record = read_record(run_dir / "record.json")
        if not sink.synced(run_dir, record):
            sink.log_record(record, run_dir)
    return run_dir


def check_run_numerics(numerics: str, device: torch.device) -> None:
    """Validate ``numerics`` for this process and, for ``portable``, put MKL on its portable branch.

    ``portable`` must be chosen before the process's first matrix product (a BenchError says so
    otherwise); a ``native`` cell after a portable one in the same process (a multirun) is refused,
    since MKL cannot leave the portable branch.
    """
    check_numerics(numerics)
    if numerics == "portable":
        if device.type != "cpu":
            raise BenchError(
                f"numerics=portable is for CPU runs; this run's device is {device} (use device=cpu, or "
                "numerics=native: GPU numbers differ between GPUs anyway)"
            )
        try:
            enable_portable_numerics()
        except BenchError as error:
            raise BenchError(
                f"numerics=portable: {error}. In dfml-run this happens after a numerics=native cell in the "
                "same process (a multirun): run portable cells in a dfml-run command of their own"
            ) from None
    elif portable_numerics_active(missing_mkl=False):
        raise BenchError(
            "numerics=native, but MKL runs its portable branch in this process (after a numerics=portable "
            "cell of the same multirun, or MKL_CBWR set in the environment); MKL cannot leave it: run "
            "native cells in a dfml-run command of their own, without MKL_CBWR"
        )


def run_cell(
    cfg: DictConfig, results: Path, device: torch.device, identity: dict[str, Any], key: str, numerics: str
) -> Path:
    """The part of :func:`run_one` that computes: zoo, meta-training, evaluation, record."""
    experiment = str(cfg.experiment.name)
    run_dir = results / "runs" / experiment / key
    budget = Budget(cfg.budget.meta_iterations, cfg.budget.max_seconds)
    # a bad method key or value is reported before the dataset and the zoo are loaded or built
    method_yaml = OmegaConf.to_container(cfg.method, resolve=True)
    validate_method_config(METHODS.get(str(cfg.method.name)), method_yaml)
    probe_episodes = selection_probe_episodes(cfg)  # after the typed validation: val_episodes=abc
    if METHODS.get(str(cfg.method.name)).same_architecture_only:  # refuse before building the zoo
        refuse_mixed_architecture_config(OmegaConf.to_container(cfg.zoo, resolve=True), str(cfg.method.name))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    dataset = load_dataset(OmegaConf.to_container(cfg.dataset, resolve=True))
    shape = task_shape(cfg)
    suite_seed, primary = int(cfg.task.suite_seed), int(cfg.task.primary_steps)
    suite = TaskSuite(dataset, str(cfg.task.split), shape, int(cfg.task.n_episodes), suite_seed)
    zoo_cfg = OmegaConf.to_container(cfg.zoo, resolve=True)
    runs_dir = results / "runs" / experiment
    mixing_allowed = bool(cfg.get("allow_mixed_zoo_builds"))

    def before_training(zoo_key: str, missing: list[int]) -> None:  # any method builds its zoo
        check_before_building(runs_dir, experiment, key, str(cfg.zoo.name), zoo_key, missing, numerics)

    zoo = load_or_build_zoo(
        zoo_cfg,
        dataset,
        device,
        before_training=None if mixing_allowed else before_training,
        numerics=numerics,
    )
    reads_zoo = METHODS.get(str(cfg.method.name)).reads_zoo(method_yaml)

    def check_build() -> None:  # before the work, and again before the record: lanes run side by side
        if not mixing_allowed and reads_zoo:
            check_one_zoo_build(runs_dir, experiment, key, zoo.name, zoo.key, zoo.weights_sha256, numerics)

    check_build()
    seed = int(cfg.seed)
    work_dir = run_dir / "work"
    train_dir = meta_train_dir(results, identity, METHODS.get(str(cfg.method.name)), zoo.weights_sha256)
    if cfg.force:  # recompute everything: no resumed evaluation, no reused meta-training
        # The old record stops counting as finished now, so a killed forced run is resumed by a plain
        # relaunch (from the new checkpoints) instead of being skipped for the old numbers.
        (run_dir / "done").unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    context = MethodContext(
        shape.n_way,
        shape.k_shot,
        dataset.image_size,
        dataset.channels,
        device,
        seed,
        work_dir,
        train_dir=train_dir,
        global_pool=meta_model_global_pool(cfg),
    )
    method = build_method(cfg, context)
    method.validate = make_probe(dataset, "val", shape, probe_episodes, suite_seed, primary, device)
    method.test_probe = make_probe(
        dataset, str(cfg.task.split), shape, probe_episodes, suite_seed, primary, device
    )
    attach_real_data(method, dataset, shape)
    method_seed = derive_seed(seed, "method", seed_name(METHODS.get(str(cfg.method.name))))
    try:
        # one process at a time per meta-training: runs that share it (purer, purer_no_icfil) wait,
        # then resume the finished checkpoint
        with exclusive(lock_path(results, "meta_train", train_dir.name), f"meta-training {train_dir.name}"):
            if cfg.force:
                shutil.rmtree(train_dir, ignore_errors=True)
            learner, meta_train_s = meta_train(cfg, method, zoo, budget, method_seed)
        result = evaluate(
            learner,
            suite,
            list(cfg.task.test_steps),
            device,
            cfg.eval.limit,
            description=f"{cfg.method.name} {shape.label}",
            progress=work_dir / "eval_progress.json",
            fingerprint=object_fingerprint(learner),
        )
    except (FloatingPointError, DataFreeViolation, torch.OutOfMemoryError) as error:
        write_failed_record(cfg, key, run_dir, started, device, error)
        raise BenchError(f"run {experiment}/{key} failed and was recorded as such: {error}") from error
    seeds = {"root": seed, "method": method_seed, "suite": suite_seed}
    record = make_record(
        cfg, key, method, learner.transductive, dataset, zoo, suite, result, meta_train_s, device, seeds
    )
    record.started_at = started
    record.artifacts = [
        str(Path(a).relative_to(run_dir)) for a in method.artifacts if Path(a).is_relative_to(run_dir)
    ]
    check_build()  # another lane may have recorded another build meanwhile (its checkpoints stay)
    write_record(run_dir, record, OmegaConf.to_yaml(cfg, resolve=True))
    make_sink(cfg.tracking, results, experiment).log_record(record, run_dir)
    log.info(
        "%s %s: %.2f ± %.2f%% (%d episodes, %.1f ep/s)",
        cfg.method.name,
        shape.label,
        record.acc_mean,
        record.acc_ci95,
        result.n_episodes,
        result.episodes_per_s,
    )
    return run_dir


def write_failed_record(cfg, key, run_dir, started, device, error) -> None:  # noqa: ANN001
    """A ``status: failed`` record (no metrics) naming the error; relaunching retries the run."""
    record = RunRecord(
        run_key=key,
        experiment=str(cfg.experiment.name),
        method=str(cfg.method.name),
        data_free=METHODS.get(str(cfg.method.name)).real_data_use() == "none",
        real_data=METHODS.get(str(cfg.method.name)).real_data_use(),
        status="failed",
        setting={"dataset": str(cfg.dataset.name), "zoo": str(cfg.zoo.name), "task": str(cfg.task.name)},
        config=OmegaConf.to_container(cfg, resolve=True),
        choices=hydra_choices(),
        seeds={"root": int(cfg.seed)},
        hashes=code_hashes(),
        environment=environment(device),
        started_at=started,
        finished_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        error=f"{type(error).__name__}: {error}",
    )
    write_record(run_dir, record, OmegaConf.to_yaml(cfg, resolve=True))
    log.error("%s: recorded as failed: %s", key, record.error)


def code_hashes() -> dict[str, Any]:
    """The record's code fields: git sha and state, source checksum (+ ``resumed_code`` / ``_threads``).

    ``resumed_code`` lists the other code that wrote files this run resumed, ``resumed_threads`` the
    other torch thread counts they were written at (bench.provenance).
    """
    resumed, threads = provenance.resumed_code(), provenance.resumed_threads()
    return {
        **provenance.current_code(),
        **({"resumed_code": resumed} if resumed else {}),
        **({"resumed_threads": threads} if threads else {}),
    }


def make_record(
    cfg, key, method, transductive, dataset, zoo, suite, result: EvalResult, meta_train_s, device, seeds
) -> RunRecord:  # noqa: ANN001 - internal glue
    """Assemble the RunRecord of a finished run."""
    primary = int(cfg.task.primary_steps)
    if primary not in result.per_episode:
        raise BenchError(
            f"task.primary_steps={primary} is not in task.test_steps={list(cfg.task.test_steps)}"
        )
    peak, peak_kind = peak_memory_gb(device)
    episodes = float(method.train_stats.get("meta_train_episodes", 0))
    # A resumed meta-training ran partly in earlier processes: count their checkpointed seconds too,
    # or the episode count (all processes) over this process's seconds inflates the throughput.
    resumed_s = float(method.train_stats.get("resumed_seconds", 0.0))
    meta_train_s = meta_train_s + resumed_s
    throughput = {
        "meta_train_s": meta_train_s,
        "meta_train_resumed_s": resumed_s,
        "meta_train_episodes": episodes,
        "episodes_per_s": episodes / meta_train_s if meta_train_s > 0 and episodes else 0.0,
        "eval_s": result.seconds,
        "eval_episodes_per_s": result.episodes_per_s,
        "adapt_ms_per_episode": 1000.0 * result.seconds / max(1, result.n_episodes),
        "peak_mem_gb": peak,
        "peak_mem_kind": peak_kind,
        "device_name": environment(device)["device_name"],
        "image_size": dataset.image_size,
    }
    throughput.update({k: v for k, v in method.train_stats.items() if k.endswith("_per_s")})
    return RunRecord(
        run_key=key,
        experiment=str(cfg.experiment.name),
        method=str(cfg.method.name),
        data_free=method.real_data_use() == "none",
        real_data=method.real_data_use(),
        status="ok",
        setting={
            "dataset": dataset.name,
            "zoo": zoo.name,
            "task": task_shape(cfg).label,
            "task_config": str(cfg.task.name),
            "profile": str(cfg.profile),
        },
        config=OmegaConf.to_container(cfg, resolve=True),
        choices=hydra_choices(),
        seeds=seeds,
        legacy=legacy_switches(OmegaConf.to_container(cfg.method, resolve=True)),
        hashes={
            "dataset": dataset.content_hash,
            "zoo": zoo.key,
            "zoo_weights": zoo.weights_sha256,
            "suite": suite.content_hash,
            **code_hashes(),
        },
        environment=environment(device),
        metrics={readout_name(s): summarize(v) for s, v in sorted(result.per_episode.items())},
        primary_readout=readout_name(primary),
        per_episode={readout_name(s): v for s, v in sorted(result.per_episode.items())},
        throughput=throughput,
        zoo=zoo.summary(),
        train_stats=dict(method.train_stats),
        ci_method=CI_METHOD,
        extra_metrics=dict(method.extra_metrics),
        transductive=transductive,
        finished_at=datetime.now(UTC).isoformat(timespec="microseconds"),
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run_one(cfg)
    except BenchError as error:
        log.error("%s", error)
        raise SystemExit(f"dfml-run: error: {error}") from None


def main() -> None:
    """Console entry point: validate group choices (did-you-mean), then hand over to Hydra."""
    from bench.overrides import check_group_overrides
    from bench.signals import exit_on_sigterm, interrupted

    exit_on_sigterm()

    try:
        check_group_overrides(sys.argv[1:])
        # Hydra creates its output dir under paths.results before any job runs: check it first.
        results = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("paths.results=")]
        if results and "," not in results[-1]:
            resolve_results_dir(results[-1])
        elif not results:
            resolve_results_dir(os.environ.get("DFML_RESULTS", "results"))
    except BenchError as error:
        raise SystemExit(f"dfml-run: error: {error}") from None
    try:
        _hydra_main()
    except KeyboardInterrupt:
        raise interrupted("dfml-run") from None
