"""Every config composes; every method YAML validates against its class's Config."""

from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from bench.errors import BenchError
from bench.method import METHODS, validate_method_config
from bench.overrides import GROUPS, check_group_overrides, group_options


def _compose(overrides: list[str]):
    with initialize_config_module("bench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    "override",
    [f"{group}={option}" for group in GROUPS for option in group_options(group)],
)
def test_every_group_option_composes(override):
    cfg = _compose([override])
    for key in cfg:  # every interpolation resolves (hydra's own node needs a running app)
        if key == "hydra":
            continue
        value = cfg[key]  # resolves a top-level interpolation
        if OmegaConf.is_config(value):
            OmegaConf.to_container(value, resolve=True)
    group, option = override.split("=")
    assert cfg.hydra.runtime.choices[group] == option


def test_default_config_is_the_default_experiment():
    cfg = _compose([])
    assert cfg.experiment.name == "default"
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"method": "random_init,weight_average", "task": "5w1s,5w5s"}
    assert cfg.dataset.name == "glyphs" and cfg.zoo.name == "glyphs_ss_conv4"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_yaml_validates(name):
    cfg = _compose([f"method={name}"])
    validated = validate_method_config(METHODS.get(name), OmegaConf.to_container(cfg.method))
    assert validated.name == name


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["method=weight_avrage"], r"unknown method 'weight_avrage'; did you mean 'weight_average'"),
        (["dataset=glyph"], r"unknown dataset 'glyph'; did you mean 'glyphs'"),
        (["task=5w2s"], r"unknown task '5w2s'; did you mean"),
        (["method=random_init,purer9"], r"unknown method 'purer9'"),
        (["+experiment=defualt"], r"unknown experiment 'defualt'; did you mean 'default'"),
        (["zoo=glyphs_ss"], r"unknown zoo 'glyphs_ss'; did you mean .*'glyphs_ss_conv4'"),
    ],
)
def test_unknown_group_options_get_did_you_mean(argv, pattern):
    with pytest.raises(BenchError, match=pattern):
        check_group_overrides(argv)


def test_valid_and_non_group_overrides_pass():
    check_group_overrides(
        [
            "method=random_init,weight_average",
            "seed=3",
            "task.n_episodes=10",
            "method=choice(random_init)",
            "hydra.mode=RUN",
        ]
    )


def test_method_overrides_reach_only_their_method_and_equal_a_command_line_override():
    from hydra import compose, initialize_config_module

    from bench.app import run_identity, with_method_overrides
    from bench.hashing import spec_hash

    device = torch.device("cpu")
    with initialize_config_module("bench.conf", version_base="1.3"):
        swept = compose("config", overrides=["experiment=omniglot", "method=purer"])
        explicit = compose(
            "config",
            overrides=["experiment=omniglot", "method=purer", "method.synthesis.teachers_per_step=13"],
        )
        other = compose("config", overrides=["experiment=omniglot", "method=random_init"])
    merged = with_method_overrides(swept)
    assert merged.method.synthesis.teachers_per_step == 13
    assert spec_hash(run_identity(merged, device)) == spec_hash(run_identity(explicit, device))
    assert with_method_overrides(other).method == other.method


@pytest.mark.parametrize("experiment", sorted(group_options("experiment")))
def test_every_experiment_composes_with_known_methods(experiment):
    from hydra import compose, initialize_config_module

    from bench.method import METHODS

    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    methods = str(params.get("method", cfg.method.name)).split(",")
    assert set(methods) <= set(METHODS.names()), methods
    assert set(cfg.get("method_overrides") or {}) <= set(METHODS.names())


