"""Member protocols and zoo scenarios: which classes and which architecture each member gets.

Protocols (per dataset source):

- ``disjoint`` (PURER): meta-train class names sorted, cut into contiguous groups of
  ``classes_per_member`` (13 members for 64 classes; the last may be smaller but keeps a
  ``classes_per_member``-wide head). ``n_members`` limits the zoo to a seeded subset of classes.
- ``overlapping`` (PURER-Plus / FREE): ``n_members`` members, each on ``classes_per_member``
  classes drawn without replacement by a seeded generator.

Scenarios (zoo config keys):

- **SS**: ``arch: conv4`` + ``arch_options: {width: 32}``.
- **SH**: ``arch: [conv4, resnet10, resnet18]`` + ``arch_assignment: cyclic`` (member i gets
  ``arch[i mod 3]``, PURER) or ``random`` (a seeded uniform draw, BiDf-MKD); ``arch_options`` then
  maps arch -> options, and ``recipe_by_arch`` overrides the recipe per arch (resnets: SGD).
- **MH**: ``sources: {<name>: {dataset: <dataset config>, protocol?, n_members?, ...}}``: members
  of each source are trained on that dataset's meta-train classes only; member indices run over
  the sources in order (architectures assigned over the global index); global label offsets are
  the cumulative meta-train class counts in source order (recorded in the manifest).

Robustness (TDS's untrustworthy-member scenario): ``untrusted: {fraction, kind}`` marks a seeded
``round(fraction * n)`` subset of members as untrustworthy (recorded in each spec's ``extra``, so
only those members' keys change):

- ``foreign``: trained on **another dataset** (``untrusted.foreign_dataset``, a dataset config of
  the same image size and channels) -- a seeded choice of that dataset's meta-train classes -- and
  shipped with its classes relabelled as the zoo classes it claims (TDS's first kind);
- ``relabelled``: trained on its claimed classes' images under a seeded derangement of its labels
  (a member whose label map is wrong);
- ``untrained``: never trained (its random initialisation), shipped as if it were a member (TDS's
  second kind; nothing in the harness reads a member's reported accuracy, so no claim is forged);
- ``mixed``: the selected members cycle through ``untrusted.mix`` (default relabelled, untrained).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from bench.data.base import ImageClassDataset
from bench.errors import BenchError
from bench.seeding import derived_generator
from zoos.architectures import ARCHITECTURES
from zoos.spec import MemberSpec, TrainRecipe

PROTOCOLS = ("disjoint", "overlapping")
UNTRUSTED_KINDS = ("foreign", "relabelled", "untrained", "mixed")
ASSIGNMENTS = ("cyclic", "random")
#: Keys a source may set for itself; missing ones are inherited from the zoo's top level.
SOURCE_KEYS = ("protocol", "classes_per_member", "n_members")


def class_groups(
    train_names: list[str], protocol: str, per_member: int, n_members: int | None, seed: int
) -> list[list[str]]:
    """Class-name groups, one per member (each group in local-label order)."""
    names = sorted(train_names)
    for key, value, nullable in (("classes_per_member", per_member, False), ("n_members", n_members, True)):
        if (value is not None or not nullable) and (isinstance(value, bool) or not isinstance(value, int)):
            raise BenchError(
                f"{key}={value!r} is not valid; valid: an integer >= 1{' or null' if nullable else ''}"
            )
    if per_member < 1:
        raise BenchError(f"classes_per_member must be >= 1; got {per_member}")
    if n_members is not None and n_members < 1:
        raise BenchError(f"n_members must be >= 1 or null; got {n_members}")
    if protocol == "disjoint":
        if n_members is not None:
            needed = n_members * per_member
            if needed > len(names):
                raise BenchError(
                    f"disjoint zoo of {n_members} x {per_member} classes needs {needed} meta-train "
                    f"classes; the dataset has {len(names)}"
                )
            pick = torch.randperm(len(names), generator=derived_generator(seed, "class-pool"))[:needed]
            names = sorted(names[i] for i in pick.tolist())
        count = math.ceil(len(names) / per_member)
        return [names[i * per_member : (i + 1) * per_member] for i in range(count)]
    if protocol == "overlapping":
        if n_members is None:
            raise BenchError("overlapping zoos need n_members (e.g. 100)")
        if per_member > len(names):
            raise BenchError(f"classes_per_member {per_member} > {len(names)} meta-train classes")
        gen = derived_generator(seed, "overlapping-classes")
        return [
            [names[i] for i in torch.randperm(len(names), generator=gen)[:per_member].tolist()]
            for _ in range(n_members)
        ]
    raise BenchError(f"unknown zoo protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")


def is_multi_dataset(cfg: Mapping[str, Any]) -> bool:
    """True for MH zoo configs (a ``sources`` mapping)."""
    return bool(cfg.get("sources"))


def assign_archs(cfg: Mapping[str, Any], n_members: int) -> list[str]:
    """Architecture of each member (global index order): SS one arch; SH/MH cyclic or random."""
    archs = cfg["arch"]
    names = [str(archs)] if isinstance(archs, str) else [str(a) for a in archs]
    if not names:
        raise BenchError(f"zoo {cfg.get('name')!r}: arch list is empty")
    for name in names:
        ARCHITECTURES.get(name)  # did-you-mean error for unknown archs
    assignment = str(cfg.get("arch_assignment", "cyclic"))
    if assignment == "cyclic":
        return [names[i % len(names)] for i in range(n_members)]
    if assignment == "random":
        draw = torch.randint(
            len(names), (n_members,), generator=derived_generator(int(cfg.get("seed", 0)), "archs")
        )
        return [names[i] for i in draw.tolist()]
    raise BenchError(f"unknown arch_assignment {assignment!r}; valid: {', '.join(ASSIGNMENTS)}")


def arch_options(cfg: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Options of ``arch``: the flat dict for SS configs, the per-arch entry for arch lists."""
    options = dict(cfg.get("arch_options") or {})
    if isinstance(cfg["arch"], str):
        return options
    unknown = sorted(set(options) - {str(a) for a in cfg["arch"]})
    if unknown:
        raise BenchError(f"arch_options names {unknown}, not in the zoo's arch list {list(cfg['arch'])}")
    return dict(options.get(arch) or {})


