"""Leaderboard plots (matplotlib, Agg): accuracy per method with 95% CI bars, per setting.

``<experiment>.png`` sits next to ``<experiment>.{csv,md}``; one panel per (dataset, zoo, profile)
and task, bars = methods (oracles hatched), one bar group per readout. Accuracy against zoo size is
drawn when the table spans several zoos of one dataset (the scale experiment).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.atomic import atomic_save  # noqa: E402


def accuracy_figure(table: pd.DataFrame, title: str) -> plt.Figure:
    """Bar chart of ``acc_mean`` ± ``acc_ci95`` of a tidy leaderboard table."""
    panels = list(table.groupby(["dataset", "zoo", "profile", "task"], sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, ((dataset, zoo, profile, task), part) in zip(axes[0], panels, strict=True):
        methods = list(dict.fromkeys(part["method"]))
        readouts = sorted(set(part["test_steps"]))
        width = 0.8 / len(readouts)
        for j, steps in enumerate(readouts):
            rows = part[part["test_steps"] == steps].set_index("method").reindex(methods)
            xs = [i + j * width for i in range(len(methods))]
            bars = ax.bar(
                xs, rows["acc_mean"], width, yerr=rows["acc_ci95"], capsize=3, label=f"{steps} step(s)"
            )
            for bar, data_free in zip(bars, rows["data_free"].fillna(True), strict=True):
                if not data_free:
                    bar.set_hatch("//")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(methods))], methods, rotation=35, ha="right")
        ax.set_ylabel("query accuracy (%)")
        ax.set_title(f"{dataset} · {zoo}\n{task} · profile {profile}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: mean ± 95% CI (hatched = oracle, real data)", fontsize=10)
    fig.tight_layout()
    return fig


def scale_figure(table: pd.DataFrame, zoo_sizes: dict[str, int], title: str) -> plt.Figure:
    """Accuracy (primary readout = most steps) against the number of zoo members, per method."""
    fig, ax = plt.subplots(figsize=(5, 4))
    steps = max(table["test_steps"])
    part = table[table["test_steps"] == steps].assign(members=table["zoo"].map(zoo_sizes))
    for (method, task), rows in part.sort_values("members").groupby(["method", "task"]):
        ax.errorbar(
            rows["members"],
            rows["acc_mean"],
            yerr=rows["acc_ci95"],
            marker="o",
            capsize=3,
            label=f"{method} {task}",
        )
    ax.set_xlabel("zoo members")
    ax.set_ylabel(f"query accuracy (%), {steps} steps")
    ax.set_title(f"{title}: accuracy vs zoo size", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
