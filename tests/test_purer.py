"""PURER: curriculum trigger, ownership, weighting, adversarial step, resume, ICFIL, failures."""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil

import pytest
import torch

from bench.errors import BenchError, IntegrityError
from bench.learners.maml import FineTuneLearner, maml_task_loss, module_params
from bench.method import Budget, MethodContext
from bench.seeding import make_generator
from purer.config import PurerConfig
from purer.curriculum import Curriculum
from purer.icfil import IcfilLearner, supervised_contrastive
from purer.method import Purer
from purer.trainer import PurerTrainer
from tests.benchmarks.purer_shapes import synthetic_conv4_zoo


def _context(tmp_path=None) -> MethodContext:
    return MethodContext(5, 1, 32, 3, torch.device("cpu"), 0, tmp_path)


def _trainer(
    cfg: PurerConfig | None = None, members: int = 3, work_dir=None, iterations: int = 4
) -> PurerTrainer:
    cfg = cfg or PurerConfig(meta_iterations=iterations)
    method = Purer(cfg, _context(work_dir))
    return PurerTrainer(
        method, cfg, synthetic_conv4_zoo(n_members=members, n_classes=5 * members), Budget(), 0
    )


# ----------------------------------------------------------------------------- curriculum
def test_forced_switch_at_start_and_after_exactly_patience_non_improving():
    c = Curriculum(start=3, patience=6)
    fired = [c.observe(it, acc) for it, acc in enumerate([50, 60, 10], start=1)]
    assert fired == [False, False, True] and c.consume() and not c.consume()
    # it 4 re-seeds best=40; its 5..10 do not beat it strictly (equal counts as not improving)
    sequence = [40, 40, 39, 30, 40, 20, 35]
    fired = [c.observe(it, acc) for it, acc in enumerate(sequence, start=4)]
    assert fired == [False, False, False, False, False, False, True]
    assert c.best is None and c.count == 0 and [e["iteration"] for e in c.events] == [3, 10]


def test_improvement_resets_the_count_and_flag_pauses_tracking():
    c = Curriculum(start=1, patience=2)
    assert c.observe(1, 10.0)  # forced
    assert not c.observe(2, 99.0)  # flag still set: tracking paused, so 99 does not become best
    assert c.best is None and c.count == 0
    c.consume()
    assert [c.observe(it, a) for it, a in [(3, 5.0), (4, 6.0), (5, 5.0), (6, 7.0), (7, 1.0), (8, 1.0)]] == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]


