"""ICFIL: inversion calibration following the inner loop, at test time (purer.md §9).

The PURER paper describes ICFIL; the reference code never implemented it (``--efil`` only renames a
log folder). This is dfml-bench's specification of it, per episode:

1. adapt on the real support set S (the normal inner loop) -> theta';
2. invert theta' into a pseudo support set S^ (``images_per_class`` per class, N(0,1) init from a
   generator derived from the run seed and the episode's content), matching CE to the support
   labels, the BN input statistics of the real support batch under theta', TV and L2 priors;
3. calibrate the feature extractor (all but the head) for ``calib_steps`` SGD steps with a
   supervised contrastive loss: anchors = real support features, positives = same-label pseudo
   features, negatives = other-label pseudo features;
4. refit the head for ``head_steps`` SGD steps on the calibrated, detached real support features;
5. classify the query set.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.hashing import tensor_sha256
from bench.learners.maml import FineTuneLearner, to_channels_last
from bench.method import Classifier, Learner
from bench.seeding import derive_seed, make_generator
from purer.config import IcfilConfig
from purer.inversion import BNStatRecorder, InversionWeights, inversion_loss
from purer.teachers import HookedTeacher


def supervised_contrastive(
    anchors: torch.Tensor, anchor_y: torch.Tensor, pseudo: torch.Tensor, pseudo_y: torch.Tensor, tau: float
) -> torch.Tensor:
    """Mean over anchors of -mean_{p in P(i)} log softmax_j(z_i . z^_j / tau)[p].

    anchors (n_s, D) and pseudo (n_p, D) are L2-normalised features; P(i) = pseudo images with the
    anchor's label. Anchors without positives are skipped.
    """
    log_prob = F.log_softmax(anchors @ pseudo.T / tau, dim=1)  # (n_s, n_p)
    positive = (anchor_y.unsqueeze(1) == pseudo_y.unsqueeze(0)).to(log_prob.dtype)
    counts = positive.sum(1)
    keep = counts > 0
    per_anchor = -(log_prob * positive).sum(1)[keep] / counts[keep]
    return per_anchor.mean()


class _ModuleClassifier:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, query_x: torch.Tensor) -> torch.Tensor:
        return self.model(query_x)


class IcfilLearner(Learner):
    """Wraps a :class:`FineTuneLearner` (conv4 meta model) with ICFIL calibration after adaptation."""

    transductive = True

    def __init__(self, base: FineTuneLearner, cfg: IcfilConfig, seed: int) -> None:
        self.base, self.cfg, self.seed = base, cfg, seed

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Classifier:
        """Adapt ``base.default_steps`` steps, then calibrate."""
        steps = self.base.default_steps
        return self.adapt_readouts(support_x, support_y, [steps])[steps]

    def adapt_readouts(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: Sequence[int]
    ) -> dict[int, Classifier]:
        """ICFIL applied to each readout of one adaptation run (same pseudo-set seed for each)."""
        readouts = self.base.adapt_readouts(support_x, support_y, steps)
        episode_seed = derive_seed(self.seed, "icfil", tensor_sha256(support_x))
        return {
            s: self.calibrate(readouts[s].params, support_x, support_y, episode_seed)  # type: ignore[attr-defined]
            for s in readouts
        }

    def calibrate(
        self, params: dict[str, torch.Tensor], support_x: torch.Tensor, support_y: torch.Tensor, seed: int
    ) -> Classifier:
        """Steps 2-4 on a detached copy of the adapted model; returns the calibrated classifier."""
        model = copy.deepcopy(self.base.model)
        model.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
        model.requires_grad_(True)
        if self.base.channels_last:  # as the base learner adapts (see FineTuneLearner)
            model = model.to(memory_format=torch.channels_last)
            support_x = to_channels_last(support_x)
        n_way = int(support_y.max()) + 1
        pseudo_x, pseudo_y = self.invert(model, support_x, support_y, n_way, seed)
        self.calibrate_features(model, support_x, support_y, pseudo_x, pseudo_y)
        self.refit_head(model, support_x, support_y)
        return _ModuleClassifier(model)

    def invert(
        self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo support set (n_way*ipc, C, H, W) and labels, inverted from the adapted model."""
        cfg, generator = self.cfg, make_generator(seed)
        recorder = BNStatRecorder(model)
        with torch.no_grad(), recorder:
            model(support_x)
        targets = [(m.detach(), v.detach()) for m, v in recorder.moments]
        pseudo_y = torch.arange(n_way, device=support_x.device).repeat_interleave(cfg.images_per_class)
        shape = (len(pseudo_y), *support_x.shape[1:])
        pseudo_x = torch.randn(shape, generator=generator).to(support_x.device).requires_grad_(True)
        optimizer = torch.optim.Adam([pseudo_x], lr=cfg.inversion_lr)
        weights = InversionWeights(cfg.ce, cfg.bn, cfg.tv, cfg.l2, cfg.jitter)
        model.requires_grad_(False)
        forward = HookedTeacher(model)  # batch-stat BN: moments are those of the current batch
        for _ in range(cfg.inversion_steps):
            loss, _ = inversion_loss(forward, targets, pseudo_x, pseudo_y, weights, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.requires_grad_(True)
        return pseudo_x.detach(), pseudo_y

    def calibrate_features(
        self,
        model: nn.Module,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        pseudo_x: torch.Tensor,
        pseudo_y: torch.Tensor,
    ) -> None:
        """SGD on the feature extractor with the supervised contrastive loss (real anchors)."""
        extractor = [p for name, p in model.named_parameters() if not name.startswith("head.")]
        optimizer = torch.optim.SGD(extractor, lr=self.cfg.calib_lr)
        for _ in range(self.cfg.calib_steps):
            anchors = F.normalize(model.embed(support_x), dim=1)
            pseudo = F.normalize(model.embed(pseudo_x), dim=1)
            loss = supervised_contrastive(anchors, support_y, pseudo, pseudo_y, self.cfg.tau)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def refit_head(self, model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor) -> None:
        """SGD on the head with CE on the calibrated, detached real support features."""
        with torch.no_grad():
            features = model.embed(support_x)
        optimizer = torch.optim.SGD(model.head.parameters(), lr=self.cfg.head_lr)
        for _ in range(self.cfg.head_steps):
            loss = F.cross_entropy(model.head(features), support_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