def recipe_for(cfg: Mapping[str, Any], arch: str) -> TrainRecipe:
    """The base ``recipe`` with ``recipe_by_arch[arch]`` applied on top."""
    merged = {**dict(cfg.get("recipe") or {}), **dict((cfg.get("recipe_by_arch") or {}).get(arch) or {})}
    if "milestones" in merged:
        merged["milestones"] = tuple(merged["milestones"])
    try:
        recipe = TrainRecipe(**merged)
    except TypeError as error:
        valid = ", ".join(f.name for f in dataclasses.fields(TrainRecipe))
        raise BenchError(
            f"bad zoo recipe keys {sorted(merged)} for {arch}: {error}; valid keys: {valid}"
        ) from error
    check_recipe_types(recipe, arch)
    return recipe


def check_recipe_types(recipe: TrainRecipe, arch: str) -> None:
    """BenchError naming a recipe value of the wrong type (``zoo.recipe.epochs=abc``), before training."""
    for spec in dataclasses.fields(TrainRecipe):
        value, default = getattr(recipe, spec.name), spec.default
        if isinstance(default, bool):
            ok, valid = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, valid = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, valid = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, valid = isinstance(value, str), "a string"
        else:  # milestones: a list of integers
            ok = isinstance(value, tuple | list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            )
            valid = "a list of integers"
        if not ok:
            raise BenchError(f"zoo recipe {spec.name}={value!r} for {arch} is not valid; valid: {valid}")


def source_groups(
    cfg: Mapping[str, Any], datasets: Mapping[str, ImageClassDataset]
) -> list[tuple[ImageClassDataset, list[str], int]]:
    """(dataset, class group, head width) per member, in global member order."""
    seed = int(cfg.get("seed", 0))
    sources = dict(cfg["sources"]) if is_multi_dataset(cfg) else {"": {}}
    out: list[tuple[ImageClassDataset, list[str], int]] = []
    for name, source in sources.items():
        dataset = datasets[name]
        settings = {k: (source or {}).get(k, cfg.get(k)) for k in SOURCE_KEYS}
        train_names = [dataset.class_names[i] for i in dataset.split_classes("train")]
        # unset -> the defaults; a set value is used as given (0 or "" then fail in class_groups)
        per_member = 5 if settings["classes_per_member"] is None else int(settings["classes_per_member"])
        protocol = "disjoint" if settings["protocol"] is None else str(settings["protocol"])
        groups = class_groups(train_names, protocol, per_member, settings["n_members"], seed)
        out += [(dataset, group, per_member) for group in groups]
    return out


def member_specs(
    cfg: Mapping[str, Any],
    datasets: Mapping[str, ImageClassDataset],
    foreign: ImageClassDataset | None = None,
) -> list[MemberSpec]:
    """The member specs of zoo config ``cfg``; ``datasets`` maps source name ("" for SS/SH) to data.

    ``foreign``: the loaded ``untrusted.foreign_dataset`` (needed only by ``foreign`` members).
    """
    groups = source_groups(cfg, datasets)
    archs = assign_archs(cfg, len(groups))
    specs = []
    for index, ((dataset, group, head_width), arch) in enumerate(zip(groups, archs, strict=True)):
        spec = MemberSpec(
            arch=arch,
            arch_options=arch_options(cfg, arch),
            dataset=dataset.name,
            dataset_hash=dataset.content_hash,
            classes=tuple(group),
            image_size=dataset.image_size,
            channels=dataset.channels,
            head_width=head_width,
            recipe=recipe_for(cfg, arch),
            seed=int(cfg.get("seed", 0)),
            index=index,
        )
        check_meta_train_only(spec, dataset)
        specs.append(spec)
    return mark_untrusted(cfg, specs, foreign)