def test_the_trainer_switches_on_accuracy_and_adds_the_term_once_on_the_next_data_step(monkeypatch):
    """Through ``run()``: forced at adv.start, then after 6 non-improving *accuracies*.

    The scripted losses rise every iteration: fed to the trigger instead of the accuracy they
    would "improve" each time and the plateau switch would never fire.
    """
    import purer.trainer as trainer_module

    accuracies = [50.0, 50.0, 60.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    calls = []

    def scripted_meta_step(*_args, **_kwargs):
        calls.append(len(calls))
        return float(len(calls)), accuracies[len(calls) - 1]

    monkeypatch.setattr(trainer_module, "meta_step", scripted_meta_step)
    cfg = PurerConfig(meta_iterations=len(accuracies))
    cfg.adv = dataclasses.replace(cfg.adv, start=2)
    trainer = _trainer(cfg)
    trainer.run()
    switches = [h["iteration"] for h in trainer.history if h["switch"]]
    adversarial = [h["iteration"] for h in trainer.history if h["adversarial"]]
    # forced at 2; best = 60 at 3; 4..9 are six non-improving iterations -> fires at 9
    assert switches == [2, 9]
    assert adversarial == [3, 10]  # once each, on the data step right after the switch
    assert [e["reason"] for e in trainer.curriculum.events] == ["forced", "plateau"]
    stats = trainer.stats()
    assert stats["adversarial_steps"] == 2 and stats["curriculum_switches"] == 2


# ----------------------------------------------------------------------------- data
def test_each_class_is_inverted_only_by_its_owner():
    trainer = _trainer()
    data = trainer.data
    for i, slot in enumerate(data.teachers):
        data.X.grad = None
        loss, _ = data.inversion_objective(trainer.weights, torch.Generator().manual_seed(0), [i])
        loss.backward()
        touched = (data.X.grad.abs().flatten(1).sum(1) > 0).nonzero().flatten()
        assert torch.equal(touched, slot.rows.sort().values)
        assert data.y[slot.rows].unique().numel() == 5
        # local targets: member i holds global classes 5i..5i+4 (sorted names), in that order
        p = data.images_per_class
        assert torch.equal(slot.targets, torch.arange(5).repeat_interleave(p))
        assert torch.equal(data.y[slot.rows], 5 * i + slot.targets)


def test_uniform_vs_legacy_cumulative_weighting():
    trainer = _trainer()
    data = trainer.data
    ids = list(range(len(data.teachers)))

    def block_grads(cumulative: bool) -> list[torch.Tensor]:
        data.X.grad = None
        loss, _ = data.inversion_objective(trainer.weights, torch.Generator().manual_seed(1), ids, cumulative)
        loss.backward()
        return [data.X.grad[slot.rows].clone() for slot in data.teachers]

    uniform, legacy = block_grads(False), block_grads(True)
    m = len(ids)
    for i, (u, lg) in enumerate(zip(uniform, legacy, strict=True)):
        assert torch.allclose(lg, (m - i) * u, rtol=1e-4, atol=1e-7)


def test_adversarial_step_increases_query_loss_touches_only_sampled_classes_and_not_theta():
    cfg = PurerConfig(meta_iterations=4, channels_last=False)
    cfg.inversion = dataclasses.replace(cfg.inversion, ce=0.0, bn=0.0, tv=0.0, l2=0.0)
    trainer = _trainer(cfg)
    theta_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state = trainer.gens["tasks"].get_state()
    task = trainer.data.sample_task(5, 1, 15, trainer.gens["tasks"], detach=False)
    trainer.gens["tasks"].set_state(state)  # the data step samples the same task
    params = module_params(trainer.model)
    before = float(maml_task_loss(trainer.model, params, task, 1, 0.01)[0].detach())
    X_before = trainer.data.X.detach().clone()
    trainer.curriculum.flag = True
    trainer.data_step()
    changed = (trainer.data.X.detach() - X_before).abs().flatten(1).sum(1) > 0
    p = trainer.data.images_per_class
    sampled = {int(c) for c in task.classes}
    assert {int(r) // p for r in changed.nonzero().flatten()} == sampled  # support + query images
    # every row of those classes moved: the 1 support + 15 query images of each (p = 16), so the
    # support images got a gradient through the second-order inner step as well
    assert p == 16 and int(changed.sum()) == 5 * p
    trainer.gens["tasks"].set_state(state)
    task_after = trainer.data.sample_task(5, 1, 15, trainer.gens["tasks"], detach=True)
    after = float(maml_task_loss(trainer.model, params, task_after, 1, 0.01)[0].detach())
    assert after > before
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, theta_before[key]), key


def test_averaged_init_refuses_other_widths_naming_them():
    cfg = PurerConfig(width=16)
    with pytest.raises(BenchError, match=r"width 16; the zoo has widths \[32\]"):
        _trainer(cfg)


def test_non_finite_loss_stops_naming_the_iteration():
    trainer = _trainer()
    with torch.no_grad():
        trainer.data.X[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="meta-iteration 1"):
        trainer.meta_iteration()


# ----------------------------------------------------------------------------- resume
def test_a_run_killed_with_a_switch_pending_resumes_with_it(tmp_path, monkeypatch):
    """The iteration-2 checkpoint holds the forced switch's flag; the resumed run must still add the
    adversarial term at iteration 3, and the curriculum's state must match an uninterrupted run's."""
    cfg = PurerConfig(meta_iterations=5, checkpoint_every=2)
    cfg.adv = dataclasses.replace(cfg.adv, start=2)
    straight = _trainer(cfg, work_dir=tmp_path / "a")
    straight.run()

    interrupted = _trainer(cfg, work_dir=tmp_path / "b")
    original = interrupted.meta_iteration

    def crash_after_two():
        if interrupted.it == 2:
            assert interrupted.curriculum.flag  # the checkpoint just written holds the pending switch
            raise KeyboardInterrupt
        return original()

    interrupted.meta_iteration = crash_after_two
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = _trainer(cfg, work_dir=tmp_path / "b")
    resumed.run()
    columns = ("adversarial", "switch", "outer_loss", "objective")
    assert [[h[c] for c in columns] for h in resumed.history] == [
        [h[c] for c in columns] for h in straight.history
    ]
    assert [h["adversarial"] for h in resumed.history] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert resumed.curriculum.state_dict() == straight.curriculum.state_dict()
    assert torch.equal(resumed.data.X, straight.data.X)


def test_a_checkpoint_that_does_not_fit_the_trainer_is_a_clear_error(tmp_path):
    cfg = PurerConfig(meta_iterations=2, checkpoint_every=1)
    _trainer(cfg, work_dir=tmp_path).run()
    checkpoint = tmp_path / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state.pop("test_evals")  # written by other code
    torch.save(state, checkpoint)
    with pytest.raises(IntegrityError, match=rf"checkpoint {checkpoint} does not fit .*KeyError.*delete it"):
        _trainer(PurerConfig(meta_iterations=3, checkpoint_every=1), work_dir=tmp_path).run()
    _trainer(cfg, members=4, work_dir=tmp_path / "four").run()  # other settings: 4 members' pixels, not 3
    with pytest.raises(IntegrityError, match=r"does not fit .*RuntimeError"):
        _trainer(
            PurerConfig(meta_iterations=3, checkpoint_every=1), members=3, work_dir=tmp_path / "four"
        ).run()


def test_killed_run_resumes_to_identical_state(tmp_path):
    cfg = PurerConfig(meta_iterations=6, checkpoint_every=2)
    cfg.adv = dataclasses.replace(cfg.adv, start=2)
    cfg.selection = dataclasses.replace(cfg.selection, every=3)
    straight = _trainer(cfg, work_dir=tmp_path / "a")
    straight.run()

    interrupted = _trainer(cfg, work_dir=tmp_path / "b")
    original = interrupted.meta_iteration

    def crash_after_four():
        if interrupted.it == 4:
            raise KeyboardInterrupt  # a kill after the iteration-4 checkpoint
        return original()

    interrupted.meta_iteration = crash_after_four
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = _trainer(cfg, work_dir=tmp_path / "b")
    resumed.run()
    assert resumed.it == straight.it == 6
    assert torch.equal(resumed.data.X, straight.data.X)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert [h["outer_loss"] for h in resumed.history] == [h["outer_loss"] for h in straight.history]
    assert (tmp_path / "a" / "artefacts" / "synthesized_end.png").is_file()
    assert (tmp_path / "a" / "artefacts" / "curves.png").is_file()
    # the resumed run still publishes the grids drawn before the kill (start, middle at 3)
    grids = [tmp_path / "b" / "artefacts" / f"synthesized_{tag}.png" for tag in ("start", "middle", "end")]
    assert all(path in resumed.method.artifacts and path.is_file() for path in grids)
    assert resumed.stats()["timed_meta_iterations"] == 6  # the step timer is checkpointed too
    # every process pays its own warm-up: 4 timed iterations before the kill, 2 after the resume
    assert resumed.step["warmup_iterations"] == 6
    assert "steady_meta_iterations_per_s" not in resumed.stats()  # no iteration after a warm-up
    stats = straight.stats()  # one process, 6 iterations: 5 of warm-up, 1 steady
    assert straight.step["warmup_iterations"] == 5 and 0 < stats["warmup_s"] < straight.step["seconds"]
    expected = 1 / (straight.step["seconds"] - straight.step["warmup_seconds"])
    assert stats["steady_meta_iterations_per_s"] == pytest.approx(expected)
    # a checkpoint timed before the warm-up split: no steady rate can be told apart, so none is given
    old_state = straight.state_dict()
    old_state["step"] = {k: v for k, v in old_state["step"].items() if not k.startswith("warmup")}
    from_old = _trainer(cfg, work_dir=tmp_path / "c")
    from_old.load_state_dict(old_state)
    old_stats = from_old.stats()
    assert "steady_meta_iterations_per_s" not in old_stats and "warmup_s" not in old_stats
    assert old_stats["step_meta_iterations_per_s"] == pytest.approx(stats["step_meta_iterations_per_s"])


def test_a_run_stopped_by_max_seconds_resumes_without_training_more(tmp_path):
    import time

    cfg = PurerConfig(meta_iterations=50, checkpoint_every=100)  # no periodic checkpoint before the stop
    calls = []

    def trainer() -> PurerTrainer:
        made = _trainer(cfg, work_dir=tmp_path)
        made.max_seconds = 0.5
        original = made.meta_iteration

        def slow() -> dict:
            calls.append(made.it)
            time.sleep(0.2)
            return original()

        made.meta_iteration = slow
        return made

    first = trainer()
    first.run()
    assert 1 <= first.it < 50
    calls.clear()
    again = trainer()
    again.run()  # resumes at the stopping point, finds the budget spent, trains nothing more
    assert calls == [] and again.it == first.it and torch.equal(again.data.X, first.data.X)


# ----------------------------------------------------------------------------- ICFIL
def test_supervised_contrastive_by_hand_with_two_positives_per_label():
    """-mean over anchors of the mean over P(i) of log softmax(z_i . z^_j / tau), written out."""
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pseudo = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
    anchor_y, pseudo_y, tau = torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1]), 0.5
    expected = 0.0
    for i, z in enumerate(anchors.tolist()):
        logits = [(z[0] * p[0] + z[1] * p[1]) / tau for p in pseudo.tolist()]
        log_norm = math.log(sum(math.exp(v) for v in logits))
        positives = [j for j in range(4) if int(pseudo_y[j]) == int(anchor_y[i])]
        expected += -sum(logits[j] - log_norm for j in positives) / len(positives)
    expected /= 2
    assert float(supervised_contrastive(anchors, anchor_y, pseudo, pseudo_y, tau)) == pytest.approx(expected)


