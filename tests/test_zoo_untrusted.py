"""TDS's untrustworthy members: a seeded subset relabelled (deranged label map) or shipped untrained."""

from __future__ import annotations

import pytest
import torch

from bench.errors import BenchError
from tests.conftest import TINY_ZOO
from zoos.card import render_card
from zoos.members import member_specs
from zoos.train import member_tensors
from zoos.zoo import load_or_build_zoo

UNTRUSTED = {**TINY_ZOO, "name": "tiny_untrusted", "untrusted": {"fraction": 0.67, "kind": "mixed"}}


def test_a_seeded_subset_is_marked_and_the_others_keep_their_keys(small_glyphs):
    plain = member_specs(TINY_ZOO, {"": small_glyphs})
    marked = member_specs(UNTRUSTED, {"": small_glyphs})
    kinds = [s.extra.get("untrusted") for s in marked]
    assert sorted(k for k in kinds if k) == ["relabelled", "untrained"]  # round(0.67 * 3) = 2, alternating
    for before, after in zip(plain, marked, strict=True):
        assert (before.key == after.key) == (after.extra.get("untrusted") is None)
    relabelled = next(s for s in marked if s.extra.get("untrusted") == "relabelled")
    perm = relabelled.extra["label_permutation"]
    assert sorted(perm) == list(range(5)) and all(p != i for i, p in enumerate(perm))  # a derangement
    assert [s.key for s in member_specs(UNTRUSTED, {"": small_glyphs})] == [s.key for s in marked]
    _, labels, _, _ = member_tensors(relabelled, small_glyphs, torch.device("cpu"))
    assert set(labels.tolist()) == set(range(5)) and labels[0].item() == perm[0]


def test_built_untrusted_members_mislead_on_their_claimed_classes(small_glyphs):
    zoo = load_or_build_zoo(UNTRUSTED, small_glyphs, "cpu")
    by_kind = {m.spec.extra.get("untrusted"): m for m in zoo.members}
    trusted, relabelled, untrained = by_kind[None], by_kind["relabelled"], by_kind["untrained"]
    claimed_acc = {}
    for name, member in (("trusted", trusted), ("relabelled", relabelled), ("untrained", untrained)):
        spec = member.spec
        x, y, _, _ = member_tensors(spec, small_glyphs, torch.device("cpu"))
        claimed = torch.arange(5).repeat_interleave(len(y) // 5)  # images are class-blocked, local order
        with torch.no_grad():
            predicted = member.model(x).argmax(1)
        claimed_acc[name] = float((predicted == claimed).float().mean())
    assert claimed_acc["trusted"] > 0.9
    assert (
        claimed_acc["relabelled"] < 0.2 and relabelled.heldout_acc > 50.0
    )  # confident, in its own label map
    assert claimed_acc["untrained"] < 0.5
    card = render_card(zoo.manifest, [])
    assert card.count("**untrusted: relabelled**") == 1 and card.count("**untrusted: untrained**") == 1


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"fraction": 1.5}, r"zoo.untrusted.fraction must be in \[0, 1\]; got 1.5"),
        (
            {"fraction": 0.2, "kind": "evil"},
            r"zoo.untrusted.kind='evil' is not one of: foreign, relabelled, untrained, mixed",
        ),
        (
            {"fraction": 0.2, "kind": "mixed", "mix": ["relabelled", "mixed"]},
            r"zoo.untrusted.mix has \['mixed'\]; valid: foreign, relabelled, untrained",
        ),
    ],
)
def test_bad_untrusted_settings_are_named(block, message, small_glyphs):
    with pytest.raises(BenchError, match=message):
        member_specs({**TINY_ZOO, "untrusted": block}, {"": small_glyphs})


def _omniglot(shared_data):  # noqa: ANN001, ANN202
    root = shared_data / "omniglot"
    if not root.is_dir():
        pytest.skip(f"Omniglot subsets not found at {root} (../shared/data/omniglot)")
    return {"name": "omniglot", "root": str(root), "image_size": 32, "channels": 3}


def test_foreign_members_are_trained_on_another_dataset_and_claim_zoo_classes(small_glyphs, shared_data):
    """TDS's 'trained on another dataset, classes relabelled': Omniglot weights presented as glyph classes."""
    from bench.data import load_dataset
    from zoos.zoo import zoo_specs

    cfg = {
        **TINY_ZOO,
        "name": "tiny_foreign",
        "untrusted": {
            "fraction": 0.67,
            "kind": "mixed",
            "mix": ["foreign", "untrained"],
            "foreign_dataset": _omniglot(shared_data),
        },
    }
    specs, datasets = zoo_specs(cfg, small_glyphs)
    omniglot = datasets["omniglot"]
    foreign = next(s for s in specs if s.extra.get("untrusted") == "foreign")
    assert foreign.classes == member_specs(TINY_ZOO, {"": small_glyphs})[foreign.index].classes  # claims
    assert foreign.training_dataset == "omniglot" and len(foreign.training_classes) == 5
    omniglot_train = {omniglot.class_names[i] for i in omniglot.split_classes("train")}
    assert set(foreign.training_classes) <= omniglot_train
    x, y, _, _ = member_tensors(foreign, omniglot, torch.device("cpu"))
    first = omniglot.class_names.index(foreign.training_classes[0])
    expected = omniglot.normalize(omniglot.read_rows(omniglot.class_rows(first)[:1]), torch.device("cpu"))
    assert torch.equal(x[:1], expected) and y[0].item() == 0
    with pytest.raises(BenchError, match="trains on 'omniglot', not 'glyphs'"):
        member_tensors(foreign, small_glyphs, torch.device("cpu"))
    zoo = load_or_build_zoo(cfg, small_glyphs, "cpu")
    member = zoo.members[foreign.index]
    assert member.heldout_acc > 50.0  # it learned its own (Omniglot) classes
    gx, _, _, _ = member_tensors(
        member_specs(TINY_ZOO, {"": small_glyphs})[foreign.index], small_glyphs, "cpu"
    )
    claimed = torch.arange(5).repeat_interleave(len(gx) // 5)
    with torch.no_grad():
        assert float((member.model(gx).argmax(1) == claimed).float().mean()) < 0.5  # useless on its claims
    assert "**untrusted: foreign** (trained on omniglot" in render_card(zoo.manifest, [])
    with pytest.raises(BenchError, match="needs untrusted.foreign_dataset"):
        member_specs({**cfg, "untrusted": {**cfg["untrusted"], "foreign_dataset": None}}, {"": small_glyphs})
    small = load_dataset({**_omniglot(shared_data), "image_size": 28})
    with pytest.raises(BenchError, match="'omniglot' is 28px x3; the zoo's members take 32px x3"):
        member_specs(cfg, {"": small_glyphs}, small)


def test_the_foreign_dataset_is_loaded_only_when_a_member_needs_it(small_glyphs, tmp_path):
    from zoos.zoo import zoo_specs

    missing = {"name": "omniglot", "root": str(tmp_path / "nowhere"), "image_size": 32, "channels": 3}
    untrained = {**TINY_ZOO, "untrusted": {"fraction": 0.67, "kind": "untrained", "foreign_dataset": missing}}
    specs, datasets = zoo_specs(untrained, small_glyphs)  # no Omniglot read: no foreign member
    assert set(datasets) == {"glyphs"} and sum(s.extra.get("untrusted") == "untrained" for s in specs) == 2
    with pytest.raises(BenchError, match="nowhere"):
        zoo_specs({**untrained, "untrusted": {**untrained["untrusted"], "kind": "foreign"}}, small_glyphs)
