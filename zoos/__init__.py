"""Pre-trained model zoos: architectures, member specs, pretraining and the cached Zoo."""

from __future__ import annotations
