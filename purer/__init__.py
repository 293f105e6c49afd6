"""PURER (Hu et al., CVPR 2023, arXiv 2303.11183): ECI meta-training and ICFIL calibration.

The method modules land here and register themselves in ``bench.method.METHODS``; see
``../shared/docs/purer.md`` for the specification.
"""

from __future__ import annotations
