"""Data-free DFML baselines: one module per method, each registered in ``bench.method.METHODS``.

Start a new baseline from ``_template.py``; it is discovered automatically (no list to edit).
"""

from __future__ import annotations
