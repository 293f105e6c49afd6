"""dfml-bench: a benchmark harness for data-free meta-learning (DFML).

The harness builds model zoos, meta-trains learners from them without their training data,
evaluates every method on the same fixed few-shot task suites and writes records, MLflow runs and
leaderboards. See ``README.md`` and ``architecture.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"