def test_supervised_contrastive_prefers_aligned_features():
    anchors = torch.nn.functional.normalize(torch.eye(2), dim=1)
    labels = torch.tensor([0, 1])
    aligned = supervised_contrastive(anchors, labels, anchors.clone(), labels, tau=0.1)
    swapped = supervised_contrastive(anchors, labels, anchors.flip(0), labels, tau=0.1)
    assert float(aligned) < float(swapped)


def _toy_episode(generator: torch.Generator):
    centres = torch.randn(5, 3, 1, 1, generator=generator) * 2
    support = centres.repeat_interleave(2, 0) + 0.3 * torch.randn(10, 3, 32, 32, generator=generator)
    return support, torch.arange(5).repeat_interleave(2)


def test_icfil_is_deterministic_and_keeps_support_accuracy():
    trainer = _trainer()
    # one inner step: the plain learner is below 100 % on this support set, so ">=" can fail
    base = FineTuneLearner(trainer.model, inner_lr=0.01, default_steps=1)
    cfg = dataclasses.replace(PurerConfig().icfil, inversion_steps=10)
    learner = IcfilLearner(base, cfg, seed=0)
    support_x, support_y = _toy_episode(torch.Generator().manual_seed(1))
    plain = base.adapt(support_x, support_y)(support_x).argmax(1)
    first = learner.adapt(support_x, support_y)(support_x)
    second = learner.adapt(support_x, support_y)(support_x)
    assert torch.equal(first, second)
    plain_acc = float((plain == support_y).float().mean())
    calibrated_acc = float((first.argmax(1) == support_y).float().mean())
    assert plain_acc < 1.0
    assert calibrated_acc >= plain_acc


