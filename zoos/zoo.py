"""The Zoo: pretrained members, each cached once by its spec hash, plus a manifest.

Cache layout (under ``bench.paths.cache_dir()``)::

    zoo_members/<member_key>/{spec.json, weights.pt, member.json, done}
    zoos/<zoo_key>/manifest.json

``member.json`` holds the sha256 of ``weights.pt``; a missing file or a mismatch on load is an
:class:`IntegrityError` naming the member and the fix (``dfml-zoo build <zoo> --repair``), never
silently used. Weights load with ``torch.load(weights_only=True)``. Members are written atomically
(a temporary directory renamed into place), so a killed build leaves only complete members and the
next build trains just the missing ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.atomic import atomic_directory, atomic_write_json, is_done, remove_directory
from bench.data import load_dataset
from bench.data.base import ImageClassDataset
from bench.errors import BenchError, IntegrityError
from bench.hashing import sha256_bytes, sha256_file, spec_hash
from bench.paths import cache_dir
from bench.progress import progress_options
from bench.threads import check_threads, intra_op_threads
from bench.timing import cuda_fp32_precision, device_name
from zoos.architectures import build_model, count_parameters
from zoos.members import is_multi_dataset, member_specs, untrusted_mix
from zoos.numerics import check_numerics, member_numerics
from zoos.spec import MemberSpec
from zoos.train import near_chance, train_member

log = logging.getLogger(__name__)


class InputMapped(nn.Module):
    """``inner(x * scale + shift)``: a member queried with images normalised for another dataset.

    ``scale`` and ``shift`` (C, 1, 1) map the run dataset's normalised space into the member's own
    (pixel p: ``(p - mean_run) / std_run`` -> ``(p - mean_member) / std_member``). They are plain
    attributes, not buffers: the member's state dict is unchanged.
    """

    def __init__(self, inner: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.scale, self.shift = scale, shift

    def map_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images x (B, C, H, W) in the run dataset's normalisation -> in the member's own."""
        return x * self.scale + self.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) of images x (B, C, H, W) in the run dataset's normalisation."""
        return self.inner(self.map_input(x))


def input_map(
    member_norm: tuple[tuple[float, ...], tuple[float, ...]],
    run_norm: tuple[tuple[float, ...], tuple[float, ...]],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift), each (C, 1, 1), from the run's normalised space to a member's; None if equal.

    Each normalisation is (mean, std) per channel.
    """
    if tuple(map(tuple, member_norm)) == tuple(map(tuple, run_norm)):
        return None
    (m_mean, m_std), (r_mean, r_std) = (
        (torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1) for v in norm)
        for norm in (member_norm, run_norm)
    )
    return r_std / m_std, (r_mean - m_mean) / m_std


@dataclass
class ZooMember:
    """One pretrained member: spec, frozen model (eval mode) and facts for the manifest."""

    spec: MemberSpec
    model: nn.Module
    heldout_acc: float
    train_acc: float
    weights_sha256: str
    param_count: int
    #: (scale, shift) from the run dataset's normalisation to the member's own (MH zoos: a member
    #: of another source than the run's dataset); None when they are the same.
    input_map: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def run_model(self) -> nn.Module:
        """The member as a run queries it: images in the run dataset's normalisation.

        ``model`` itself unless the member's source dataset normalises differently (MH), then
        :class:`InputMapped` around it. Every method feeding synthetic images to a member uses this,
        so one image set serves members of every source and the meta-learner alike.
        """
        return self.model if self.input_map is None else InputMapped(self.model, *self.input_map)

    @property
    def key(self) -> str:
        """The member's spec hash."""
        return self.spec.key

    @property
    def class_keys(self) -> tuple[str, ...]:
        """Dataset-qualified class names (``<dataset>/<class>``), unique across MH sources."""
        return tuple(f"{self.spec.dataset}/{name}" for name in self.spec.classes)


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
    #: Normalisation of the run dataset, the space every member is queried in (facts, not data: to
    #: un-normalise inversions). MH members of another source map it into their own
    #: (:attr:`ZooMember.run_model`).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: Source dataset name -> global label offset (MH zoos; {dataset: 0} otherwise).
    label_offsets: dict[str, int] = field(default_factory=dict)
    #: Indices of the members trained (not loaded from the cache) when this Zoo was made.
    trained_now: list[int] = field(default_factory=list)

    @property
    def datasets(self) -> list[str]:
        """Names of the datasets the members were trained on (one unless MH)."""
        return sorted({m.spec.dataset for m in self.members})

    @property
    def heterogeneous(self) -> bool:
        """True when members differ in architecture or architecture options (SH / MH)."""
        return len({(m.spec.arch, json.dumps(m.spec.arch_options, sort_keys=True)) for m in self.members}) > 1

    def architectures(self) -> Counter[str]:
        """Count of members per architecture key."""
        return Counter(m.spec.arch for m in self.members)

    @property
    def weights_sha256(self) -> str:
        """sha256 over the members' weight-file hashes, in member order.

        The zoo's ``key`` hashes its *configuration*; members trained on another host (or torch)
        from the same configuration get other weights, and every zoo-reading method other numbers.
        This hash tells two builds of one zoo apart in records.
        """
        return build_hash([m.weights_sha256 for m in self.members])

    def summary(self) -> dict[str, Any]:
        """Short description for records and logs."""
        accs = [m.heldout_acc for m in self.members]
        return {
            "name": self.name,
            "key": self.key,
            "n_members": len(self.members),
            "architectures": dict(self.architectures()),
            "datasets": self.datasets,
            "heldout_acc_mean": sum(accs) / max(1, len(accs)),
            "heldout_acc_min": min(accs, default=float("nan")),
        }