def test_paper_block_prints_paper_ours_delta():
    from bench.collect import experiment_paper_block
    from bench.leaderboard import paper_comparison, tidy_table
    from tests.fixtures.make_leaderboard_fixture import fixture_records

    block = experiment_paper_block("paper_ss_cifar_fs")
    assert block["results"]["purer"]["5w1s"] == [38.66, 0.78] and block["readout"] == 1
    records = fixture_records()  # cpu-profile records: never set against published numbers
    assert "| random_init | 5w1s | 28.59 ± 0.56 | X | — |" in paper_comparison(tidy_table(records), block)
    for record in records:
        record.setting["profile"] = "paper"
    text = paper_comparison(tidy_table(records), block)
    assert "**unverified**" in text and "| purer | 5w1s | 38.66 ± 0.78 | X | — |" in text
    assert re.search(
        r"\| random_init \| 5w1s \| 28.59 ± 0.56 \| \d+\.\d\d ± \d+\.\d\d \| [+-]\d+\.\d\d \|", text
    )


def test_a_method_code_version_enters_only_that_methods_run_keys(monkeypatch):
    from hydra import compose, initialize_config_module

    from bench.app import run_identity
    from bench.hashing import spec_hash
    from bench.method import METHODS

    device = torch.device("cpu")
    with initialize_config_module("bench.conf", version_base="1.3"):
        tds = compose("config", overrides=["experiment=omniglot", "method=tds"])
        average = compose("config", overrides=["experiment=omniglot", "method=weight_average"])
    assert run_identity(tds, device)["method_code_version"] == METHODS.get("tds").code_version >= 2
    assert "method_code_version" not in run_identity(average, device)  # version 1: keys as before
    before = spec_hash(run_identity(tds, device))
    monkeypatch.setattr(METHODS.get("tds"), "code_version", METHODS.get("tds").code_version + 1)
    assert spec_hash(run_identity(tds, device)) != before


def test_meta_training_checkpoints_are_keyed_by_the_zoo_weights(tmp_path):
    """A rebuilt zoo (same config, other weights) never resumes the old build's checkpoint."""
    from hydra import compose, initialize_config_module

    from bench.app import meta_train_dir, run_identity
    from bench.method import METHODS

    device = torch.device("cpu")
    with initialize_config_module("bench.conf", version_base="1.3"):
        purer, ablation = (
            compose("config", overrides=["experiment=glyphs_sh", f"method={m}"])
            for m in ("purer", "purer_no_icfil")
        )
    build_a, build_b = "a" * 64, "b" * 64
    directory = meta_train_dir(tmp_path, run_identity(purer, device), METHODS.get("purer"), build_a)
    assert directory.parent == tmp_path / "meta_train"
    assert directory != meta_train_dir(tmp_path, run_identity(purer, device), METHODS.get("purer"), build_b)
    shared = meta_train_dir(tmp_path, run_identity(ablation, device), METHODS.get("purer_no_icfil"), build_a)
    assert shared == directory  # the ablation still shares the full method's training on one build


@pytest.mark.parametrize(
    ("override", "changes_key"),
    [
        # settings that do not change the numbers: the same run (a relaunch finds it finished)
        ("threads=2", False),
        ("tracking=none", False),
        ("force=true", False),
        ("paths.results=/elsewhere", False),
        ("method.description=another", False),
        # settings that do
        ("seed=1", True),
        ("eval.limit=10", True),
        ("task.test_steps=[1,5]", True),
        ("method.inner_lr=0.02", True),
        ("task=5w5s", True),
        ("budget.meta_iterations=7", True),
        ("zoo.n_members=3", True),
    ],
)
def test_what_enters_a_run_key_and_what_does_not(override, changes_key):
    from bench.app import run_identity
    from bench.hashing import spec_hash

    base = ["method=random_init", "task=5w1s"]
    device = torch.device("cpu")
    with initialize_config_module("bench.conf", version_base="1.3"):
        plain = compose("config", overrides=base)
        changed = compose("config", overrides=[*base, override])
    same = spec_hash(run_identity(plain, device)) == spec_hash(run_identity(changed, device))
    assert same != changes_key


