"""OTA: neuron alignment undoes hidden-unit permutations; SS conv4 only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.ota import align_to_anchor, ot_average
from bench.errors import BenchError
from bench.method import METHODS, Budget, MethodContext
from zoos.averaging import average_state


def _permuted_copy(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """The same function with every block's hidden channels shuffled (and the head's inputs to match)."""
    clone = type(model)(model.head.out_features, 32, 3, width=model.head.in_features // 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    previous = None
    for block in range(4):
        conv, bn = f"features.{4 * block}", f"features.{4 * block + 1}"
        perm = torch.randperm(state[f"{conv}.weight"].shape[0], generator=generator)
        if previous is not None:
            state[f"{conv}.weight"] = state[f"{conv}.weight"][:, previous]
        for name in (
            f"{conv}.weight",
            f"{conv}.bias",
            f"{bn}.weight",
            f"{bn}.bias",
            f"{bn}.running_mean",
            f"{bn}.running_var",
        ):
            state[name] = state[name][perm]
        previous = perm
    head = state["head.weight"]
    state["head.weight"] = head.view(head.shape[0], len(previous), -1)[:, previous].reshape(head.shape)
    clone.load_state_dict(state)
    return clone.eval()


def test_alignment_recovers_a_permuted_member_exactly(tiny_zoo):
    member = tiny_zoo.members[0]
    shuffled = _permuted_copy(member.model, torch.Generator().manual_seed(0))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(member.model(x), shuffled(x), atol=1e-5)  # a true symmetry of the net
    aligned, perms = align_to_anchor(member.model.state_dict(), shuffled.state_dict())
    assert len(perms) == 4
    for name, value in member.model.state_dict().items():
        assert torch.allclose(aligned[name].float(), value.float(), atol=1e-6), name


def test_ota_of_a_member_and_its_permutation_is_the_member_but_the_plain_average_is_not(tiny_zoo):
    member = tiny_zoo.members[0]
    shuffled = dataclasses.replace(
        member, model=_permuted_copy(member.model, torch.Generator().manual_seed(1))
    )
    pair = dataclasses.replace(tiny_zoo, members=[member, shuffled])
    fused, plain = ot_average(pair, anchor=0), average_state(pair)
    name = "features.4.weight"
    assert torch.allclose(fused[name], member.model.state_dict()[name], atol=1e-6)
    assert not torch.allclose(plain[name], member.model.state_dict()[name], atol=1e-3)


def test_ota_learner_and_refusals(tiny_zoo, small_glyphs):
    from tests.conftest import TINY_ZOO
    from zoos.zoo import load_or_build_zoo

    cls = METHODS.get("ota")
    method = cls(
        dataclasses.replace(cls.Config(), name="ota"), MethodContext(5, 1, 32, 3, torch.device("cpu"), 0)
    )
    learner = method.meta_train(tiny_zoo, Budget(), torch.Generator())
    assert learner.adapt(torch.randn(5, 3, 32, 32), torch.arange(5))(torch.randn(7, 3, 32, 32)).shape == (
        7,
        5,
    )
    wide = load_or_build_zoo(
        {**TINY_ZOO, "name": "wide", "n_members": 1, "arch_options": {"width": 4}}, small_glyphs
    )
    mixed = dataclasses.replace(tiny_zoo, members=[*tiny_zoo.members, *wide.members])
    with pytest.raises(BenchError, match=r"ota averages parameters.*heterogeneous: conv4\(width=32\)"):
        method.meta_train(mixed, Budget(), torch.Generator())
    bad = cls(dataclasses.replace(cls.Config(), name="ota", anchor=7), method.context)
    with pytest.raises(BenchError, match=r"anchor=7 .*valid: 0\.\.2"):
        bad.meta_train(tiny_zoo, Budget(), torch.Generator())