def member_dir(key: str) -> Path:
    """Where the member with spec hash ``key`` is cached."""
    return cache_dir() / "zoo_members" / key


def build_hash(weights_sha256: list[str]) -> str:
    """A build's identity: sha256 over its members' weight-file hashes in member order."""
    return sha256_bytes("\n".join(weights_sha256).encode())


def _load_member(spec: MemberSpec, device: torch.device, zoo_name: str = "") -> ZooMember | None:
    """The cached member, None if not built yet; IntegrityError if its weights are missing/corrupt."""
    directory = member_dir(spec.key)
    if not is_done(directory):
        return None
    info = _member_info(spec, zoo_name)
    fix = _repair_hint(zoo_name)
    weights = directory / "weights.pt"
    if not weights.is_file():
        raise IntegrityError(f"zoo member {spec.index} ({spec.key}): {weights} is missing; {fix}")
    actual = sha256_file(weights)
    if actual != info["weights_sha256"]:
        raise IntegrityError(
            f"zoo member {spec.index} ({spec.key}): {weights} sha256 {actual[:12]}... does not match "
            f"the manifest's {info['weights_sha256'][:12]}...; {fix}"
        )
    model = build_model(
        spec.arch, spec.head_width, spec.image_size, spec.channels, torch.Generator(), **spec.arch_options
    )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval().requires_grad_(False)
    return ZooMember(spec, model, info["heldout_acc"], info["train_acc"], actual, count_parameters(model))


def _repair_hint(zoo_name: str) -> str:
    return f"run `dfml-zoo build {zoo_name or '<zoo>'} --repair` (retrains it; weights are deterministic)"


def _member_info(spec: MemberSpec, zoo_name: str = "") -> dict[str, Any]:
    """A finished member's ``member.json``; IntegrityError (with the repair hint) if missing or unreadable."""
    path = member_dir(spec.key) / "member.json"
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict) or "weights_sha256" not in info:
            raise ValueError("no weights_sha256 in it")
    except (OSError, ValueError) as error:
        raise IntegrityError(
            f"zoo member {spec.index} ({spec.key}): {path} is missing or unreadable ({error}); "
            f"{_repair_hint(zoo_name)}"
        ) from None
    return info


def member_numerics_of(spec: MemberSpec, zoo_name: str = "") -> str:
    """The numerics a cached member was trained with (``native`` when member.json predates them)."""
    return str(_member_info(spec, zoo_name).get("train_numerics") or "native")


def remove_member(spec: MemberSpec) -> None:
    """Delete a member's cache entry (``--repair`` of a corrupt member)."""
    remove_directory(member_dir(spec.key))


