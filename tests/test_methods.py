"""The method contract, run over the whole registry on a tiny zoo."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

import bench.learners.episodic as episodic
from bench.app import attach_real_data
from bench.data import forbid_real_data
from bench.errors import BenchError, DataFreeViolation
from bench.method import METHODS, Budget, Learner, MethodContext, validate_method_config
from bench.tasks import TaskShape, TaskSuite
from purer.teachers import FoldedConv4Teacher, MappedTeacher
from zoos.zoo import InputMapped, Zoo, load_or_build_zoo

#: Cost knobs shrunk for the contract run when a method's config has them (keeps it to seconds).
SMOKE_KNOBS = {
    "generate_iterations": 2,
    "bank_support": 4,
    "bank_query": 15,
    "select_every": 1,
    "kd_inner_steps": 2,
    "zo_directions": 10,
    "ngf": 8,
    "nz": 16,
    "warmup_epochs": 1,
    "adapt_steps": 2,
    "images_per_class": 16,
    "embed_per_class": 2,
}

CONTEXT = MethodContext(n_way=5, k_shot=1, image_size=32, channels=3, device=torch.device("cpu"), seed=0)


def _train(
    name: str,
    zoo: Zoo,
    seed: int = 0,
    real_data=None,  # noqa: ANN001
    iterations: int = 2,
    extra: dict | None = None,
    train_dir: Path | None = None,
    stats: dict | None = None,
    probes: tuple | None = None,
    metrics: dict | None = None,
) -> Learner:
    cls = METHODS.get(name)
    from importlib import resources

    import yaml

    raw = yaml.safe_load((resources.files("bench.conf") / "method" / f"{name}.yaml").read_text())
    raw.update({k: v for k, v in SMOKE_KNOBS.items() if k in raw})
    raw.update(extra or {})
    cfg = validate_method_config(cls, raw)
    method = cls(cfg, dataclasses.replace(CONTEXT, seed=seed, train_dir=train_dir))
    generator = torch.Generator().manual_seed(seed)
    if probes is not None:  # (validate, test_probe), as bench.app gives every method
        method.validate, method.test_probe = probes
    if cls.uses_real_val:  # the paper's TDS variant: fresh real meta-val episodes via the harness
        attach_real_data(method, real_data, TaskShape(CONTEXT.n_way, CONTEXT.k_shot, raw.get("n_query", 15)))
    if cls.uses_real_data:
        method.real_data = real_data
        learner = method.meta_train(zoo, Budget(meta_iterations=iterations), generator)
    else:
        with forbid_real_data(name):
            learner = method.meta_train(zoo, Budget(meta_iterations=iterations), generator)
    if stats is not None:
        stats.update(method.train_stats)
    if metrics is not None:
        metrics.update(method.extra_metrics)
    return learner


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, tiny_zoo, small_glyphs):
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 2, seed=0)
    episode = suite.episode(0)
    first = _train(name, tiny_zoo, real_data=small_glyphs)
    assert isinstance(first, Learner)
    logits = first.adapt(episode.support_x, episode.support_y)(episode.query_x)
    assert logits.shape == (75, 5) and torch.isfinite(logits).all()
    readouts = first.adapt_readouts(episode.support_x, episode.support_y, [1, 10])
    assert set(readouts) == {1, 10}
    again = _train(name, tiny_zoo, real_data=small_glyphs).adapt(episode.support_x, episode.support_y)(
        episode.query_x
    )
    assert torch.equal(logits, again), "same seed must give identical results"


def _another_build(zoo: Zoo) -> Zoo:
    """The same zoo configuration with other member weights, as a retrain on another CPU gives."""
    gen = torch.Generator().manual_seed(1)
    members = []
    for member in zoo.members:
        model = copy.deepcopy(member.model)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
        members.append(dataclasses.replace(member, model=model, weights_sha256="another build"))
    return dataclasses.replace(zoo, members=members)


@pytest.mark.parametrize(
    ("name", "extra"),
    [(name, None) for name in METHODS.names()] + [("maml_oracle", {"init": "average"})],
    ids=[*METHODS.names(), "maml_oracle-init-average"],
)
def test_reads_zoo_says_whether_another_build_changes_the_learner(name, extra, tiny_zoo, small_glyphs):
    """``reads_zoo`` lets a record sit beside records of another zoo build (bench/zoo_builds.py):
    it must be False only where another build gives the very same learner."""
    from importlib import resources

    import yaml

    episode = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 1, seed=0).episode(0)
    raw = yaml.safe_load((resources.files("bench.conf") / "method" / f"{name}.yaml").read_text())
    raw.update(extra or {})  # the method config dfml-run passes to reads_zoo
    outputs = [
        _train(name, zoo, real_data=small_glyphs, extra=extra).adapt(episode.support_x, episode.support_y)(
            episode.query_x
        )
        for zoo in (tiny_zoo, _another_build(tiny_zoo))
    ]
    assert torch.equal(*outputs) == (not METHODS.get(name).reads_zoo(raw))


@pytest.mark.parametrize("name", METHODS.names())
def test_the_test_split_cannot_steer_what_a_method_learns(name, tiny_zoo, small_glyphs):
    """Two runs whose test probes answer opposite scores give the same learner. A method may call
    the test probe only for labelled numbers (``acc_test_probe_*``); the meta-val probe selects."""
    episode = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 1, seed=0).episode(0)
    calls: list[str] = []

    def validate(_learner) -> float:  # noqa: ANN001
        calls.append("val")
        return 40.0 + len(calls) % 3  # selection moves, so "selected" and "last" can differ

    def rising(_learner) -> float:  # noqa: ANN001
        calls.append("test")
        return float(10 * len(calls))

    def falling(_learner) -> float:  # noqa: ANN001
        calls.append("test")
        return float(100 - 10 * len(calls))

    outputs, labelled = [], []
    for test_probe in (rising, falling):
        metrics: dict = {}
        learner = _train(
            name, tiny_zoo, real_data=small_glyphs, probes=(validate, test_probe), metrics=metrics
        )
        outputs.append(learner.adapt(episode.support_x, episode.support_y)(episode.query_x))
        labelled.append({k: v for k, v in metrics.items() if k.startswith("acc_test")})
    assert torch.equal(outputs[0], outputs[1])
    if "test" in calls:  # every test-probe number it took is in the record, labelled as such
        assert labelled[0] and labelled[0] != labelled[1]
        assert "acc_test_probe_last" in labelled[0]
    if name not in NO_EPISODIC_LOOP:  # the episodic loop reports its last checkpoint (baselines.md §8)
        assert "acc_test_probe_last" in labelled[0] and "acc_test_probe_selected" in labelled[0]


#: Methods without a meta-training loop, and PURER's family (its own trainer; tests/test_purer.py).
NO_EPISODIC_LOOP = {"random_init", "weight_average", "ota", "purer", "purer_no_icfil", "purer_ei"}
#: Makes every method's own state move after the resume point: banks refreshed, stalls triggered.
RESUME_KNOBS = {"generate_interval": 2, "patience": 1, "check_every": 1, "max_replay": 2}


@pytest.mark.parametrize("name", [n for n in METHODS.names() if n not in NO_EPISODIC_LOOP])
def test_killed_meta_training_resumes_to_the_same_model(name, tiny_zoo, small_glyphs, tmp_path, monkeypatch):
    """Kill after iteration 3 (checkpoint at 2), rerun: same learner and counters as a straight run."""
    cls = METHODS.get(name)
    knobs = {k: v for k, v in RESUME_KNOBS.items() if k in {f.name for f in dataclasses.fields(cls.Config)}}
    knobs["checkpoint_every"] = 2
    episode = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 1, seed=0).episode(0)

    def run(train_dir: Path, stats: dict) -> torch.Tensor:
        learner = _train(name, tiny_zoo, 0, small_glyphs, 5, knobs, train_dir, stats)
        return learner.adapt(episode.support_x, episode.support_y)(episode.query_x)

    straight_stats: dict = {}
    straight = run(tmp_path / "straight", straight_stats)

    def kill_after_three(it: int) -> None:
        if it == 3:
            raise KeyboardInterrupt("simulated kill after iteration 3")

    monkeypatch.setattr(episodic, "_iteration_done", kill_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", {})
    assert (tmp_path / "killed" / "checkpoint.pt").is_file(), f"{name} does not checkpoint its loop"
    monkeypatch.undo()
    resumed_stats: dict = {}
    resumed = run(tmp_path / "killed", resumed_stats)
    assert torch.equal(straight, resumed)
    assert straight_stats["resumed_seconds"] == 0 < resumed_stats["resumed_seconds"]
    timeless = {k for k in straight_stats if "second" in k or k.endswith("_per_s")}
    assert {k: v for k, v in resumed_stats.items() if k not in timeless} == {
        k: v for k, v in straight_stats.items() if k not in timeless
    }


def test_the_loop_also_checkpoints_when_its_time_interval_passed(
    tiny_zoo, small_glyphs, tmp_path, monkeypatch
):
    """No cadence checkpoint before the end, the time rule due at every iteration: resumes at 3."""
    knobs = {
        k: v
        for k, v in RESUME_KNOBS.items()
        if k in {f.name for f in dataclasses.fields(METHODS.get("dfmaml").Config)}
    }
    knobs["checkpoint_every"] = 1000
    episode = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 1, seed=0).episode(0)

    def run(train_dir: Path, stats: dict) -> torch.Tensor:
        learner = _train("dfmaml", tiny_zoo, 0, small_glyphs, 5, knobs, train_dir, stats)
        return learner.adapt(episode.support_x, episode.support_y)(episode.query_x)

    straight = run(tmp_path / "straight", {})

    def kill_after_three(it: int) -> None:
        if it == 3:
            raise KeyboardInterrupt("simulated kill after iteration 3")

    monkeypatch.setattr(episodic, "CHECKPOINT_MAX_INTERVAL_S", 0.0)
    monkeypatch.setattr(episodic, "_iteration_done", kill_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", {})
    monkeypatch.undo()
    stats: dict = {}
    assert torch.equal(straight, run(tmp_path / "killed", stats))
    assert stats["resumed_seconds"] > 0  # resumed from the time-rule checkpoint (no cadence one existed)


def test_a_checkpoint_from_other_code_is_a_clear_error(tiny_zoo, small_glyphs, tmp_path):
    from bench.checkpoint import load_checkpoint, save_checkpoint
    from bench.errors import IntegrityError

    _train("dfmaml", tiny_zoo, 0, small_glyphs, 2, {"checkpoint_every": 1}, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu"))
    del state["method"]["bank"]  # as if another version of dfmaml had written it
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(IntegrityError, match=r"checkpoint .*checkpoint\.pt does not fit .*delete it"):
        _train("dfmaml", tiny_zoo, 0, small_glyphs, 4, {"checkpoint_every": 1}, tmp_path)


def test_guard_catches_a_method_reading_real_data(small_glyphs):
    with forbid_real_data("sneaky"), pytest.raises(DataFreeViolation, match="sneaky.*glyphs"):
        small_glyphs.read_rows(torch.tensor([0]))
    assert small_glyphs.read_rows(torch.tensor([0])).shape[0] == 1  # outside the guard


def test_random_init_depends_on_seed_not_zoo(tiny_zoo, small_glyphs):
    episode = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 1, seed=0).episode(0)
    a = _train("random_init", tiny_zoo, seed=0).adapt(episode.support_x, episode.support_y)(episode.query_x)
    b = _train("random_init", tiny_zoo, seed=1).adapt(episode.support_x, episode.support_y)(episode.query_x)
    assert not torch.equal(a, b)
    # another zoo (one member fewer, so other weights and classes): the same init
    fewer = dataclasses.replace(tiny_zoo, members=tiny_zoo.members[1:])
    c = _train("random_init", fewer, seed=0).adapt(episode.support_x, episode.support_y)(episode.query_x)
    assert torch.equal(a, c)
    # the init is the shared fresh meta model of the run seed, head bias zeroed
    from zoos.meta_model import fresh_meta_model

    init = _train("random_init", tiny_zoo, seed=0).init_params
    fresh = dict(fresh_meta_model(CONTEXT, 32).named_parameters())
    assert set(init) == set(fresh)
    for key, value in init.items():
        expected = torch.zeros_like(value) if key == "head.bias" else fresh[key].detach()
        assert torch.equal(value, expected), key
    assert fresh["head.bias"].abs().sum() > 0  # zeroing it is a real step


def test_weight_average_is_the_mean_of_member_weights(tiny_zoo):
    learner = _train("weight_average", tiny_zoo)
    name = "features.0.weight"
    expected = torch.stack([m.model.state_dict()[name] for m in tiny_zoo.members]).mean(0)
    assert torch.allclose(learner.init_params[name], expected)
    assert torch.allclose(
        learner.init_params["head.bias"], torch.stack([m.model.head.bias for m in tiny_zoo.members]).mean(0)
    )


def test_weight_average_refuses_mixed_zoo_naming_the_mismatch(tiny_zoo, small_glyphs):
    from tests.conftest import TINY_ZOO

    wide = load_or_build_zoo(
        {**TINY_ZOO, "name": "wide", "n_members": 1, "arch_options": {"width": 4}}, small_glyphs
    )
    mixed = dataclasses.replace(tiny_zoo, members=[*tiny_zoo.members, *wide.members])
    with pytest.raises(
        BenchError,
        match=r"\(SS\) zoo; zoo .* heterogeneous: conv4\(width=32\).*×3, conv4\(width=4\).*×1",
    ):
        _train("weight_average", mixed)


def test_method_yaml_type_errors_name_the_key():
    cls = METHODS.get("random_init")
    with pytest.raises(BenchError, match="inner_lr"):
        validate_method_config(cls, {"name": "random_init", "inner_lr": "fast"})
    with pytest.raises(BenchError, match="bogus"):
        validate_method_config(cls, {"name": "random_init", "bogus": 1})


@pytest.mark.parametrize(
    ("method", "key"),
    [
        ("dfmaml", "generate_interval"),
        ("dfprotonet", "generate_interval"),
        ("tds", "check_every"),
        ("tds", "val_checks"),
        ("tds", "patience"),
    ],
)
def test_counts_that_must_be_positive_are_refused_naming_the_key(method, key):
    cls = METHODS.get(method)
    with pytest.raises(BenchError, match=rf"method.{key}=0; valid: an integer >= 1"):
        validate_method_config(cls, {"name": method, key: 0})
    assert getattr(validate_method_config(cls, {"name": method, key: 1}), key) == 1


def test_budget_rejects_non_positive_values():
    with pytest.raises(BenchError, match="budget.meta_iterations must be > 0"):
        Budget(meta_iterations=0)
    with pytest.raises(BenchError, match="budget.max_seconds"):
        Budget(max_seconds=-1.0)


#: Methods that feed images to zoo members (the parameter-space ones refuse mapped members).
MEMBER_QUERIERS = [n for n in METHODS.names() if METHODS.get(n).real_data_use() == "none"]


@pytest.mark.parametrize(
    "name", [n for n in MEMBER_QUERIERS if n not in ("random_init", "weight_average", "ota")]
)
def test_every_member_query_goes_through_the_members_input_map(name, tiny_zoo, small_glyphs, monkeypatch):
    """MH: a member of another source is queried through its input map (ZooMember.run_model).

    Every member here carries a map; a member forward (direct, hooked teacher) or a folded-teacher
    call outside an InputMapped / MappedTeacher call fails the test.
    """
    depth, calls = [0], [0]

    def counted(original):  # noqa: ANN001, ANN202
        def call(self, *args, **kwargs):  # noqa: ANN001, ANN202
            depth[0], calls[0] = depth[0] + 1, calls[0] + 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        return call

    def guard(*_) -> None:  # noqa: ANN002
        assert depth[0] > 0, f"{name} queried a zoo member without its input map"

    folded = FoldedConv4Teacher.__call__
    monkeypatch.setattr(InputMapped, "forward", counted(InputMapped.forward))
    monkeypatch.setattr(MappedTeacher, "__call__", counted(MappedTeacher.__call__))
    monkeypatch.setattr(FoldedConv4Teacher, "__call__", lambda self, x: (guard(), folded(self, x))[1])
    mapping = (torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.1))
    members = [dataclasses.replace(m, input_map=mapping) for m in tiny_zoo.members]
    handles = [m.model.register_forward_pre_hook(lambda *_: guard()) for m in members]
    extra = {"init": "random"} if name.startswith("purer") else None  # averaging refuses mapped members
    try:
        _train(name, dataclasses.replace(tiny_zoo, members=members), real_data=small_glyphs, extra=extra)
    finally:
        for handle in handles:
            handle.remove()
    assert calls[0] > 0


@pytest.mark.parametrize("name", ["bidfmkd", "bidfmkd_zo", "free", "tgr"])
def test_the_kd_loss_choice_reaches_the_distillation(name, tiny_zoo, small_glyphs, monkeypatch):
    """``method.kd_loss=kl_prob_legacy`` is the loss every KD call of the method computes."""
    import baselines._kd as kd
    import baselines.free as free
    import baselines.tgr as tgr

    kinds: list[str] = []
    original = kd.kd_loss

    def recording(student, teacher, kind="kl", temperature=1.0):  # noqa: ANN001, ANN202
        kinds.append(kind)
        return original(student, teacher, kind, temperature)

    for module in (kd, free, tgr):
        monkeypatch.setattr(module, "kd_loss", recording)
    _train(name, tiny_zoo, real_data=small_glyphs, extra={"kd_loss": "kl_prob_legacy"})
    assert kinds and set(kinds) == {"kl_prob_legacy"}
