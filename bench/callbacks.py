"""Hydra callbacks: create the MLflow store before jobs start; print the leaderboard at the end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bench.paths import resolve_results_dir

log = logging.getLogger(__name__)


class LeaderboardCallback(Callback):
    """Before: create the tracking store once (parallel first creation fails). After: collect."""

    def _prepare(self, config: DictConfig) -> None:
        from bench.tracking import ensure_store, tracking_uri

        if config.tracking.name == "none":
            return
        results = resolve_results_dir(config.paths.results)
        uri = tracking_uri(config.tracking.uri, results)
        try:
            ensure_store(uri)
        except Exception as error:  # noqa: BLE001 - an unreachable server must not stop the runs
            log.warning("MLflow tracking store %s not available (%s); records are still written", uri, error)

    def _collect(self, config: DictConfig) -> None:
        from bench.collect import collect_experiment

        results = Path(config.paths.results).expanduser().resolve()
        _, markdown = collect_experiment(
            results, str(config.experiment.name), str(config.experiment.get("reference", "random_init"))
        )
        print(markdown, flush=True)
        if config.tracking.name != "none":
            from bench.tracking import log_leaderboard, tracking_uri

            name = str(config.experiment.name)
            folder = results / "leaderboards"
            files = [folder / f"{name}{suffix}" for suffix in (".md", ".csv", ".png", "_scale.png")]
            log_leaderboard(tracking_uri(config.tracking.uri, results), name, files)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Single run: prepare the store."""
        self._prepare(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Sweep: prepare the store once, in the parent process."""
        self._prepare(config)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Single run: rebuild and print the experiment's leaderboard."""
        self._collect(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Sweep: rebuild and print the experiment's leaderboard."""
        self._collect(config)