def test_icfil_with_no_steps_is_the_adapted_model():
    """ICFIL starts from theta' (the adapted parameters), not from the meta-learned init."""
    trainer = _trainer()
    base = FineTuneLearner(trainer.model, inner_lr=0.5, default_steps=3)
    cfg = dataclasses.replace(PurerConfig().icfil, inversion_steps=0, calib_steps=0, head_steps=0)
    support_x, support_y = _toy_episode(torch.Generator().manual_seed(1))
    query = torch.randn(15, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    adapted = base.adapt(support_x, support_y)(query)
    unadapted = base.adapt_readouts(support_x, support_y, [0])[0](query)
    assert not torch.allclose(adapted, unadapted, atol=1e-3)
    calibrated = IcfilLearner(base, cfg, seed=0).adapt(support_x, support_y)(query)
    assert torch.allclose(calibrated, adapted, atol=1e-5)


def test_icfil_calibration_lowers_its_losses():
    """The pseudo set's CE under theta' falls over the inversion; the contrastive loss over calibration."""
    import torch.nn.functional as F

    from purer.icfil import supervised_contrastive as supcon

    trainer = _trainer()
    base = FineTuneLearner(trainer.model, inner_lr=0.01, default_steps=1)
    cfg = dataclasses.replace(PurerConfig().icfil, inversion_steps=30, calib_steps=10, calib_lr=0.05)
    learner = IcfilLearner(base, cfg, seed=0)
    support_x, support_y = _toy_episode(torch.Generator().manual_seed(1))
    params = base.adapt_readouts(support_x, support_y, [1])[1].params
    model = copy.deepcopy(base.model)
    model.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
    shape = (25, *support_x.shape[1:])
    start = torch.randn(shape, generator=make_generator(7))
    pseudo_y = torch.arange(5).repeat_interleave(5)
    pseudo_x, labels = learner.invert(model, support_x, support_y, 5, seed=7)
    assert torch.equal(labels, pseudo_y)
    with torch.no_grad():
        assert float(F.cross_entropy(model(pseudo_x), pseudo_y)) < float(
            F.cross_entropy(model(start), pseudo_y)
        )

    def contrastive() -> float:
        with torch.no_grad():
            anchors = F.normalize(model.embed(support_x), dim=1)
            pseudo = F.normalize(model.embed(pseudo_x), dim=1)
            return float(supcon(anchors, support_y, pseudo, pseudo_y, cfg.tau))

    before = contrastive()
    learner.calibrate_features(model, support_x, support_y, pseudo_x, pseudo_y)
    assert contrastive() < before


def test_purer_returns_icfil_learner_only_when_enabled():
    zoo = synthetic_conv4_zoo(n_members=3, n_classes=15)
    on = Purer(PurerConfig(meta_iterations=1), _context()).meta_train(
        zoo, Budget(), torch.Generator().manual_seed(0)
    )
    cfg = PurerConfig(meta_iterations=1)
    cfg.icfil = dataclasses.replace(cfg.icfil, enabled=False)
    off = Purer(cfg, _context()).meta_train(zoo, Budget(), torch.Generator().manual_seed(0))
    assert isinstance(on, IcfilLearner) and isinstance(off, FineTuneLearner)
    for key, value in off.init_params.items():
        assert torch.equal(on.base.init_params[key], value), key


def test_record_holds_the_labelled_test_probe_of_the_selected_and_the_last_checkpoint():
    """purer.md §10: best-of-test (reference), plus last vs meta-val-selected on the same probe."""
    cfg = PurerConfig(meta_iterations=4)
    cfg.selection = dataclasses.replace(cfg.selection, every=1)
    cfg.icfil = dataclasses.replace(cfg.icfil, enabled=False)
    method = Purer(cfg, _context())
    val_scores, test_scores = iter([40.0, 55.0, 50.0, 45.0]), iter([30.0, 35.0, 60.0, 33.0])
    method.validate = lambda learner: next(val_scores)
    method.test_probe = lambda learner: next(test_scores)
    method.meta_train(
        synthetic_conv4_zoo(n_members=3, n_classes=15), Budget(), torch.Generator().manual_seed(0)
    )
    assert method.train_stats["selected_iteration"] == 2  # best meta-val
    assert method.extra_metrics["acc_test_best_of_evals"] == 60.0  # iteration 3: selection on test
    assert method.extra_metrics["acc_test_probe_selected"] == 35.0
    assert method.extra_metrics["acc_test_probe_last"] == 33.0
    assert method.extra_metrics["selection_rule_is_meta_val"] == 1.0


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler (g++)")
def test_compiled_inversion_objective_matches_eager_within_tolerance():
    """compile=default: same objective and pixel gradient as eager; 3-iteration runs stay together.

    Not bit-identical: Adam (pixel lr 0.25) turns float noise in near-zero gradients into full
    steps, so a few pixels (measured: < 0.03 %) move apart by up to ~0.005 after 3 iterations.
    """
    eager, fused = _trainer(iterations=3), _trainer(PurerConfig(meta_iterations=3, compile="default"))
    assert fused.objective is not fused.data.inversion_objective  # really compiled
    grads = []
    for trainer in (eager, fused):
        value, _ = trainer.objective(trainer.weights, torch.Generator().manual_seed(5), [0, 1, 2])
        (grad,) = torch.autograd.grad(value, trainer.data.X)
        grads.append((value.detach(), grad))
    assert grads[1][0] == pytest.approx(float(grads[0][0]), rel=1e-6)
    assert float((grads[1][1] - grads[0][1]).norm() / grads[0][1].norm()) < 1e-5
    for _ in range(3):
        a, b = eager.meta_iteration(), fused.meta_iteration()
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-5)
    moved_apart = (eager.data.X - fused.data.X).abs() > 1e-3
    assert float(moved_apart.float().mean()) < 1e-3  # (the meta model's Adam steps are ~lr either way)


