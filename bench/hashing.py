"""Content identity: canonical JSON, spec hashes and file checksums.

A zoo member, a zoo, a dataset, a task suite and a run are identified by the sha256 of the canonical
JSON of their spec plus :data:`CODE_VERSION`. Dict order never changes a key.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path
from typing import Any

#: Bumped whenever a change alters what cached artefacts contain (numbers, formats).
CODE_VERSION = "1"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and fixed separators; the byte form every hash is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)


def _json_default(value: Any) -> Any:
    """Sets as sorted lists (``str`` of a set follows hash randomisation); anything else as ``str``."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=canonical_json)
    return str(value)


def spec_hash(spec: Any, length: int = 16) -> str:
    """Hex sha256 (first ``length`` chars) of ``canonical_json(spec)`` + the code version."""
    payload = canonical_json({"code_version": CODE_VERSION, "spec": spec})
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def sha256_bytes(data: bytes) -> str:
    """Full hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(tensor: Any) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes (CPU, contiguous)."""
    t = tensor.detach().cpu().contiguous()
    header = f"{t.dtype}:{tuple(t.shape)}".encode()
    return sha256_bytes(header + t.numpy().tobytes())


#: Not walked by :func:`object_fingerprint`: code, not numbers.
CODE_OBJECTS = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)


def object_fingerprint(obj: Any) -> str:
    """sha256 over every tensor and plain number reachable from ``obj``.

    Attributes, modules' state and containers are walked; two learners that differ only in
    ``inner_lr`` or a step count differ. Identifies a trained learner's numbers: the same weights
    give the same fingerprint in any process (values, not memory layout or object ids). Objects are
    walked once (cycles are safe); names of the attributes are part of the digest, so a tensor moved
    between fields changes it.
    """
    import torch
    from torch import nn

    digest = hashlib.sha256()
    seen: set[int] = set()

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"{path}={tensor_sha256(value)};".encode())
            return
        if isinstance(value, int | float | bool):  # hyper-parameters (inner_lr, steps) change numbers
            digest.update(f"{path}={type(value).__name__}:{value!r};".encode())
            return
        if isinstance(value, types.MethodType):  # a bound method (e.g. ``model.embed``): its object's state
            walk(value.__self__, f"{path}.__self__")
            return
        if isinstance(value, str | bytes) or value is None or id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, nn.Module):
            for name, tensor in value.state_dict().items():
                walk(tensor, f"{path}.{name}")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key], f"{path}[{key}]")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")
        elif hasattr(value, "__dict__") and not isinstance(value, CODE_OBJECTS):
            for name in sorted(vars(value)):
                walk(vars(value)[name], f"{path}.{name}")

    walk(obj, "")
    return digest.hexdigest()
