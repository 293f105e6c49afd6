"""Derived seeds and explicit generators; nothing here touches the global RNG.

``derive_seed(root, "episodes", "glyphs")`` hashes the joined names, so adding a new consumer never
shifts the streams of the existing ones (never ``seed + 1``).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(root: int, *names: object) -> int:
    """A 63-bit seed from the first 8 bytes of sha256("root/name1/name2...")."""
    text = "/".join([str(int(root)), *(str(n) for n in names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 63) - 1)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def derived_generator(root: int, *names: object) -> torch.Generator:
    """CPU generator seeded with :func:`derive_seed` of ``root`` and ``names``."""
    return make_generator(derive_seed(root, *names))