def test_unknown_compile_mode_is_a_clear_error():
    with pytest.raises(
        BenchError, match="purer compile 'fast' unknown; valid: off, default, reduce-overhead"
    ):
        _trainer(PurerConfig(compile="fast"))


def test_paper_profile_refuses_a_shortened_schedule_naming_each_value():
    cfg = PurerConfig(meta_iterations=60000, profile="paper")
    with pytest.raises(BenchError) as error:
        _trainer(cfg)
    message = str(error.value)
    assert "meta_iterations" not in message  # 60000 is right
    assert "adv.start=4000" not in message  # derived 60000 * 4000 / 60000 = 4000 is right
    assert "selection.every=250 (paper: 500)" in message
    assert "selection.val_episodes=200 (paper: 600)" in message
    cfg.selection = dataclasses.replace(cfg.selection, every=500, val_episodes=600)
    assert _trainer(cfg).iterations == 60000  # the full paper schedule is accepted


def test_teachers_per_step_inverts_only_the_drawn_members_rows():
    cfg = PurerConfig(meta_iterations=4, curriculum=False)
    cfg.synthesis = dataclasses.replace(cfg.synthesis, teachers_per_step=1)
    trainer = _trainer(cfg, members=3)
    before = trainer.data.X.detach().clone()
    parts = trainer.data_step()
    moved = ((trainer.data.X.detach() - before).abs().flatten(1).sum(1) > 0).nonzero().flatten()
    owners = [
        i for i, slot in enumerate(trainer.data.teachers) if set(slot.rows.tolist()) == set(moved.tolist())
    ]
    assert len(owners) == 1, "exactly one member's 5 classes x 16 images moved"
    assert parts["inverted_images"] == len(moved) == 5 * 16


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("synthesis", "teachers_per_step", -1, "method.synthesis.teachers_per_step=-1"),
        ("synthesis", "teachers_per_step", 0, "method.synthesis.teachers_per_step=0"),
        ("synthesis", "teachers_per_step", 4, "from 1 to the zoo's 3 members"),
        ("synthesis", "images_per_class", 10, "integer >= 16"),  # 1-shot + 15 queries
        ("synthesis", "images_per_class", 0, "method.synthesis.images_per_class=0"),
        ("selection", "every", 0, "method.selection.every=0"),
        ("adv", "patience", 0, "method.adv.patience=0"),
        ("adv", "start", 0, "method.adv.start=0"),
        (None, "checkpoint_every", 0, "method.checkpoint_every=0"),
        (None, "meta_batch", 0, "method.meta_batch=0"),
    ],
)
def test_out_of_range_counts_are_refused_naming_the_key(section, key, value, named):
    cfg = PurerConfig(meta_iterations=4)
    if section is None:
        setattr(cfg, key, value)
    else:
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **{key: value}))
    with pytest.raises(BenchError, match="valid:") as raised:
        _trainer(cfg, members=3)
    assert named in str(raised.value)


