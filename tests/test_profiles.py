"""A record's profile label describes the schedule that ran (bench.profiles, purer's paper check)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from bench.app import with_method_overrides
from bench.errors import BenchError
from bench.profiles import check_profile

PAPER_EXPERIMENTS = ["paper_ss_cifar_fs", "paper_ss_mini", "paper_sh_cifar_fs", "paper_mh"]


def _cfg(overrides: list[str]):
    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    return with_method_overrides(cfg)


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_every_method_a_paper_experiment_sweeps_runs_the_paper_schedule(experiment):
    swept = _cfg([f"experiment={experiment}"]).hydra.sweeper.params["method"].split(",")
    for method in swept:
        cfg = _cfg([f"experiment={experiment}", f"method={method}"])
        check_profile(cfg)
        if "meta_iterations" in cfg.method:
            assert cfg.method.meta_iterations == 60000, method


def test_cpu_profile_runs_pass():
    for method in ("random_init", "dfmaml", "purer", "tds"):
        check_profile(_cfg([f"method={method}"]))


def test_paper_label_on_a_cpu_purer_schedule_is_refused():
    with pytest.raises(BenchError, match=r"method purer has profile 'cpu' but the run's profile is 'paper'"):
        check_profile(_cfg(["method=purer", "profile=paper"]))


def test_paper_experiment_without_a_schedule_for_the_method_is_refused():
    # paper_ss_cifar_fs declares no dfmaml schedule: it would run 2000 iterations labelled paper
    with pytest.raises(BenchError, match=r"no paper schedule for dfmaml .* 2000 meta-iterations"):
        check_profile(_cfg(["experiment=paper_ss_cifar_fs", "method=dfmaml"]))
    # an override of something else is not a schedule
    with pytest.raises(BenchError, match=r"no paper schedule for tds"):
        check_profile(_cfg(["experiment=paper_sh_cifar_fs", "method=tds", "+method_overrides.tds.ngf=64"]))
    check_profile(  # declaring the length is
        _cfg(["experiment=paper_sh_cifar_fs", "method=tds", "+method_overrides.tds.meta_iterations=60000"])
    )


def test_budget_may_not_shorten_a_paper_run():
    cfg = _cfg(["experiment=paper_sh_cifar_fs", "method=dfmaml", "budget.meta_iterations=10"])
    with pytest.raises(BenchError, match=r"budget.meta_iterations=10 shortens the paper schedule"):
        check_profile(cfg)


def test_a_clock_budget_may_not_cut_a_paper_run_short():
    cfg = _cfg(["experiment=paper_sh_cifar_fs", "method=dfmaml", "budget.max_seconds=60"])
    with pytest.raises(BenchError, match=r"budget.max_seconds=60 can cut the paper schedule short"):
        check_profile(cfg)


def test_a_budget_on_a_method_without_meta_training_is_not_a_paper_concern():
    check_profile(_cfg(["experiment=paper_ss_cifar_fs", "method=random_init", "budget.meta_iterations=10"]))


def test_unknown_profile_names_the_valid_ones():
    with pytest.raises(BenchError, match=r"profile 'fast' unknown; valid: cpu, paper"):
        check_profile(_cfg(["method=random_init", "profile=fast"]))


def test_the_command_line_may_not_change_a_declared_paper_schedule():
    argv = ["experiment=paper_ss_cifar_fs", "method=purer", "method_overrides.purer.meta_iterations=5"]
    with pytest.raises(
        BenchError, match=r"changes the schedule experiment paper_ss_cifar_fs declares .*=60000"
    ):
        check_profile(_cfg(argv), argv)
    argv = ["experiment=paper_ss_cifar_fs", "method=purer", "method_overrides.purer.adv.start=10"]
    with pytest.raises(BenchError, match=r"method_overrides.purer.adv.start=4000"):
        check_profile(_cfg(argv), argv)
    # declaring one for a method the experiment has none for stays possible
    argv = ["experiment=paper_sh_cifar_fs", "method=tds", "+method_overrides.tds.meta_iterations=60000"]
    check_profile(_cfg(argv), argv)
