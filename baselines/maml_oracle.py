"""MAML on **real** meta-train episodes: the ceiling of MAML-style DFML methods (not data-free).

Ref: Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017
(arXiv 1703.03400); the oracle row of Trustworthy-DFML (``method/maml.py``) and baselines.md §3.5.
Second-order MAML, conv4-32 with batch-statistic BN, Adam 1e-3, meta-batch 4 (summed query losses),
selection on meta-val. It reads the dataset's meta-train split, so it declares
``uses_real_data`` and every table labels it "oracle (real data)".

``init``: ``random`` (default, the papers' oracle: the zoo is ignored) or ``average`` (start from the
zoo's weight average, as PURER does on SS conv4 zoos; set ``+method.init=average``). The second
separates "real episodes" from "a pretrained starting point" when a data-free method that starts
from the zoo beats the random-init oracle on a short CPU schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from baselines._episodes import train_on_real_episodes
from bench.errors import BenchError
from bench.learners.episodic import EpisodicConfig
from bench.learners.maml import FineTuneLearner, maml_task_loss, module_params
from bench.method import METHODS, Budget, Learner, MetaLearner
from zoos.averaging import load_average_init
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo


@dataclass
class MamlOracleConfig(EpisodicConfig):
    """MAML hyper-parameters (baselines.md §2 shared defaults; CPU schedule)."""

    inner_lr: float = 0.01
    inner_steps: int = 5
    second_order: bool = True
    #: ``random`` or ``average`` (the zoo's weight average; not in the YAML, so existing keys hold).
    init: str = "random"


@METHODS.register("maml_oracle")
class MamlOracle(MetaLearner):
    """Second-order MAML on real meta-train episodes (the ceiling; uses real data)."""

    Config = MamlOracleConfig
    uses_real_data = True

    @classmethod
    def reads_zoo(cls, method_cfg: Mapping[str, Any]) -> bool:
        """Only with ``init: average`` (its start is the zoo's weight average)."""
        return method_cfg.get("init", "random") == "average"

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Meta-train a conv4 (fresh, or the zoo's average) on real episodes; select on meta-val."""
        cfg: MamlOracleConfig = self.cfg  # type: ignore[assignment]
        model = fresh_meta_model(self.context, cfg.width)
        if cfg.init == "average":
            load_average_init(model, zoo, str(cfg.name), cfg.width, self.context.n_way)
        elif cfg.init != "random":
            raise BenchError(f"{cfg.name} init {cfg.init!r} unknown; valid: random, average")

        def loss(m: torch.nn.Module, task):  # noqa: ANN001, ANN202
            return maml_task_loss(m, module_params(m), task, cfg.inner_steps, cfg.inner_lr, cfg.second_order)

        model = train_on_real_episodes(
            self, budget, loss, lambda m: FineTuneLearner(m, cfg.inner_lr), model=model
        )
        return FineTuneLearner(model, cfg.inner_lr)
