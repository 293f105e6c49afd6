"""The method contract: ``MetaLearner.meta_train(zoo, budget, gen) -> Learner``.

A method is one file in ``baselines/`` (or ``purer/``) registered in :data:`METHODS`, plus one
YAML in ``bench/conf/method/`` validated against its ``Config`` dataclass. ``meta_train`` receives
a zoo, never a dataset: the harness runs it inside ``forbid_real_data`` unless the class declares
``uses_real_data = True`` (the oracle baselines). A class declaring ``uses_real_val = True`` stays
inside the guard but may draw real meta-val episodes through ``sample_real_val``; it is recorded as
not data-free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.errors import BenchError
from bench.registry import Registry

if TYPE_CHECKING:
    from bench.data.base import ImageClassDataset
    from bench.tasks import Episode
    from zoos.zoo import Zoo


class Classifier(Protocol):
    """An adapted few-shot classifier: query_x (n, C, H, W) -> logits (n, n_way)."""

    def __call__(self, query_x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (n_query_total, n_way)."""


#: Scores a learner on a fixed *real* suite (mean accuracy %); the harness provides it for
#: checkpoint selection (meta-val) and the labelled reference-style test probe. It is evaluation:
#: the harness lifts the data-free guard only inside it.
Probe = Callable[["Learner"], float]


class Learner(ABC):
    """What meta-training produces: something that adapts to a support set."""

    #: True when predictions for one query depend on the other queries (batch-stat BN).
    transductive: bool = False

    @abstractmethod
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        """Adapt to support_x (n_way*k_shot, C, H, W), support_y (n_way*k_shot,)."""

    def adapt_readouts(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: Sequence[int]
    ) -> dict[int, Classifier]:
        """Classifiers read out after each number of test adaptation steps in ``steps``.

        Learners without a step count return the same classifier for every readout.
        """
        classifier = self.adapt(support_x, support_y)
        return dict.fromkeys(steps, classifier)


@dataclass(frozen=True)
class Budget:
    """How much meta-training a method may do (None = the method's own default)."""

    meta_iterations: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("meta_iterations", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise BenchError(f"budget.{name} must be > 0 or null; got {value}")


@dataclass(frozen=True)
class MethodContext:
    """What a method knows about the run besides its config: task shape, input shape, device."""

    n_way: int
    k_shot: int
    image_size: int
    channels: int
    device: torch.device
    seed: int
    #: Run-scoped scratch directory for artefacts (None: no files).
    work_dir: Path | None = None
    #: Directory for meta-training state (checkpoints), keyed by the *meta-training* identity: runs
    #: that differ only in ``eval_only_keys`` (e.g. purer vs purer_no_icfil) share it, so the second
    #: resumes the first's finished meta-training instead of repeating it. None: no resume.
    train_dir: Path | None = None
    #: The conv4 meta model max-pools its last feature map to 1x1 before the head (config
    #: ``meta_model.global_pool``; the MH experiments set it, as purer.md §2 and baselines.md §5 say).
    global_pool: bool = False


@dataclass
class MethodConfig:
    """Fields every method config has; subclasses add their hyper-parameters."""

    name: str = ""
    description: str = ""
    #: Integer settings that must be >= 1 (a 0 would divide by zero or silently change the method);
    #: :func:`validate_method_config` refuses a smaller value, naming the key.
    at_least_one: ClassVar[tuple[str, ...]] = ()


class MetaLearner(ABC):
    """Base of every registered method."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: Oracle baselines meta-train on real data and say so everywhere.
    uses_real_data: ClassVar[bool] = False
    #: Methods that steer meta-training on fresh *real meta-val* episodes (TDS's paper variant):
    #: they get ``sample_real_val`` and are recorded ``data_free: false``, ``real_data: meta_val``.
    uses_real_val: ClassVar[bool] = False
    #: Parameter-space methods (weight_average, ota): refused up front for mixed-architecture zoos.
    same_architecture_only: ClassVar[bool] = False
    #: Config keys that change only the test-time learner, never meta-training (see train_dir).
    eval_only_keys: ClassVar[tuple[str, ...]] = ()
    #: Bumped when a code change alters the method's numbers (a bug fix): runs of another version
    #: get other run keys and train dirs, so they are re-run instead of skipped as finished and
    #: never resume an old checkpoint. Version 1 adds nothing to the key (keys predate the field).
    code_version: ClassVar[int] = 1

    @classmethod
    def reads_zoo(cls, method_cfg: Mapping[str, Any]) -> bool:
        """Whether a run with this method config reads the zoo's members (its numbers depend on them).

        False lets its records sit beside any build of the zoo (``bench/zoo_builds.py``); a
        contract test checks the answer against two builds.
        """
        return True

    def __init__(self, cfg: MethodConfig, context: MethodContext) -> None:
        self.cfg, self.context = cfg, context
        #: Counters filled by meta_train for the record (meta-train episodes, images synthesised...).
        self.train_stats: dict[str, float] = {}
        #: Files (PNG, CSV) the method produced; the harness logs them as MLflow artifacts.
        self.artifacts: list[Path] = []
        #: Set by the harness: meta-val probe for checkpoint selection, test probe (labelled).
        self.validate: Probe | None = None
        self.test_probe: Probe | None = None
        #: Extra metrics for the record (e.g. acc_test_best_of_evals), set by meta_train.
        self.extra_metrics: dict[str, float] = {}
        #: The real dataset: set by the harness **only** for ``uses_real_data`` (oracle) methods.
        self.real_data: ImageClassDataset | None = None
        #: Draws a fresh real meta-val episode with the given generator: set by the harness **only**
        #: for ``uses_real_val`` methods (the data-free guard is lifted inside the call).
        self.sample_real_val: Callable[[torch.Generator], Episode] | None = None

    @classmethod
    def real_data_use(cls) -> str:
        """What real data meta-training sees: ``none``, ``meta_val`` (episodes) or ``meta_train`` (oracle)."""
        if cls.uses_real_data:
            return "meta_train"
        return "meta_val" if cls.uses_real_val else "none"

    @abstractmethod
    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Learn a Learner from the zoo alone (no dataset) within ``budget``."""


METHODS: Registry[type[MetaLearner]] = Registry("method", discover=("baselines", "purer"))


def validate_method_config(cls: type[MetaLearner], raw: Mapping[str, Any]) -> MethodConfig:
    """Merge ``raw`` into ``cls.Config`` (OmegaConf structured); type errors name the key."""
    schema = OmegaConf.structured(cls.Config)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(dict(raw)))
    except OmegaConfBaseException as error:
        valid = ", ".join(f.name for f in fields(cls.Config))
        where = f"method.{error.full_key}: " if getattr(error, "full_key", None) else ""
        message = " ".join(str(error.msg).split())
        raise BenchError(
            f"bad config for method {raw.get('name')!r}: {where}{message}; valid keys: {valid}"
        ) from error
    config = OmegaConf.to_object(merged)
    small = [f"method.{k}={getattr(config, k)!r}" for k in cls.Config.at_least_one if getattr(config, k) < 1]
    if small:
        raise BenchError(
            f"bad config for method {raw.get('name')!r}: {', '.join(small)}; valid: an integer >= 1"
        )
    return config  # type: ignore[return-value]


def check_reference_methods(names: Sequence[object]) -> None:
    """Raise unless every name given (a table's reference and compare_to methods) is registered.

    A typo would leave the table without those paired differences. Empty entries are skipped.
    """
    for name in names:
        if name and str(name) not in METHODS:
            from bench.registry import unknown_key_message

            raise BenchError(unknown_key_message("reference method", str(name), METHODS.names()))