def build_member(
    spec: MemberSpec, dataset: ImageClassDataset, device: torch.device, numerics: str = "native"
) -> None:
    """Train one member and store it atomically (weights, spec, sha256, held-out accuracy, time).

    ``numerics``: ``native`` or ``portable`` (:mod:`zoos.numerics`: weights independent of the CPU).
    """
    started = time.perf_counter()
    with member_numerics(numerics, device):
        trained = train_member(spec, dataset, device)
    if near_chance(trained.heldout_acc, len(spec.classes), spec.extra):
        log.warning(
            "zoo member %d (%s, %s) holds out at %.1f %% (chance %.1f %%, train %.1f %% in eval mode): "
            "its teachers' logits and BN statistics carry little; give its architecture more "
            "optimiser steps (recipe_by_arch: a smaller batch_size or more epochs) or "
            "recalibrate_bn_batch: <n>",
            spec.index,
            spec.arch,
            spec.training_dataset,
            trained.heldout_acc,
            100.0 / len(spec.classes),
            trained.train_acc,
        )
    with atomic_directory(member_dir(spec.key)) as tmp:
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
            "train_seconds": time.perf_counter() - started,
            # The weights depend on these, not only on the spec: a retrain is bit-identical on one
            # CPU at one intra-op thread count, and differs at another count (measured: conv4 and
            # resnet members of the glyphs zoos, torch 2.14.1 on the AMD EPYC host).
            "train_threads": torch.get_num_threads(),
            "train_device_name": device_name(device),
            "train_numerics": numerics,
            "train_aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
        }
        if device.type == "cuda":  # TF32 (device.tf32=true) changes CUDA weights; CPU has no such switch
            info["train_cuda_fp32_precision"] = cuda_fp32_precision()
        (tmp / "member.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def zoo_datasets(cfg: Mapping[str, Any], dataset: ImageClassDataset) -> dict[str, ImageClassDataset]:
    """Source name -> dataset of zoo ``cfg`` (``{"": dataset}`` for SS/SH); checks the pairing.

    SS/SH zoos name the dataset they are built on (``dataset:``) and must match the run's; MH zoos
    load every source and the run's dataset must be one of them (it is the evaluation dataset).
    """
    name = str(cfg.get("name"))
    if not is_multi_dataset(cfg):
        wanted = cfg.get("dataset")
        if wanted is not None and str(wanted) != dataset.name:
            raise BenchError(
                f"zoo {name!r} is built on dataset {wanted!r}, but the run's dataset is "
                f"{dataset.name!r}; use dataset={wanted} or a zoo of {dataset.name!r}"
            )
        return {"": dataset}
    declared = [str(spec["dataset"]["name"]) for spec in dict(cfg["sources"]).values()]
    if dataset.name not in declared:  # cheap check before loading any source
        raise BenchError(
            f"zoo {name!r} is a multi-dataset (MH) zoo over {declared}; the run's dataset "
            f"{dataset.name!r} is not one of them: evaluate on one of {declared} (dataset=...)"
        )
    datasets: dict[str, ImageClassDataset] = {}
    for source, spec in dict(cfg["sources"]).items():
        loaded = load_dataset(dict(spec["dataset"]))  # cached after the first build
        datasets[str(source)] = dataset if loaded.content_hash == dataset.content_hash else loaded
    names = [d.name for d in datasets.values()]
    if len(set(names)) != len(names):
        raise BenchError(f"zoo {name!r}: MH sources must be distinct datasets; got {names}")
    if dataset.content_hash not in {d.content_hash for d in datasets.values()}:
        raise BenchError(
            f"zoo {name!r} is a multi-dataset (MH) zoo over {names}; the run's dataset {dataset.name!r} "
            f"(this configuration) is not one of them: evaluate on one of {names} with the zoo's "
            "source configuration (dataset=...)"
        )
    shapes = {(d.image_size, d.channels) for d in datasets.values()}
    if len(shapes) > 1:
        raise BenchError(
            f"zoo {name!r}: MH sources must share image size and channels (set image_size/channels in "
            f"each source's dataset config); got "
            + ", ".join(f"{d.name}={d.image_size}px x{d.channels}" for d in datasets.values())
        )
    return datasets


def zoo_specs(
    cfg: Mapping[str, Any], dataset: ImageClassDataset
) -> tuple[list[MemberSpec], dict[str, ImageClassDataset]]:
    """(member specs, datasets by name) of zoo ``cfg`` paired with the run's ``dataset``."""
    by_source = zoo_datasets(cfg, dataset)
    untrusted = cfg.get("untrusted") or {}
    wants_foreign = bool(untrusted) and "foreign" in untrusted_mix(untrusted)
    foreign_cfg = untrusted.get("foreign_dataset") if wants_foreign else None
    foreign = load_dataset(dict(foreign_cfg)) if foreign_cfg else None  # TDS's "another dataset"
    specs = member_specs(cfg, by_source, foreign)
    return specs, {d.name: d for d in [*by_source.values(), *([foreign] if foreign else [])]}


def check_threads_by_arch(threads_by_arch: Mapping[str, int], specs: list[MemberSpec]) -> None:
    """Every arch named must be one of the zoo's, every count >= 1 (BenchError otherwise)."""
    archs = sorted({s.arch for s in specs})
    for arch, threads in threads_by_arch.items():
        if arch not in archs:
            raise BenchError(f"threads by arch: the zoo has no {arch!r} members; its architectures: {archs}")
        check_threads(threads, f"threads by arch: {arch}", nullable=False)


def ensure_members(
    cfg: Mapping[str, Any],
    specs: list[MemberSpec],
    datasets: Mapping[str, ImageClassDataset],
    device: torch.device,
    repair: bool = False,
    threads_by_arch: Mapping[str, int] | None = None,
    numerics: str = "native",
    replace_native: bool = False,
) -> tuple[list[ZooMember], list[int]]:
    """(members, indices trained now): train the missing ones (resumable); ``repair`` corrupt ones.

    ``threads_by_arch`` trains the members of the named architectures at that many torch threads
    (the weights depend on it; see ``dfml-zoo build --threads-by-arch``); others at the current count.
    ``numerics``: see :func:`build_member`. A portable build refuses members cached from a native
    one (same key, CPU-specific weights) unless ``replace_native``, which retrains them; a native
    build uses whatever is cached.
    """
    check_numerics(numerics)
    threads_by_arch = dict(threads_by_arch or {})
    check_threads_by_arch(threads_by_arch, specs)
    if numerics == "portable" and not replace_native:  # before training any member into this cache
        for spec in specs:
            try:
                cached_numerics = (
                    member_numerics_of(spec, str(cfg["name"])) if is_done(member_dir(spec.key)) else None
                )
            except IntegrityError:
                if not repair:
                    raise
                continue  # unreadable: --repair retrains it below
            if cached_numerics not in (None, "portable"):
                raise BenchError(
                    f"zoo {cfg['name']} member {spec.index} ({spec.key}) is cached from a "
                    f"{cached_numerics} build, whose weights depend on the CPU that trained it; "
                    "a portable build does not reuse it: retrain such members portably with `dfml-zoo "
                    f"build {cfg['name']} --numerics portable --replace-native` (at the thread count and "
                    "with the zoo overrides in use), or build into another cache (DFML_CACHE; this one: "
                    f"{cache_dir()})"
                )
    members: list[ZooMember] = []
    trained: list[int] = []
    bar = tqdm(specs, desc=f"zoo {cfg['name']}", unit="member", **progress_options())
    for spec in bar:
        try:
            member = _load_member(spec, device, str(cfg["name"]))
        except IntegrityError:
            if not repair:
                raise
            log.warning("zoo %s: member %d is corrupt; retraining it (--repair)", cfg["name"], spec.index)
            remove_member(spec)
            member = None
        if member is not None and numerics == "portable" and member_numerics_of(spec) != "portable":
            # only with replace_native: cached native members were refused above otherwise
            log.warning(
                "zoo %s: member %d is a native build; retraining it portably", cfg["name"], spec.index
            )
            remove_member(spec)
            member = None
        if member is None:
            with intra_op_threads(threads_by_arch.get(spec.arch)):
                build_member(spec, datasets[spec.training_dataset], device, numerics)
            trained.append(spec.index)
            member = _load_member(spec, device, str(cfg["name"]))
            assert member is not None
        members.append(member)
        bar.set_postfix(heldout=f"{member.heldout_acc:.1f}%", refresh=False)
    return members, trained


def zoo_key_of(name: str, member_keys: list[str]) -> str:
    """A zoo's key: its name and its members' spec hashes (its configuration, not its weights)."""
    return spec_hash({"name": name, "members": list(member_keys)})


def make_manifest(
    cfg: Mapping[str, Any], members: list[ZooMember], datasets: Mapping[str, ImageClassDataset]
) -> dict[str, Any]:
    """The zoo manifest: member specs, hashes, held-out accuracies, classes, archs, label offsets."""
    offsets, total = {}, 0
    for name in datasets:  # source order (MH: cifar_fs 0, mini_imagenet 64, cub 128)
        offsets[name] = total
        total += len(datasets[name].split_classes("train"))
    zoo_key = zoo_key_of(str(cfg["name"]), [m.key for m in members])
    rows = []
    for m in members:
        train_names = [
            datasets[m.spec.dataset].class_names[i] for i in datasets[m.spec.dataset].split_classes("train")
        ]
        position = {c: i for i, c in enumerate(sorted(train_names))}
        info = json.loads((member_dir(m.key) / "member.json").read_text())
        rows.append(
            {
                "index": m.spec.index,
                "key": m.key,
                "arch": m.spec.arch,
                "arch_options": m.spec.arch_options,
                "dataset": m.spec.dataset,
                "classes": list(m.spec.classes),
                "global_labels": [offsets[m.spec.dataset] + position[c] for c in m.spec.classes],
                "heldout_acc": m.heldout_acc,
                "train_acc": m.train_acc,
                "weights_sha256": m.weights_sha256,
                "param_count": m.param_count,
                "train_seconds": info.get("train_seconds"),
                # None: built before member.json recorded them
                "train_threads": info.get("train_threads"),
                "train_device_name": info.get("train_device_name"),
                "train_numerics": info.get("train_numerics"),
                "torch": info.get("torch"),
                "spec": m.spec.to_json(),
            }
        )
    return {
        "name": cfg["name"],
        "key": zoo_key,
        "description": cfg.get("description", ""),
        "datasets": {name: d.content_hash for name, d in sorted(datasets.items())},
        "label_offsets": offsets,
        "image_size": members[0].spec.image_size,
        "channels": members[0].spec.channels,
        "members": rows,
    }


def manifest_path(zoo_key: str) -> Path:
    """Where the manifest of zoo ``zoo_key`` lives."""
    return cache_dir() / "zoos" / zoo_key / "manifest.json"


def load_or_build_zoo(
    cfg: Mapping[str, Any],
    dataset: ImageClassDataset,
    device: torch.device | str = "cpu",
    repair: bool = False,
    threads_by_arch: Mapping[str, int] | None = None,
    before_training: Callable[[str, list[int]], None] | None = None,
    numerics: str = "native",
    replace_native: bool = False,
) -> Zoo:
    """Load every member of the zoo ``cfg`` from the cache, training the missing ones (resumable).

    ``threads_by_arch``: see :func:`ensure_members`. ``before_training(zoo_key, missing indices)``
    is called when members are missing, before any is trained (it may raise to prevent it).
    ``numerics``, ``replace_native``: how missing members are trained (see :func:`ensure_members`).
    """
    device = torch.device(device)
    specs, datasets = zoo_specs(cfg, dataset)
    if before_training is not None:
        missing = [s.index for s in specs if not is_done(member_dir(s.key))]
        if missing:
            before_training(zoo_key_of(str(cfg["name"]), [s.key for s in specs]), missing)
    members, trained = ensure_members(
        cfg, specs, datasets, device, repair, threads_by_arch, numerics, replace_native
    )
    weak = [
        f"{m.spec.index} ({m.spec.arch}, {m.heldout_acc:.1f} %)"
        for m in members
        if near_chance(m.heldout_acc, len(m.spec.classes), m.spec.extra)
    ]
    if weak:  # also for members loaded from the cache (the build-time warning was printed once)
        log.warning(
            "zoo %s: %d of %d members hold out near chance: %s; see its card (dfml-zoo card %s)",
            cfg["name"],
            len(weak),
            len(members),
            ", ".join(weak),
            cfg["name"],
        )
    manifest = make_manifest(cfg, members, datasets)
    atomic_write_json(manifest_path(manifest["key"]), manifest)
    first = datasets[members[0].spec.dataset]
    run_norm = (tuple(dataset.mean), tuple(dataset.std))
    # A member is fed images in its *declared* dataset's normalisation: an untrusted 'foreign'
    # member claims the zoo's dataset (that is the scenario), so it is queried as one.
    for member in members:
        source = datasets.get(member.spec.dataset, dataset)
        member.input_map = input_map((tuple(source.mean), tuple(source.std)), run_norm, device)
    return Zoo(
        str(cfg["name"]),
        manifest["key"],
        "+".join(sorted(datasets)),
        spec_hash(manifest["datasets"]) if len(datasets) > 1 else first.content_hash,
        first.image_size,
        first.channels,
        members,
        manifest,
        tuple(dataset.mean),
        tuple(dataset.std),
        manifest["label_offsets"],
        trained,
    )
