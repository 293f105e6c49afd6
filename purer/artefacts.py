"""PURER's artefacts: grids of synthesized images and meta-training curves (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from bench.atomic import atomic_save  # noqa: E402


def save_image_grid(
    X: torch.Tensor,
    images_per_class: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    path: Path,
    max_classes: int | None = None,
    per_class: int = 8,
) -> Path:
    """PNG with one row per class (row i = class i of X), ``per_class`` images each, un-normalised.

    X: (n_classes * images_per_class, C, H, W) in normalised input space. Every class is drawn
    unless ``max_classes`` caps the rows.
    """
    n_classes = X.shape[0] // images_per_class
    n_classes = n_classes if max_classes is None else min(max_classes, n_classes)
    per_class = min(per_class, images_per_class)
    rows = torch.stack([torch.arange(per_class) + c * images_per_class for c in range(n_classes)]).flatten()
    images = X.detach()[rows.to(X.device)].float().cpu()
    images = (images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)).clamp(0, 1)
    grid = make_grid(images, nrow=per_class, padding=1)  # (C, H', W')
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    picture = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
    atomic_save(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


def save_curves(history: list[dict[str, Any]], events: list[dict[str, Any]], path: Path) -> Path:
    """Meta-train loss and pseudo-query accuracy per iteration, switch events as vertical lines."""
    iterations = [h["iteration"] for h in history]
    fig, (loss_axis, acc_axis) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    loss_axis.plot(iterations, [h["outer_loss"] for h in history], lw=0.6)
    loss_axis.set_ylabel("outer loss (sum of 4 tasks)")
    acc_axis.plot(iterations, [h["train_acc"] for h in history], lw=0.6, label="pseudo-query acc")
    val = [(h["iteration"], h["val_acc"]) for h in history if h.get("val_acc") is not None]
    if val:
        acc_axis.plot(*zip(*val, strict=True), "o-", label="meta-val acc")
    for event in events:
        for axis in (loss_axis, acc_axis):
            axis.axvline(event["iteration"], color="red", lw=0.5, alpha=0.5)
    acc_axis.set_xlabel("meta-iteration (red: curriculum switches)")
    acc_axis.set_ylabel("accuracy (%)")
    acc_axis.legend(fontsize=7)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path
