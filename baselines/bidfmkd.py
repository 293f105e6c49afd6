"""BiDf-MKD, white-box form: generator inversion with true gradients, bi-level KD, replay MAML.

Ref: Hu et al., "Learning to Learn from APIs: Black-Box Data-Free Meta-Learning", ICML 2023
(arXiv 2305.18413); the white-box form as in Trustworthy-DFML ``method/bidfmkd.py`` (log-softmax
KL). The loop is in :mod:`baselines._bidfmkd` (shared with ``bidfmkd_zo``).
"""

from __future__ import annotations

from baselines._bidfmkd import BiDfMkdBase, BiDfMkdConfig
from bench.method import METHODS


@METHODS.register("bidfmkd")
class BiDfMkd(BiDfMkdBase):
    """White-box BiDf-MKD: members' gradients are used to train each inversion generator."""

    Config = BiDfMkdConfig
    black_box = False
