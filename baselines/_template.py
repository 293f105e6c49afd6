"""<Method name> (<venue year>): one-line summary. Copy this file to start a new baseline.

Ref: <authors>, "<paper title>", <venue year> (arXiv <id>).

A baseline is this file plus ``bench/conf/method/<key>.yaml`` (whose keys are the Config fields);
it is discovered automatically (modules starting with ``_`` are skipped, so this one is not).
The contract and registry tests then run it on a tiny zoo without further edits.

Rules (architecture.md, baselines.md):
- ``meta_train`` gets the zoo, never a dataset; reading real images raises DataFreeViolation,
  unless the class sets ``uses_real_data = True`` (oracles only; shown as such everywhere).
- All randomness from ``gen`` or ``derive_seed(self.context.seed, "<name>")``; never global RNG.
- Put counters in ``self.train_stats`` (``meta_train_episodes``, ``synth_images_per_s``...):
  they go into the record and MLflow.
- Respect ``budget.meta_iterations`` / ``budget.max_seconds`` when not None.
- A meta-training loop: use ``bench.learners.episodic.train_episodic`` and pass a ``Resumable``
  (save/load of your own state: banks, generators, counters) so a killed run resumes exactly;
  the registry-wide test kills every looping method after iteration 3 and compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.learners.maml import FineTuneLearner
from bench.method import METHODS, Budget, Learner, MetaLearner, MethodConfig
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo


@dataclass
class TemplateConfig(MethodConfig):
    """Hyper-parameters: every YAML key must be a field here (typos fail at compose time)."""

    width: int = 32
    inner_lr: float = 0.01
    meta_iterations: int = 100


@METHODS.register("template_method")  # the key = the YAML stem = the leaderboard row
class TemplateMethod(MetaLearner):
    """One line shown by ``dfml-ls``."""

    Config = TemplateConfig

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Build the meta model from ``zoo`` members (``zoo.members[i].model``, frozen, eval mode)."""
        cfg: TemplateConfig = self.cfg  # type: ignore[assignment]
        model = fresh_meta_model(self.context, cfg.width)
        # Meta-train here for ``budget.meta_iterations or cfg.meta_iterations`` iterations, then
        # record e.g. ``self.train_stats["meta_train_episodes"] = float(4 * iterations)``.
        return FineTuneLearner(model, cfg.inner_lr)