def test_every_teacher_and_the_minimum_images_per_class_are_accepted():
    cfg = PurerConfig(meta_iterations=4)
    cfg.synthesis = dataclasses.replace(cfg.synthesis, teachers_per_step=3, images_per_class=16)
    trainer = _trainer(cfg, members=3)
    assert trainer.data.images_per_class == 16
    assert trainer.data_step()["inverted_images"] == 3 * 5 * 16


def test_the_mh_meta_model_pools_globally_and_trains():
    cfg = PurerConfig(meta_iterations=4, init="random")
    context = dataclasses.replace(_context(), global_pool=True)
    trainer = PurerTrainer(
        Purer(cfg, context), cfg, synthetic_conv4_zoo(n_members=3, n_classes=15), Budget(), 0
    )
    assert isinstance(trainer.model.pool, torch.nn.AdaptiveMaxPool2d)
    assert trainer.model.head.in_features == cfg.width
    assert math.isfinite(trainer.meta_iteration()["outer_loss"])
    averaged = PurerConfig(meta_iterations=4)  # init average from members without the pool: refused
    with pytest.raises(BenchError, match="meta_model.global_pool=true and the members' global_pool is false"):
        PurerTrainer(
            Purer(averaged, context), averaged, synthetic_conv4_zoo(n_members=3, n_classes=15), Budget(), 0
        )


