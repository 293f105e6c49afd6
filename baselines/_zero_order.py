"""Black-box access to a zoo member and the zero-order gradient estimator (BiDf-MKD, baselines.md §3.8).

:class:`QueryCountingTeacher` is the only way ``bidfmkd_zo`` touches a member: a no-grad
``probabilities(x)`` (the softmax output, all an API returns) that counts every image sent;
:func:`log_probabilities` turns its answers into the log-probabilities the losses are built from.
:func:`zero_order_gradient` estimates the gradient of a per-image loss from such queries alone:

    ĝ_i = (d / q) · Σ_u u · [L_i(x_i + μu) − L_i(x_i)] / μ,   u uniform on the unit sphere of R^d,

with d = C·H·W pixels and q directions per image, processed in ``chunks`` groups to bound memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: (images (N, C, H, W), source (N,) index of the image each row perturbs) -> per-row loss (N,),
#: computed from black-box queries only (``source`` selects each row's label, mask...).
PerImageLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class QueryCountingTeacher:
    """A member behind an API: output probabilities only, no gradients, every queried image counted."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self.queries = 0

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (B, n_classes) for images x (B, C, H, W); adds B to :attr:`queries`."""
        self.queries += int(x.shape[0])
        return F.softmax(self._model(x.detach()), dim=1)


def log_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, n_classes) of API answers p (B, n_classes), p clamped at the smallest normal.

    Equal to ``log_softmax`` of the member's logits (up to rounding) wherever p does not underflow;
    an underflowed class gets log(tiny) (about -87 in float32) instead of -inf.
    """
    return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))


def zero_order_gradient(
    loss: PerImageLoss,
    x: torch.Tensor,
    directions: int,
    mu: float,
    chunks: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Estimated d(loss_i)/d(x_i) for every image: (B, C, H, W), from (1 + directions)·B loss calls.

    Args:
        loss: per-image loss from queries (no autograd needed).
        x: images (B, C, H, W) at which to estimate the gradient.
        directions: q, random unit directions per image.
        mu: finite-difference step μ.
        chunks: split the q directions into this many groups (memory: B·q/chunks images at once).
        generator: draws the directions (CPU generator; reproducible).
    """
    if directions < 1 or chunks < 1 or directions % chunks:
        raise ValueError(f"directions ({directions}) must be a positive multiple of chunks ({chunks})")
    with torch.no_grad():
        batch, shape = x.shape[0], x.shape[1:]
        dims = x[0].numel()
        index = torch.arange(batch, device=x.device)
        base = loss(x, index)  # (B,)
        estimate = torch.zeros(batch, dims, device=x.device, dtype=x.dtype)
        per_chunk = directions // chunks
        source = index.repeat_interleave(per_chunk)
        for _ in range(chunks):
            u = torch.randn(batch, per_chunk, dims, generator=generator).to(x.device, x.dtype)
            u = u / u.norm(dim=2, keepdim=True)
            probes = (x.reshape(batch, 1, dims) + mu * u).reshape(batch * per_chunk, *shape)
            diffs = (loss(probes, source).view(batch, per_chunk) - base.view(batch, 1)) / mu  # (B, q/chunks)
            estimate += (diffs.unsqueeze(2) * u).sum(1)
        return (estimate * (dims / directions)).view_as(x)
