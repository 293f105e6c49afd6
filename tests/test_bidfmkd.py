"""BiDf-MKD pieces: KD losses, the zero-order estimator, the generator, black-box member access."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines._generator import fresh_generator
from baselines._kd import kd_loss
from baselines._zero_order import QueryCountingTeacher, log_probabilities, zero_order_gradient
from bench.errors import BenchError
from bench.method import METHODS, Budget, MethodContext
from zoos.zoo import Zoo

CPU = torch.device("cpu")


def test_kl_is_the_textbook_kl_and_the_legacy_loss_is_not():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    p_t, p_s = t.softmax(1), s.softmax(1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert torch.allclose(kd_loss(s, t, "kl"), by_hand, atol=1e-6)
    assert torch.allclose(kd_loss(t, t, "kl"), torch.tensor(0.0), atol=1e-6)
    legacy = kd_loss(s, t, "kl_prob_legacy")
    # the reference's F.kl_div(p_s, p_t): treats the student *probabilities* as log-probabilities
    legacy_by_hand = (p_t * (p_t.log() - p_s)).sum(1).mean()
    assert torch.allclose(legacy, legacy_by_hand, atol=1e-6)
    assert not torch.allclose(legacy, by_hand, atol=1e-3)
    scaled = (F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(s / 4, 1))).sum(1).mean() * 16
    assert torch.allclose(kd_loss(s, t, "kl", temperature=4.0), scaled, atol=1e-5)
    with pytest.raises(ValueError, match="kl_prob_legacy"):
        kd_loss(s, t, "kl_probs")


def test_zero_order_gradient_estimates_the_true_gradient_from_counted_queries():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 4, 4, generator=gen)
    target = torch.randn(3, 1, 4, 4, generator=gen)
    calls = []

    def loss(images, source):  # smooth per-image loss; true gradient 2 (x - target)
        calls.append(len(images))
        return ((images - target[source]) ** 2).flatten(1).sum(1)

    estimate = zero_order_gradient(loss, x, directions=2000, mu=1e-3, chunks=5, generator=gen)
    true = 2 * (x - target)
    cosine = F.cosine_similarity(estimate.flatten(1), true.flatten(1), dim=1)
    assert cosine.min() > 0.95, cosine
    # the scale too (cosine ignores it): a wrong d/q factor would be off by 16x here
    ratio = estimate.flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), ratio
    assert sum(calls) == 3 * (1 + 2000)
    with pytest.raises(ValueError, match="multiple of chunks"):
        zero_order_gradient(loss, x, directions=10, mu=1e-3, chunks=3, generator=gen)


@pytest.mark.parametrize("size", [28, 30, 32])
def test_generator_makes_normalised_images_of_the_zoo_size(size):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    net = fresh_generator(16, 8, size, 3, mean, std, torch.Generator().manual_seed(0), CPU)
    again = fresh_generator(16, 8, size, 3, mean, std, torch.Generator().manual_seed(0), CPU)
    pairs = zip(net.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)  # seeded initialisation
    z = torch.randn(4, 16)
    images = net(z)
    assert images.shape == (4, 3, size, size)
    # the sigmoid output, normalised by hand with the zoo's mean/std
    net.eval()  # the same BN path for both forwards
    sigmoid = net.blocks(net.project(z).view(4, -1, net.init_size, net.init_size))
    if sigmoid.shape[-1] != size:
        sigmoid = F.interpolate(sigmoid, size=(size, size), mode="bilinear")
    assert sigmoid.min() >= 0 and sigmoid.max() <= 1
    by_hand = (sigmoid - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(net(z), by_hand, atol=1e-6)


def test_bilevel_kd_loss_is_query_kd_after_inner_kd_steps_on_the_support():
    """0 steps: the query KD loss of the init; 1 step: of one SGD step on the support KD loss."""
    from baselines._kd import KDEpisode, bilevel_kd_loss
    from bench.learners.maml import forward, module_params
    from zoos.architectures import build_model

    gen = torch.Generator().manual_seed(3)
    model = build_model("conv4", 5, 16, 3, gen, width=8, batch_stat_bn=True)
    task = KDEpisode(
        torch.randn(5, 3, 16, 16, generator=gen),
        torch.arange(5),
        torch.randn(10, 3, 16, 16, generator=gen),
        torch.arange(5).repeat(2),
        torch.arange(5),
        support_t=torch.randn(5, 5, generator=gen),
        query_t=torch.randn(10, 5, generator=gen),
    )
    params = module_params(model)
    zero, _ = bilevel_kd_loss(model, params, task, 0, 0.1, "kl", 2.0)
    assert torch.allclose(zero, kd_loss(forward(model, params, task.query_x), task.query_t, "kl", 2.0))
    support_loss = kd_loss(forward(model, params, task.support_x), task.support_t, "kl", 2.0)
    grads = torch.autograd.grad(support_loss, list(params.values()))
    stepped = {k: v - 0.1 * g for (k, v), g in zip(params.items(), grads, strict=True)}
    one, accuracy = bilevel_kd_loss(model, params, task, 1, 0.1, "kl", 2.0)
    expected = kd_loss(forward(model, stepped, task.query_x), task.query_t, "kl", 2.0)
    assert torch.allclose(one, expected, atol=1e-6) and not torch.allclose(one, zero, atol=1e-4)
    logits = forward(model, stepped, task.query_x)
    assert float(accuracy) == pytest.approx(float((logits.argmax(1) == task.query_y).float().mean() * 100))
    assert one.requires_grad  # second order: the outer loss reaches the init through the inner step


#: What a white-box method would reach for on a member; the call-only wrapper refuses every one.
INTROSPECTION = (
    "parameters",
    "named_parameters",
    "buffers",
    "named_buffers",
    "modules",
    "named_modules",
    "children",
    "named_children",
    "state_dict",
    "features",
    "head",
    "eval",
    "training",
)


def _call_only(model: nn.Module) -> object:
    """``model`` behind an API: calling it without gradients is all it allows.

    Calling with autograd on (or on an input that requires grad) fails the test, and so does any
    attribute: parameters, buffers, modules, their ``named_*`` forms, ``state_dict``, submodules.
    The model lives only in the closure of the per-member class, not in any attribute.
    """

    class CallOnlyMember:
        __slots__ = ()

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() or x.requires_grad:
                raise AssertionError("bidfmkd_zo asked for a gradient through a member")
            return model(x)

        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"bidfmkd_zo accessed member.{name}; a black-box member can only be called")

        def __setattr__(self, name: str, value: object) -> None:
            raise AssertionError(f"bidfmkd_zo set member.{name}; a black-box member can only be called")

    return CallOnlyMember()


def _black_box(zoo: Zoo) -> Zoo:
    return dataclasses.replace(
        zoo, members=[dataclasses.replace(m, model=_call_only(m.model)) for m in zoo.members]
    )


def test_the_black_box_wrapper_refuses_everything_but_no_grad_calls(tiny_zoo):
    member = _black_box(tiny_zoo).members[0].model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(member(x), tiny_zoo.members[0].model(x))
    with pytest.raises(AssertionError, match="gradient through a member"):
        member(x)
    for name in INTROSPECTION:
        with pytest.raises(AssertionError, match=rf"member\.{name}; a black-box member can only be called"):
            getattr(member, name)
    with pytest.raises(AssertionError, match="set member.training"):
        member.training = False


def _method(name: str, **changes):  # noqa: ANN003, ANN202
    cls = METHODS.get(name)
    smoke = {"generate_iterations": 2, "bank_support": 3, "bank_query": 15, "kd_inner_steps": 2, "ngf": 8}
    smoke.update({"select_every": 10**6, "nz": 16})
    if name.endswith("_zo"):
        smoke.update({"zo_directions": 10, "zo_chunks": 5})
    smoke.update(changes)
    cfg = dataclasses.replace(cls.Config(), name=name, **smoke)
    return cls(cfg, MethodContext(5, 1, 32, 3, CPU, 0))


def test_bidfmkd_zo_only_queries_members_and_counts_every_query(tiny_zoo):
    wrapped = _black_box(tiny_zoo)
    method = _method("bidfmkd_zo", boundary_start=10**6)
    learner = method.meta_train(wrapped, Budget(meta_iterations=3), torch.Generator().manual_seed(0))
    stats, n_cls = method.train_stats, 5
    # per inversion and part: steps * images * (1 + q) ZO queries + one final labelling query
    per_part = lambda per_class: 2 * n_cls * per_class * (1 + 10) + n_cls * per_class  # noqa: E731
    assert stats["member_inversions"] >= 1 and stats["boundary_inversions"] == 0  # boundary_start not reached
    assert stats["teacher_queries"] == stats["member_inversions"] * (per_part(3) + per_part(15))
    assert stats["black_box"] == 1.0 and stats["kd_steps"] == stats["member_inversions"]
    assert stats["inversion_seconds_per_member"] > 0
    episode_x = torch.randn(5, 3, 32, 32)
    assert learner.adapt(episode_x, torch.arange(5))(torch.randn(10, 3, 32, 32)).shape == (10, 5)
    with pytest.raises(AssertionError, match="gradient through a member"):  # the wrapper does bite
        _method("bidfmkd").meta_train(wrapped, Budget(meta_iterations=1), torch.Generator().manual_seed(0))


def test_the_api_answers_probabilities_whose_logs_match_the_members_log_softmax(tiny_zoo):
    api = QueryCountingTeacher(_call_only(tiny_zoo.members[0].model))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    p = api.probabilities(x)
    assert api.queries == 4 and p.shape == (4, 5) and not p.requires_grad
    assert torch.allclose(p.sum(1), torch.ones(4)) and (p >= 0).all()
    with torch.no_grad():
        expected = F.log_softmax(tiny_zoo.members[0].model(x), 1)
    assert torch.allclose(log_probabilities(p), expected, atol=1e-5)
    assert torch.isfinite(log_probabilities(torch.tensor([[1.0, 0.0]]))).all()  # underflow: clamped, not -inf


def test_bidfmkd_zo_boundary_queries_run_black_box(tiny_zoo):
    wrapped = _black_box(tiny_zoo)
    method = _method("bidfmkd_zo", boundary_start=0, patience=0)
    method.meta_train(wrapped, Budget(meta_iterations=4), torch.Generator().manual_seed(0))
    stats = method.train_stats
    assert stats["member_inversions"] == 4  # patience 0: a new member every iteration
    # every inversion after the first (no student yet) synthesises its query set with the boundary term
    assert stats["boundary_inversions"] == stats["member_inversions"] - 1 > 0


def test_white_box_boundary_term_is_the_shared_masked_kl(tiny_zoo):
    from bench.learners.maml import module_params
    from zoos.meta_model import fresh_meta_model

    method = _method("bidfmkd", boundary_weight=0.7)
    member, student = tiny_zoo.members[0], fresh_meta_model(method.context, 32)
    frozen = {k: v.detach() for k, v in module_params(student).items()}
    x, labels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 5
    t, s = member.model(x), student(x)
    agree = (t.argmax(1) == s.argmax(1)).float()
    assert 0 < agree.sum() < len(agree)  # the mask keeps some images and drops others
    kl = (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum(1)
    by_hand = F.cross_entropy(t, labels) - 0.7 * (agree * kl).mean()
    loss = method._white_box_loss(member, x, labels, student, frozen)
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert torch.equal(method._white_box_loss(member, x, labels, None, None), F.cross_entropy(t, labels))


def test_bidfmkd_inverts_the_next_member_when_replay_accuracy_stalls(tiny_zoo):
    patient = _method("bidfmkd", patience=100)
    patient.meta_train(tiny_zoo, Budget(meta_iterations=5), torch.Generator().manual_seed(0))
    impatient = _method("bidfmkd", patience=0)  # 0: a new member every iteration
    impatient.meta_train(tiny_zoo, Budget(meta_iterations=5), torch.Generator().manual_seed(0))
    assert patient.train_stats["member_inversions"] == 1 == patient.train_stats["kd_steps"]
    assert impatient.train_stats["member_inversions"] == 5
    assert impatient.train_stats["inversion_seconds_per_member"] > 0
    assert impatient.train_stats["boundary_inversions"] == 4  # boundary_start 0: all but the first
    assert impatient.train_stats["teacher_queries"] > patient.train_stats["teacher_queries"]


def test_bidfmkd_leaves_out_members_with_fewer_classes_than_the_task(tiny_zoo, caplog):
    from baselines._bank import distillable_members

    cls = METHODS.get("bidfmkd")
    method = cls(dataclasses.replace(cls.Config(), name="bidfmkd"), MethodContext(6, 1, 32, 3, CPU, 0))
    with pytest.raises(BenchError, match="members need >= 6 classes for 6-way tasks; none has"):
        method.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    # PURER's 64-class split: the last member holds 4 classes and cannot give a 5-way task
    last = tiny_zoo.members[-1]
    short = dataclasses.replace(last, spec=dataclasses.replace(last.spec, classes=last.spec.classes[:4]))
    zoo = dataclasses.replace(tiny_zoo, members=[*tiny_zoo.members[:-1], short])
    stats: dict = {}
    kept = distillable_members(zoo, 5, "bidfmkd", stats)
    assert kept.members == tiny_zoo.members[:-1] and stats["members_too_few_classes"] == 1
    assert "1 member(s) with fewer than 5 classes left out: member" in caplog.text
    impatient = _method("bidfmkd", patience=0)  # a new member every iteration: never the short one
    impatient.meta_train(zoo, Budget(meta_iterations=4), torch.Generator().manual_seed(0))
    assert impatient.train_stats["members_too_few_classes"] == 1
    assert impatient.train_stats["member_inversions"] == 4
    bad = _method("bidfmkd", kd_loss="kl_probs")
    with pytest.raises(BenchError, match="kl_prob_legacy"):
        bad.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
