"""BiDf-MKD, black-box form: members are APIs returning logits; image gradients are zero-order estimates.

Ref: Hu et al., "Learning to Learn from APIs: Black-Box Data-Free Meta-Learning", ICML 2023
(arXiv 2305.18413), ``mainKD.py`` (zero-order estimator, q = 100 directions, μ = 0.005). Every
member query goes through :class:`baselines._zero_order.QueryCountingTeacher` (no gradient can
reach a member) and the total is recorded as ``teacher_queries``.
"""

from __future__ import annotations

from baselines._bidfmkd import BiDfMkdBase, BiDfMkdZoConfig
from bench.method import METHODS


@METHODS.register("bidfmkd_zo")
class BiDfMkdZo(BiDfMkdBase):
    """Black-box BiDf-MKD: logits-only member access, zero-order gradients for the generator."""

    Config = BiDfMkdZoConfig
    black_box = True
