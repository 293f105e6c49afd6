"""BiDf-MKD, black-box form: members are APIs answering probabilities; image gradients are ZO estimates.

Ref: Hu et al., "Learning to Learn from APIs: Black-Box Data-Free Meta-Learning", ICML 2023
(arXiv 2305.18413), ``mainKD.py`` (zero-order estimator, q = 100 directions, μ = 0.005). Every
member query goes through :class:`baselines._zero_order.QueryCountingTeacher` (softmax outputs only,
no gradient can reach a member) and the total is recorded as ``teacher_queries``.
"""

from __future__ import annotations

from baselines._bidfmkd import BiDfMkdBase, BiDfMkdZoConfig
from bench.method import METHODS


@METHODS.register("bidfmkd_zo")
class BiDfMkdZo(BiDfMkdBase):
    """Black-box BiDf-MKD: probabilities-only member access, zero-order gradients for the generator."""

    Config = BiDfMkdZoConfig
    black_box = True
    #: 2: the API answers softmax probabilities instead of logits. CE and KD are unchanged up to
    #: rounding (they are shift-invariant in the logits), but the boundary term's L1 distance is now
    #: between teacher and student log-probabilities (version 1: between raw logits).
    code_version = 2