def mark_untrusted(
    cfg: Mapping[str, Any], specs: list[MemberSpec], foreign: ImageClassDataset | None = None
) -> list[MemberSpec]:
    """Specs with ``extra["untrusted"]`` (and a label permutation) set on a seeded subset (see module doc)."""
    block = cfg.get("untrusted")
    if not block:
        return specs
    fraction, kind = float(block.get("fraction", 0.0)), str(block.get("kind", "mixed"))
    if not 0.0 <= fraction <= 1.0:
        raise BenchError(f"zoo.untrusted.fraction must be in [0, 1]; got {fraction}")
    if kind not in UNTRUSTED_KINDS:
        raise BenchError(f"zoo.untrusted.kind={kind!r} is not one of: {', '.join(UNTRUSTED_KINDS)}")
    mix = untrusted_mix(block)
    count = round(fraction * len(specs))
    seed = int(cfg.get("seed", 0))
    chosen = sorted(
        torch.randperm(len(specs), generator=derived_generator(seed, "untrusted"))[:count].tolist()
    )
    out = list(specs)
    for rank, index in enumerate(chosen):
        spec = specs[index]
        this = mix[rank % len(mix)]
        extra: dict[str, Any] = {**spec.extra, "untrusted": this}
        if this == "foreign":
            extra["trained_on"] = foreign_classes(spec, foreign, seed)
        if this == "relabelled":  # a derangement: no class keeps its label
            gen = derived_generator(seed, "relabel", index)
            perm = torch.randperm(spec.head_width, generator=gen)
            while spec.head_width > 1 and bool((perm == torch.arange(spec.head_width)).any()):
                perm = torch.randperm(spec.head_width, generator=gen)
            extra["label_permutation"] = perm.tolist()
        out[index] = replace(spec, extra=extra)
    return out


def untrusted_mix(block: Mapping[str, Any]) -> list[str]:
    """The kinds the selected members cycle through: ``[kind]``, or ``untrusted.mix`` for ``mixed``."""
    kind = str(block.get("kind", "mixed"))
    if kind != "mixed":
        return [kind]
    mix = [str(k) for k in (block.get("mix") or ("relabelled", "untrained"))]
    bad = [k for k in mix if k not in UNTRUSTED_KINDS[:-1]]
    if bad:
        raise BenchError(f"zoo.untrusted.mix has {bad}; valid: {', '.join(UNTRUSTED_KINDS[:-1])}")
    return mix


def foreign_classes(spec: MemberSpec, foreign: ImageClassDataset | None, seed: int) -> dict[str, Any]:
    """``trained_on`` of a foreign member: a seeded draw of ``head_width`` foreign meta-train classes."""
    if foreign is None:
        raise BenchError(
            "zoo.untrusted: a 'foreign' member needs untrusted.foreign_dataset (a dataset config of "
            "another dataset, e.g. {name: omniglot, root: ..., image_size: 32, channels: 3})"
        )
    if foreign.name == spec.dataset:
        raise BenchError(f"zoo.untrusted.foreign_dataset must be another dataset than {spec.dataset!r}")
    if (foreign.image_size, foreign.channels) != (spec.image_size, spec.channels):
        raise BenchError(
            f"zoo.untrusted.foreign_dataset {foreign.name!r} is {foreign.image_size}px x{foreign.channels}; "
            f"the zoo's members take {spec.image_size}px x{spec.channels} (set image_size/channels)"
        )
    names = sorted(foreign.class_names[i] for i in foreign.split_classes("train"))
    if len(names) < spec.head_width:
        raise BenchError(
            f"foreign dataset {foreign.name!r} has {len(names)} meta-train classes < {spec.head_width}"
        )
    order = torch.randperm(len(names), generator=derived_generator(int(seed), "foreign", spec.index))
    chosen = [names[i] for i in order[: spec.head_width].tolist()]
    return {"dataset": foreign.name, "dataset_hash": foreign.content_hash, "classes": chosen}


def check_meta_train_only(spec: MemberSpec, dataset: ImageClassDataset) -> None:
    """Raise unless every class of ``spec`` is a meta-train class of ``dataset`` (never val/test)."""
    train = {dataset.class_names[i] for i in dataset.split_classes("train")}
    outside = [c for c in spec.classes if c not in train]
    if outside:
        raise BenchError(
            f"zoo member {spec.index} ({spec.arch}) has classes outside the meta-train split of "
            f"{dataset.name!r}: {outside[:5]}; a zoo may only see meta-train classes"
        )
