"""Zoo cards: a Markdown summary of a zoo manifest (members per arch / dataset, accuracy, build time)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from zoos.train import NEAR_CHANCE, near_chance


def scenario(manifest: dict[str, Any]) -> str:
    """SS, SH or MH from the members' datasets and architectures."""
    datasets = {m["dataset"] for m in manifest["members"]}
    archs = {m["arch"] for m in manifest["members"]}
    if len(datasets) > 1:
        return "MH"
    return "SH" if len(archs) > 1 else "SS"


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}" if values else "n/a"
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (
        f"mean {statistics.fmean(values):.1f}, min {min(values):.1f}, q1 {q1:.1f}, median {median:.1f}, "
        f"q3 {q3:.1f}, max {max(values):.1f}"
    )


def render_card(manifest: dict[str, Any], builds: list[dict[str, Any]]) -> str:
    """Markdown card of ``manifest``; ``builds`` = the build log (wall time per ``dfml-zoo build``)."""
    members = manifest["members"]
    lines = [
        f"# Zoo card: {manifest['name']}",
        "",
        manifest.get("description", ""),
        "",
        f"- key: `{manifest['key']}`; scenario: **{scenario(manifest)}**; {len(members)} members; "
        f"input {manifest['image_size']} px x {manifest['channels']} channels",
        "- datasets (content hash): "
        + ", ".join(f"{name} (`{digest[:12]}`)" for name, digest in manifest["datasets"].items()),
        "- global label offsets: " + ", ".join(f"{k} {v}" for k, v in manifest["label_offsets"].items()),
        "",
        "## Members per architecture and dataset",
        "",
        "| arch | dataset | members | parameters (each) | held-out acc % (mean) |",
        "|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for member in members:
        groups.setdefault((member["arch"], member["dataset"]), []).append(member)
    for (arch, dataset), rows in sorted(groups.items()):
        params = sorted({r["param_count"] for r in rows})
        accs = [r["heldout_acc"] for r in rows]
        lines.append(
            f"| {arch} | {dataset} | {len(rows)} | {', '.join(f'{p:,}' for p in params)} | "
            f"{statistics.fmean(accs):.1f} |"
        )
    accs = [m["heldout_acc"] for m in members]
    seconds = [m["train_seconds"] for m in members if m.get("train_seconds") is not None]
    lines += [
        "",
        "## Held-out accuracy (per member, 20% per-class holdout)",
        "",
        _quantiles(accs),
        "",
        _near_chance_line(members),
        "",
        "## Build time",
        "",
        f"- member training, summed: {sum(seconds) / 60:.1f} min over {len(seconds)} members "
        f"(median {statistics.median(seconds) if seconds else float('nan'):.1f} s per member)",
    ]
    for build in builds:
        lines.append(
            f"- `dfml-zoo build` on {build['finished_at']}: {build['wall_s'] / 60:.1f} min wall, "
            f"{build['trained']} members trained, {build['loaded']} loaded from cache, "
            f"device {build['device']} ({build['machine']}"
            + (
                ", by arch: " + ", ".join(f"{a} {n}" for a, n in build["threads_by_arch"].items())
                if build.get("threads_by_arch")
                else ""
            )
            + (f", {build['numerics']} numerics" if build.get("numerics") else "")
            + ")"
        )
    lines.append(_threads_line(members))
    classes = Counter(c for m in members for c in m["classes"])
    lines += [
        "",
        "## Classes",
        "",
        f"{len(classes)} distinct classes; each held by {min(classes.values())}-{max(classes.values())} "
        "members. Member list (index: arch, dataset, held-out %, classes):",
        "",
    ]
    for m in members:
        shown = ", ".join(m["classes"][:5]) + (" ..." if len(m["classes"]) > 5 else "")
        extra = m.get("spec", {}).get("extra") or {}
        flag, trained_on = extra.get("untrusted"), (extra.get("trained_on") or {}).get("dataset")
        marker = f" **untrusted: {flag}**" if flag else ""
        marker += f" (trained on {trained_on}; held-out % on its own classes)" if trained_on else ""
        lines.append(
            f"- {m['index']}: {m['arch']}, {m['dataset']}, {m['heldout_acc']:.1f} %{marker}: {shown}"
        )
    return "\n".join(lines) + "\n"


def _near_chance_line(members: list[dict[str, Any]]) -> str:
    """Members at or below ``NEAR_CHANCE`` x chance (shipped-untrained untrusted members aside)."""
    flagged = [
        f"{m['index']} ({m['arch']}, {m['heldout_acc']:.1f} %)"
        for m in members
        if near_chance(m["heldout_acc"], len(m["classes"]), m.get("spec", {}).get("extra"))
    ]
    chance = f"held-out at most {NEAR_CHANCE} x chance"
    if not flagged:
        return f"Members near chance ({chance}): none."
    return (
        f"**Members near chance ({chance}): {', '.join(flagged)}.** Their logits and BN statistics "
        "carry little for inversion or distillation; see the zoo's recipe_by_arch."
    )


def _threads_line(members: list[dict[str, Any]]) -> str:
    """At how many torch threads each architecture's members trained, and on what (weights depend on it)."""
    by_arch: dict[str, Counter] = {}
    for m in members:
        by_arch.setdefault(m["arch"], Counter())[m.get("train_threads")] += 1
    parts = []
    for arch, counts in by_arch.items():
        known = [
            f"{n} at {t} thread{'s' if t != 1 else ''}"
            for t, n in sorted((t, n) for t, n in counts.items() if t)
        ]
        if None in counts:
            known.append(f"{counts[None]} not recorded (built before member.json kept it)")
        parts.append(f"{arch}: {', '.join(known)}")
    hosts = sorted(
        {f"{m.get('train_device_name')}, torch {m.get('torch')}" for m in members if m.get("torch")}
    )
    where = f" on {'; '.join(hosts)}" if hosts else ""
    numerics = Counter(m.get("train_numerics") or "native" for m in members)
    return (
        f"- members trained{where}: {'; '.join(parts)}; numerics: "
        + ", ".join(f"{mode} {n}" for mode, n in sorted(numerics.items()))
        + ". A retrain reproduces a member's weights bit for bit at its thread count and torch: "
        "a native member only on the same CPU, a portable one on any x86-64 CPU with AVX2 (emulated "
        "on one host so far; `dfml-zoo build --threads N --threads-by-arch arch=N --numerics portable`)."
    )