def test_the_device_type_enters_the_run_key():
    from bench.app import run_identity
    from bench.hashing import spec_hash

    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["method=random_init", "task=5w1s"])
    assert spec_hash(run_identity(cfg, torch.device("cpu"))) != spec_hash(
        run_identity(cfg, torch.device("cuda"))
    )


def test_every_seed_of_a_cell_is_scored_on_the_same_episode_suite():
    """The suite seed is the task's, not derived from ``seed``: seeds pool over the same episodes."""
    with initialize_config_module("bench.conf", version_base="1.3"):
        seeds = [compose("config", overrides=["method=random_init", f"seed={s}"]) for s in (0, 1, 7)]
    assert len({int(cfg.task.suite_seed) for cfg in seeds}) == 1
    assert len({int(cfg.seed) for cfg in seeds}) == 3


@pytest.mark.parametrize("experiment", ["mh_glyphs_omniglot", "paper_mh"])
def test_mh_experiments_give_the_meta_model_a_global_pool(experiment):
    from bench.app import meta_model_global_pool, run_identity

    device = torch.device("cpu")
    with initialize_config_module("bench.conf", version_base="1.3"):
        mh = compose("config", overrides=[f"experiment={experiment}", "method=purer"])
        ss = compose("config", overrides=["experiment=glyphs_all", "method=purer"])
        bad = compose("config", overrides=["experiment=glyphs_all", "meta_model.global_pool=maybe"])
    assert meta_model_global_pool(mh) and not meta_model_global_pool(ss)
    assert run_identity(mh, device)["meta_model"] == {"global_pool": True}
    assert "meta_model" not in run_identity(ss, device)  # keys of SS / SH runs stay as they were
    with pytest.raises(BenchError, match=r"meta_model.global_pool='maybe' is not valid; valid: true, false"):
        meta_model_global_pool(bad)


def test_fresh_meta_model_follows_the_run_unless_told():
    from bench.method import MethodContext
    from zoos.meta_model import fresh_meta_model

    pooled = MethodContext(5, 1, 32, 3, torch.device("cpu"), 0, global_pool=True)
    plain = MethodContext(5, 1, 32, 3, torch.device("cpu"), 0)
    assert isinstance(fresh_meta_model(pooled, 32).pool, torch.nn.AdaptiveMaxPool2d)
    assert fresh_meta_model(pooled, 32).head.in_features == 32  # 32 channels x 1 x 1
    assert fresh_meta_model(plain, 32).head.in_features == 128  # 32 channels x 2 x 2 at 32 px
    assert fresh_meta_model(pooled, 32, global_pool=False).head.in_features == 128  # members' shape wins
    x = torch.randn(4, 3, 32, 32)
    assert fresh_meta_model(pooled, 32)(x).shape == (4, 5)


def _train_dir(*overrides: str) -> str:
    """The meta-training directory key of ``experiment=smoke method=purer`` with ``overrides``."""
    from pathlib import Path

    import bench.app as app

    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "method=purer", *overrides])
    identity = app.run_identity(app.with_method_overrides(cfg), torch.device("cpu"))
    return app.meta_train_dir(Path("r"), identity, METHODS.get(str(cfg.method.name)), "weights").name


@pytest.mark.parametrize(
    "override",
    ["seed=1", "method.inner_lr=0.02", "budget.meta_iterations=7", "task.k_shot=5", "method.adv.scale=1.0"],
)
def test_a_setting_that_changes_training_changes_the_meta_training_directory(override):
    assert _train_dir(override) != _train_dir()


@pytest.mark.parametrize(
    "override",
    [
        "eval.limit=3",
        "task.n_episodes=50",
        "task.test_steps=[10]",
        "method.icfil.inversion_steps=7",
        "method=purer_no_icfil",
    ],
)
def test_an_evaluation_only_setting_shares_the_meta_training(override):
    assert _train_dir(override) == _train_dir()
