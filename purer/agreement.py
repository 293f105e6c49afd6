"""Label agreement of synthetic images: how often the member that made an image predicts its label.

Every inversion method trains images x_i towards a label t_i under a frozen member (PURER's
dynamic dataset, the dfmaml / dfprotonet banks, the bidfmkd / tds / free / tgr generators), and then
meta-learns with t_i as a hard label. Nothing makes the member end up predicting t_i: a short CPU
schedule or a heavy BN-statistics term can leave many images on another class, and a task whose
labels are partly wrong teaches less. The records say how often that happened:

- ``synth_labels_checked``: synthetic images checked (once per inversion, on its final images);
- ``synth_labels_agreed``: of those, the images whose member's argmax equals their label;
- ``synth_label_agreement``: ``100 * agreed / checked`` (left out when nothing was checked).

The check reuses the member's scores on the final images where a method computes them anyway
(bidfmkd, bidfmkd_zo, tds, free, tgr: no extra member query); the dfmaml / dfprotonet bank and
PURER's pixels add one no-grad forward in eval mode, which changes no weight, no BN statistic and
no random stream.
"""

from __future__ import annotations

import torch

CHECKED, AGREED, PERCENT = "synth_labels_checked", "synth_labels_agreed", "synth_label_agreement"


def zero_counts() -> dict[str, float]:
    """The two counters at zero, to seed a method's stats dict (checkpointed with it)."""
    return {CHECKED: 0.0, AGREED: 0.0}


def count_agreement(counts: dict[str, float], scores: torch.Tensor, labels: torch.Tensor) -> None:
    """Add one inversion's images to ``counts``.

    ``scores`` (B, n_classes): the member's logits or log-probabilities on the images; ``labels``
    (B,): the member-local labels they were made for.
    """
    counts[CHECKED] = counts.get(CHECKED, 0.0) + float(len(labels))
    counts[AGREED] = counts.get(AGREED, 0.0) + float((scores.argmax(1) == labels).sum())


@torch.no_grad()
def check_images(
    counts: dict[str, float], model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> None:
    """:func:`count_agreement` on the scores of the eval-mode ``model`` on ``images`` (B, C, H, W)."""
    count_agreement(counts, model(images), labels)


def agreement_stats(counts: dict[str, float]) -> dict[str, float]:
    """The counters and, when any image was checked, the agreement in percent (for ``train_stats``)."""
    checked, agreed = counts.get(CHECKED, 0.0), counts.get(AGREED, 0.0)
    stats = {CHECKED: checked, AGREED: agreed}
    if checked > 0:
        stats[PERCENT] = 100.0 * agreed / checked
    return stats