def test_a_class_held_by_two_members_is_inverted_by_both():
    # overlapping zoo (PURER-Plus / FREE protocol): member 1 also holds member 0's first class
    zoo = synthetic_conv4_zoo(n_members=2, n_classes=10)
    shared = zoo.members[0].spec.classes[0]
    spec = dataclasses.replace(zoo.members[1].spec, classes=(shared, *zoo.members[1].spec.classes[1:]))
    zoo = dataclasses.replace(zoo, members=[zoo.members[0], dataclasses.replace(zoo.members[1], spec=spec)])
    cfg = PurerConfig(meta_iterations=4, init="random")
    trainer = PurerTrainer(Purer(cfg, _context()), cfg, zoo, Budget(), 0)
    data = trainer.data
    shared = zoo.members[0].class_keys[0]  # the dynamic dataset's name for that class
    assert shared in zoo.members[1].class_keys
    assert data.n_classes == 9  # 10 class slots, one shared
    first, second = (set(slot.rows.tolist()) for slot in data.teachers)
    p = data.images_per_class
    shared_rows = set(range(data.class_names.index(shared) * p, (data.class_names.index(shared) + 1) * p))
    assert first & second == shared_rows
    # each owner labels the shared rows with its own local label of that class (0 for both here)
    for slot in data.teachers:
        local = slot.targets[[i for i, r in enumerate(slot.rows.tolist()) if r in shared_rows]]
        assert set(local.tolist()) == {0}

    # and both owners' gradients reach the shared rows: dropping either changes their gradient
    def grad_of(ids: list[int]) -> torch.Tensor:
        data.X.grad = None
        still = dataclasses.replace(trainer.weights, jitter=0)  # same (no) roll whoever is alone
        loss, _ = data.inversion_objective(still, torch.Generator().manual_seed(0), ids, False)
        loss.backward()
        return data.X.grad[sorted(shared_rows)].clone()

    both, only_first, only_second = grad_of([0, 1]), grad_of([0]), grad_of([1])
    assert torch.allclose(both, only_first + only_second, rtol=1e-4, atol=1e-7)
    assert only_first.abs().sum() > 0 and only_second.abs().sum() > 0


