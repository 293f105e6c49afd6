"""The meta model shared by the MAML-style baselines: a conv4 with batch-statistic BN."""

from __future__ import annotations

from torch import nn

from bench.method import MethodContext
from bench.seeding import derive_seed, make_generator
from zoos.architectures import build_model


def fresh_meta_model(context: MethodContext, width: int, global_pool: bool | None = None) -> nn.Module:
    """A conv4(width) meta model with ``context.n_way`` outputs, initialised from the run seed.

    BN always uses batch statistics (PURER's protocol), so the model has no buffers. ``global_pool``
    None follows the run (``context.global_pool``: config ``meta_model.global_pool``); a bool is for
    models whose weights come from members of that shape (weight_average, ota).
    """
    if global_pool is None:
        global_pool = context.global_pool
    generator = make_generator(derive_seed(context.seed, "meta-model-init"))
    model = build_model(
        "conv4",
        context.n_way,
        context.image_size,
        context.channels,
        generator,
        width=width,
        batch_stat_bn=True,
        global_pool=global_pool,
    )
    return model.to(context.device)
