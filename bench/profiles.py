"""Schedule profiles: a record's ``profile`` label must describe the schedule that actually ran.

``cpu`` is every method's own YAML schedule (scaled for a 2-core CPU); ``paper`` is the published
schedule, which experiment files (``paper_*``) declare per method in ``method_overrides``. Leaderboards
set ``paper``-profile rows against published numbers, so a CPU-length run must never carry that label.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from bench.errors import BenchError

PROFILES = ("cpu", "paper")


def check_profile(cfg: DictConfig, argv: Sequence[str] = ()) -> None:
    """Refuse a run whose ``profile`` label and method schedule disagree (``cfg`` after overrides).

    ``argv``: the command-line overrides (``hydra.overrides.task``); under ``paper`` none may change
    a ``method_overrides`` value the experiment file declares for the method.

    - ``profile`` is one of :data:`PROFILES`;
    - a method config that names its own ``profile`` (the PURER family) names the run's;
    - under ``paper``, a method with a meta-training schedule (``meta_iterations``) must have its
      length declared by the experiment (``method_overrides.<method>.meta_iterations``), and
      ``budget.meta_iterations`` may not shorten it, nor ``budget.max_seconds`` cut it.
    """
    profile = str(cfg.profile)
    if profile not in PROFILES:
        raise BenchError(f"profile {profile!r} unknown; valid: {', '.join(PROFILES)}")
    name = str(cfg.method.name)
    declared = OmegaConf.select(cfg.method, "profile", default=None)
    if declared is not None and str(declared) != profile:
        fix = (
            f"drop profile={profile} (this experiment runs {name} with its {declared} schedule), or use an "
            f"experiment with {name}'s {profile} schedule"
            if declared == "paper"
            else "use an experiment that sets both (profile: paper and "
            f"method_overrides.{name}.profile: paper, as the paper_* experiments do), or keep profile=cpu"
        )
        raise BenchError(
            f"method {name} has profile {declared!r} but the run's profile is {profile!r}: the record "
            f"would mislabel the schedule. To fix: {fix}"
        )
    if profile != "paper" or "meta_iterations" not in cfg.method:
        return  # methods without a meta-training schedule run the same under either label
    if cfg.budget.meta_iterations is not None:
        raise BenchError(
            f"budget.meta_iterations={cfg.budget.meta_iterations} shortens the paper schedule; a shortened "
            "run is not the paper profile: drop the override or run with profile=cpu"
        )
    if OmegaConf.select(cfg, "budget.max_seconds", default=None) is not None:
        raise BenchError(
            f"budget.max_seconds={cfg.budget.max_seconds} can cut the paper schedule short; a run stopped "
            "by the clock is not the paper profile: drop the override or run with profile=cpu"
        )
    check_declared_schedule_unchanged(str(cfg.experiment.name), name, argv)
    overrides = OmegaConf.select(cfg, "method_overrides", default=None) or {}
    if "meta_iterations" not in (overrides.get(name) or {}):
        raise BenchError(
            f"profile=paper but this experiment declares no paper schedule for {name} (no "
            f"method_overrides.{name}.meta_iterations): it would run its CPU schedule of "
            f"{cfg.method.meta_iterations} meta-iterations under the paper label. Add the paper schedule "
            f"to the experiment's method_overrides (or +method_overrides.{name}.meta_iterations=N), or run "
            "with profile=cpu"
        )


def check_declared_schedule_unchanged(experiment: str, method: str, argv: Sequence[str]) -> None:
    """Refuse a command-line ``method_overrides.<method>.<key>=`` changing the experiment file's value.

    Under ``paper`` those values are the method's paper schedule (length, adversarial start,
    selection cadence). Adding a key the file does not declare stays possible (declaring a schedule
    for a method the experiment has none for); the record's config shows it.
    """
    from bench.collect import experiment_yaml

    declared = (experiment_yaml(experiment).get("method_overrides") or {}).get(method) or {}
    prefix = f"method_overrides.{method}."
    for argument in argv:
        key, sep, value = argument.lstrip("+").partition("=")
        if not sep or not key.startswith(prefix):
            continue
        found = OmegaConf.select(OmegaConf.create(declared), key.removeprefix(prefix), default=None)
        if found is not None:
            raise BenchError(
                f"profile=paper: {argument} changes the schedule experiment {experiment} declares "
                f"({key}={found}); a changed schedule is not the paper profile: drop the override or run "
                "with profile=cpu"
            )
