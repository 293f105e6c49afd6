"""Schedule profiles: a record's ``profile`` label must describe the schedule that actually ran.

``cpu`` is every method's own YAML schedule (scaled for a 2-core CPU); ``paper`` is the published
schedule, which experiment files (``paper_*``) declare per method in ``method_overrides``. Leaderboards
set ``paper``-profile rows against published numbers, so a CPU-length run must never carry that label.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from bench.errors import BenchError

PROFILES = ("cpu", "paper")


def check_profile(cfg: DictConfig) -> None:
    """Refuse a run whose ``profile`` label and method schedule disagree (``cfg`` after overrides).

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
        raise BenchError(
            f"method {name} has profile {declared!r} but the run's profile is {profile!r}: the record "
            f"would mislabel the schedule. Use an experiment that sets both (profile: paper and "
            f"method_overrides.{name}.profile: paper, as the paper_* experiments do), or keep profile=cpu"
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
    overrides = OmegaConf.select(cfg, "method_overrides", default=None) or {}
    if "meta_iterations" not in (overrides.get(name) or {}):
        raise BenchError(
            f"profile=paper but this experiment declares no paper schedule for {name} (no "
            f"method_overrides.{name}.meta_iterations): it would run its CPU schedule of "
            f"{cfg.method.meta_iterations} meta-iterations under the paper label. Add the paper schedule "
            f"to the experiment's method_overrides (or +method_overrides.{name}.meta_iterations=N), or run "
            "with profile=cpu"
        )
