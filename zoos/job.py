"""``dfml-zoo-job``: a Hydra app that builds zoo members, one member per job (see conf/zoo_job.yaml).

Members are independent: a multirun over ``member`` with the joblib launcher builds them in
parallel on one machine, with the submitit launcher as SLURM jobs. Each job trains its member only
if the cache lacks it (atomic per-member directories, so concurrent jobs never see partial files).
``numerics=portable`` trains as ``dfml-zoo build --numerics portable`` does (``zoos.numerics``).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from bench.atomic import is_done
from bench.data import load_dataset
from bench.errors import BenchError
from bench.overrides import check_group_overrides
from bench.paths import cache_dir
from bench.signals import exit_on_sigterm, interrupted
from bench.threads import set_threads
from bench.timing import resolve_device
from zoos.cli import source_dataset_settings
from zoos.numerics import check_numerics, enable_portable_numerics
from zoos.zoo import build_member, member_numerics_of, zoo_specs

log = logging.getLogger(__name__)


def job_dataset_config(cfg: DictConfig) -> dict:
    """``cfg.dataset`` with an MH source's own settings (e.g. ``mh_paper``'s 84 px), as ``dfml-zoo build``."""
    settings = OmegaConf.to_container(cfg.dataset, resolve=True)
    return {**settings, **source_dataset_settings(cfg, str(cfg.dataset.name))}


def run_job(cfg: DictConfig) -> list[int]:
    """Build member ``cfg.member`` (or every missing member); returns the indices trained."""
    numerics = str(cfg.get("numerics", "native"))
    check_numerics(numerics)
    if numerics == "portable":  # before this process's first matrix product
        enable_portable_numerics()
    set_threads(cfg.threads)
    zoo_cfg = OmegaConf.to_container(cfg.zoo, resolve=True)
    dataset = load_dataset(job_dataset_config(cfg))
    specs, datasets = zoo_specs(zoo_cfg, dataset)
    if cfg.member is not None and not 0 <= int(cfg.member) < len(specs):
        raise BenchError(
            f"member={cfg.member} out of range: zoo {cfg.zoo.name!r} has members 0..{len(specs) - 1}"
        )
    chosen = specs if cfg.member is None else [specs[int(cfg.member)]]
    device = resolve_device(str(cfg.device.name), bool(cfg.device.get("tf32", False)))
    trained = []
    for spec in chosen:
        if is_done(cache_dir() / "zoo_members" / spec.key):
            cached = member_numerics_of(spec)
            if numerics == "portable" and cached != "portable":
                raise BenchError(
                    f"zoo {cfg.zoo.name} member {spec.index} ({spec.key}) is cached from a {cached} "
                    "build; a portable job does not reuse it (`dfml-zoo build --numerics portable "
                    "--replace-native` retrains such members, or use another DFML_CACHE)"
                )
            log.info("zoo %s member %d: cached", cfg.zoo.name, spec.index)
            continue
        build_member(spec, datasets[spec.training_dataset], device, numerics)
        trained.append(spec.index)
        log.info("zoo %s member %d (%s): trained", cfg.zoo.name, spec.index, spec.arch)
    return trained


@hydra.main(version_base="1.3", config_path="pkg://bench.conf", config_name="zoo_job")
def _main(cfg: DictConfig) -> None:
    try:
        run_job(cfg)
    except BenchError as error:
        raise SystemExit(f"dfml-zoo-job: error: {error}") from None


def main() -> None:
    """Console entry point."""
    exit_on_sigterm()
    try:
        check_group_overrides(sys.argv[1:])  # a did-you-mean instead of Hydra's 20-line dump
    except BenchError as error:
        raise SystemExit(f"dfml-zoo-job: error: {error}") from None
    try:
        _main()
    except KeyboardInterrupt:
        raise interrupted("dfml-zoo-job") from None
