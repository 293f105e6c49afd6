"""The Zoo: pretrained members, each cached once by its spec hash, plus a manifest.

Cache layout (under ``bench.paths.cache_dir()``)::

    zoo_members/<member_key>/{spec.json, weights.pt, member.json, done}
    zoos/<zoo_key>/manifest.json

``member.json`` holds the sha256 of ``weights.pt``; a mismatch on load is logged as a warning and
the member is rebuilt, never silently used. Weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.atomic import atomic_directory, atomic_write_json, is_done
from bench.data.base import ImageClassDataset
from bench.hashing import sha256_file, spec_hash
from bench.paths import cache_dir
from bench.progress import progress_enabled
from zoos.architectures import build_model, count_parameters
from zoos.members import member_specs
from zoos.spec import MemberSpec
from zoos.train import train_member

log = logging.getLogger(__name__)


@dataclass
class ZooMember:
    """One pretrained member: spec, frozen model (eval mode) and facts for the manifest."""

    spec: MemberSpec
    model: nn.Module
    heldout_acc: float
    train_acc: float
    weights_sha256: str
    param_count: int

    @property
    def key(self) -> str:
        """The member's spec hash."""
        return self.spec.key


@dataclass
class Zoo:
    """A zoo of pretrained classifiers. It carries no images: data-free methods see only this."""

    name: str
    key: str
    dataset: str
    dataset_hash: str
    image_size: int
    channels: int
    members: list[ZooMember]
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Normalisation of the members' input space (facts, not data: to un-normalise inversions).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def architectures(self) -> Counter[str]:
        """Count of members per architecture key."""
        return Counter(m.spec.arch for m in self.members)

    def summary(self) -> dict[str, Any]:
        """Short description for records and logs."""
        accs = [m.heldout_acc for m in self.members]
        return {
            "name": self.name,
            "key": self.key,
            "n_members": len(self.members),
            "architectures": dict(self.architectures()),
            "heldout_acc_mean": sum(accs) / max(1, len(accs)),
            "heldout_acc_min": min(accs, default=float("nan")),
        }


def _member_dir(key: str) -> Path:
    return cache_dir() / "zoo_members" / key


def _load_member(spec: MemberSpec, device: torch.device) -> ZooMember | None:
    """The cached member, or None if absent or corrupted (then the entry is removed)."""
    directory = _member_dir(spec.key)
    if not is_done(directory):
        return None
    info = json.loads((directory / "member.json").read_text())
    actual = sha256_file(directory / "weights.pt")
    if actual != info["weights_sha256"]:
        log.warning(
            "zoo member %s: weights.pt sha256 %s does not match manifest %s; rebuilding",
            spec.key,
            actual,
            info["weights_sha256"],
        )
        shutil.rmtree(directory, ignore_errors=True)
        return None
    model = build_model(
        spec.arch, spec.head_width, spec.image_size, spec.channels, torch.Generator(), **spec.arch_options
    )
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval().requires_grad_(False)
    return ZooMember(spec, model, info["heldout_acc"], info["train_acc"], actual, count_parameters(model))


def _build_member(spec: MemberSpec, dataset: ImageClassDataset, device: torch.device) -> None:
    trained = train_member(spec, dataset, device)
    with atomic_directory(_member_dir(spec.key)) as tmp:
        (tmp / "spec.json").write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True))
        state = {k: v.detach().cpu() for k, v in trained.model.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
        info = {
            "key": spec.key,
            "heldout_acc": trained.heldout_acc,
            "train_acc": trained.train_acc,
            "weights_sha256": sha256_file(tmp / "weights.pt"),
            "param_count": count_parameters(trained.model),
            "trained_on": str(device),
        }
        (tmp / "member.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def load_or_build_zoo(
    cfg: Mapping[str, Any], dataset: ImageClassDataset, device: torch.device | str = "cpu"
) -> Zoo:
    """Load every member of the zoo ``cfg`` from the cache, training the missing ones (resumable)."""
    device = torch.device(device)
    specs = member_specs(cfg, dataset)
    members: list[ZooMember] = []
    bar = tqdm(specs, desc=f"zoo {cfg['name']}", unit="member", disable=not progress_enabled())
    for spec in bar:
        member = _load_member(spec, device)
        if member is None:
            _build_member(spec, dataset, device)
            member = _load_member(spec, device)
            assert member is not None
        members.append(member)
        bar.set_postfix(heldout=f"{member.heldout_acc:.1f}%")
    zoo_key = spec_hash({"name": cfg["name"], "members": [m.key for m in members]})
    manifest = {
        "name": cfg["name"],
        "key": zoo_key,
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash,
        "members": [
            {
                "index": m.spec.index,
                "key": m.key,
                "arch": m.spec.arch,
                "arch_options": m.spec.arch_options,
                "classes": list(m.spec.classes),
                "heldout_acc": m.heldout_acc,
                "weights_sha256": m.weights_sha256,
                "param_count": m.param_count,
            }
            for m in members
        ],
    }
    atomic_write_json(cache_dir() / "zoos" / zoo_key / "manifest.json", manifest)
    return Zoo(
        str(cfg["name"]),
        zoo_key,
        dataset.name,
        dataset.content_hash,
        dataset.image_size,
        dataset.channels,
        members,
        manifest,
        tuple(dataset.mean),
        tuple(dataset.std),
    )
