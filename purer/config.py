"""PURER's hyper-parameters (purer.md §13).

Defaults = the CPU profile; the YAML's comments list the paper profile (60,000 meta-iterations,
adv.start 4000, selection every 500).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.errors import BenchError
from bench.method import MethodConfig
from purer.inversion import InversionWeights


@dataclass
class SynthesisConfig:
    """The dynamic dataset: images per class (null = K + 15), Adam lr, teachers per data step."""

    images_per_class: int | None = None
    n_query: int = 15
    lr: float = 0.25
    teachers_per_step: int | None = None


@dataclass
class AdversarialConfig:
    """Curriculum + adversarial term (purer.md §7); start null = round(meta_iterations * 4000/60000)."""

    enabled: bool = True
    scale: float = 10.0
    start: int | None = None
    patience: int = 6


@dataclass
class SelectionConfig:
    """Checkpoint selection on meta-val every ``every`` iterations over ``val_episodes`` episodes."""

    every: int = 250
    val_episodes: int = 200
    test_probe: bool = True


@dataclass
class IcfilConfig:
    """ICFIL test-time calibration (purer.md §9)."""

    enabled: bool = True
    images_per_class: int = 5
    inversion_steps: int = 50
    inversion_lr: float = 0.25
    ce: float = 1.0
    bn: float = 0.01
    tv: float = 1e-4
    l2: float = 1e-5
    jitter: int = 2
    calib_steps: int = 5
    calib_lr: float = 0.01
    tau: float = 0.1
    head_steps: int = 20
    head_lr: float = 0.1


@dataclass
class LegacyConfig:
    """Switches reproducing reference-code behaviours (runs get their own leaderboard rows)."""

    cumulative_node_weighting: bool = False


#: The reference schedule (purer.md §13): what ``profile: paper`` must run.
PAPER_SCHEDULE = {
    "meta_iterations": 60000,
    "adv.start": 4000,
    "selection.every": 500,
    "selection.val_episodes": 600,
}


@dataclass
class PurerConfig(MethodConfig):
    """All of PURER's hyper-parameters."""

    profile: str = "cpu"
    meta_iterations: int = 2000
    meta_batch: int = 4
    width: int = 32
    init: str = "average"
    average_head: bool = True
    inner_lr: float = 0.01
    inner_steps: int = 1
    second_order: bool = True
    outer_lr: float = 1e-3
    outer_reduce: str = "sum"
    curriculum: bool = True
    checkpoint_every: int = 250
    channels_last: bool = False
    fold_teachers: bool = True
    #: ``bf16``: autocast the inversion (teacher forwards) to bfloat16; fp32 is the default.
    precision: str = "fp32"
    #: ``torch.compile`` mode for the inversion objective (all teachers): ``off`` (default),
    #: ``default``, ``reduce-overhead`` (CUDA graphs on CUDA) or ``max-autotune``. Not in the YAMLs
    #: (their keys name the runs): set it with ``+method.compile=default``. CPU needs a C++ compiler.
    compile: str = "off"
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    inversion: InversionWeights = field(default_factory=InversionWeights)
    adv: AdversarialConfig = field(default_factory=AdversarialConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    icfil: IcfilConfig = field(default_factory=IcfilConfig)
    legacy: LegacyConfig = field(default_factory=LegacyConfig)


def check_counts(cfg: PurerConfig, k_shot: int, n_teachers: int) -> None:
    """Raise a :class:`BenchError` naming each integer setting outside its valid range.

    A zero or negative count would otherwise change the run silently (``teachers_per_step: -1``
    inverts with 12 of 13 teachers, ``adv.patience: 0`` never switches) or crash far from the key
    (``selection.every: 0``); ``images_per_class`` below K + n_query gives short pseudo tasks.
    """
    synthesis, minimum = cfg.synthesis, k_shot + cfg.synthesis.n_query
    count = "an integer >= 1"
    rules: list[tuple[str, object, bool, str]] = [
        ("meta_iterations", cfg.meta_iterations, cfg.meta_iterations >= 1, count),
        ("meta_batch", cfg.meta_batch, cfg.meta_batch >= 1, count),
        ("inner_steps", cfg.inner_steps, cfg.inner_steps >= 1, count),
        ("checkpoint_every", cfg.checkpoint_every, cfg.checkpoint_every >= 1, count),
        ("selection.every", cfg.selection.every, cfg.selection.every >= 1, count),
        ("selection.val_episodes", cfg.selection.val_episodes, cfg.selection.val_episodes >= 1, count),
        ("adv.patience", cfg.adv.patience, cfg.adv.patience >= 1, count),
        ("adv.start", cfg.adv.start, cfg.adv.start is None or cfg.adv.start >= 1, "null or an integer >= 1"),
        ("synthesis.n_query", synthesis.n_query, synthesis.n_query >= 1, count),
        (
            "synthesis.images_per_class",
            synthesis.images_per_class,
            synthesis.images_per_class is None or synthesis.images_per_class >= minimum,
            f"null (= K + n_query = {minimum}) or an integer >= {minimum}",
        ),
        (
            "synthesis.teachers_per_step",
            synthesis.teachers_per_step,
            synthesis.teachers_per_step is None or 1 <= synthesis.teachers_per_step <= n_teachers,
            f"null (every teacher) or an integer from 1 to the zoo's {n_teachers} members",
        ),
    ]
    wrong = [f"method.{key}={value!r} (valid: {valid})" for key, value, ok, valid in rules if not ok]
    if wrong:
        raise BenchError(f"purer: {'; '.join(wrong)}")