def test_averaged_init_refuses_a_mixed_architecture_zoo():
    from bench.seeding import make_generator
    from zoos.architectures import build_model
    from zoos.zoo import ZooMember

    zoo = synthetic_conv4_zoo(n_members=2, n_classes=10)
    resnet = build_model("resnet10", 5, 32, 3, make_generator(0)).eval().requires_grad_(False)
    spec = dataclasses.replace(zoo.members[1].spec, arch="resnet10", arch_options={})
    member = ZooMember(spec, resnet, 0.0, 0.0, "-", 0)
    zoo = dataclasses.replace(zoo, members=[zoo.members[0], member])
    cfg = PurerConfig(meta_iterations=4)
    with pytest.raises(BenchError, match=r"resnet10|architecture|init=random"):
        PurerTrainer(Purer(cfg, _context()), cfg, zoo, Budget(), 0)


def test_a_finished_checkpoint_without_step_timer_reports_no_step_rate(tmp_path):
    """Checkpoints written before the step timer: the rates are left out, never reported as 0."""
    from bench.checkpoint import load_checkpoint, save_checkpoint

    cfg = PurerConfig(meta_iterations=2, checkpoint_every=2, curriculum=False)
    _trainer(cfg, work_dir=tmp_path).run()
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path, torch.device("cpu"))
    del state["step"]
    save_checkpoint(path, state)
    resumed = _trainer(cfg, work_dir=tmp_path)
    resumed.run()
    stats = resumed.stats()
    assert resumed.it == 2 and stats["timed_meta_iterations"] == 0
    assert "step_meta_iterations_per_s" not in stats and "synth_images_per_s" not in stats
    assert stats["meta_iterations_per_s"] > 0  # the whole-loop rate from the checkpointed seconds


def test_the_inversion_objective_traces_as_one_graph():
    """compile=default must compile the whole objective: a graph break in its teacher loop makes
    dynamo skip the frame (it did, through a float() of the term means), and Python-int roll
    offsets specialise the graph on each of the 25 offsets."""
    from purer.inversion import draw_shifts

    trainer = _trainer()
    torch._dynamo.reset()
    for seed in range(3):  # different offsets: no recompilation either
        shifts = draw_shifts(2, 3, torch.Generator().manual_seed(seed))
        explanation = torch._dynamo.explain(trainer.data.inversion_objective)(
            trainer.weights, None, [0, 1, 2], False, shifts
        )
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


@pytest.mark.parametrize(
    ("start", "iterations", "expected"),
    [(None, 60000, 4000), (None, 30, 2), (None, 16, 1), (None, 1, 1), (7, 30, 7)],
)
def test_the_adversarial_start_follows_the_papers_fraction_of_the_schedule(start, iterations, expected):
    from purer.trainer import adv_start

    cfg = PurerConfig(meta_iterations=iterations)
    cfg.adv = dataclasses.replace(cfg.adv, start=start)
    assert adv_start(cfg, iterations) == expected


def test_a_kill_between_cadence_checkpoints_loses_at_most_the_time_interval(tmp_path, monkeypatch):
    """With the time rule due at every iteration, a kill after iteration 3 resumes from 3, identically."""
    import purer.trainer as trainer_module

    cfg = PurerConfig(meta_iterations=5, checkpoint_every=1000)  # no cadence checkpoint before the end
    cfg.adv = dataclasses.replace(cfg.adv, start=2)
    straight = _trainer(cfg, work_dir=tmp_path / "a")
    straight.run()
    monkeypatch.setattr(trainer_module, "CHECKPOINT_MAX_INTERVAL_S", 0.0)
    interrupted = _trainer(cfg, work_dir=tmp_path / "b")
    original = interrupted.meta_iteration

    def crash_after_three():
        if interrupted.it == 3:
            raise KeyboardInterrupt
        return original()

    interrupted.meta_iteration = crash_after_three
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = _trainer(cfg, work_dir=tmp_path / "b")
    resumed.run()
    assert resumed.resumed_at == 3
    assert torch.equal(resumed.data.X, straight.data.X)
    assert [h["outer_loss"] for h in resumed.history] == [h["outer_loss"] for h in straight.history]
