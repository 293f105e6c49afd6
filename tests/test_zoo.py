from __future__ import annotations

import json

import pytest
import torch

from bench.errors import BenchError, IntegrityError
from zoos.members import class_groups
from zoos.spec import MemberSpec
from zoos.zoo import load_or_build_zoo


def test_disjoint_groups_are_contiguous_after_sorting():
    names = [f"c{i:02d}" for i in range(64)][::-1]
    groups = class_groups(names, "disjoint", 5, None, seed=0)
    assert len(groups) == 13 and groups[0] == ["c00", "c01", "c02", "c03", "c04"]
    assert groups[-1] == ["c60", "c61", "c62", "c63"]
    assert sorted(sum(groups, [])) == sorted(names)


def test_disjoint_subset_is_seeded_and_disjoint():
    names = [f"c{i:03d}" for i in range(200)]
    a = class_groups(names, "disjoint", 5, 13, seed=0)
    assert a == class_groups(names, "disjoint", 5, 13, seed=0)
    assert a != class_groups(names, "disjoint", 5, 13, seed=1)
    flat = sum(a, [])
    assert len(flat) == len(set(flat)) == 65


def test_overlapping_groups_have_distinct_classes_each():
    names = [f"c{i}" for i in range(30)]
    groups = class_groups(names, "overlapping", 5, 100, seed=0)
    assert len(groups) == 100 and all(len(set(g)) == 5 for g in groups)
    assert len({tuple(sorted(g)) for g in groups}) > 90  # one draw per member, not one for all
    assert set(sum(groups, [])) <= set(names)
    assert groups == class_groups(names, "overlapping", 5, 100, seed=0)
    assert groups != class_groups(names, "overlapping", 5, 100, seed=1)


@pytest.mark.parametrize(("key", "value"), [("classes_per_member", 0), ("protocol", "")])
def test_a_set_but_empty_zoo_setting_is_refused_not_defaulted(key, value, small_glyphs):
    from zoos.members import source_groups

    cfg = {"name": "z", "arch": "conv4", "n_members": 2, "classes_per_member": 5, "protocol": "disjoint"}
    with pytest.raises(BenchError, match="classes_per_member must be >= 1; got 0|unknown zoo protocol ''"):
        source_groups({**cfg, key: value}, {"": small_glyphs})


@pytest.mark.parametrize(
    ("protocol", "n_members", "pattern"),
    [("disjoint", 1000, "needs 5000 meta-train classes"), ("ring", 3, "unknown zoo protocol 'ring'")],
)
def test_bad_zoo_specs(protocol, n_members, pattern):
    with pytest.raises(BenchError, match=pattern):
        class_groups([f"c{i}" for i in range(30)], protocol, 5, n_members, seed=0)


def test_zoo_members_are_trained_cached_and_described(tiny_zoo, small_glyphs):
    assert len(tiny_zoo.members) == 3
    train_names = {small_glyphs.class_names[i] for i in small_glyphs.split_classes("train")}
    for member in tiny_zoo.members:
        assert set(member.spec.classes) <= train_names
        assert 0.0 <= member.heldout_acc <= 100.0
        assert not member.model.training
        assert all(not p.requires_grad for p in member.model.parameters())
    assert tiny_zoo.members[0].heldout_acc > 50.0  # well above chance (20 %) on 5 classes
    again = load_or_build_zoo({**_tiny_cfg(), "name": "tiny_conv4"}, small_glyphs)
    assert again.key == tiny_zoo.key and again.trained_now == []  # served from the cache
    for a, b in zip(again.members, tiny_zoo.members, strict=True):
        for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
    assert again.weights_sha256 == tiny_zoo.weights_sha256 and len(tiny_zoo.weights_sha256) == 64


def test_the_zoo_weights_hash_tells_two_builds_of_one_configuration_apart(tiny_zoo):
    import dataclasses

    other = dataclasses.replace(tiny_zoo, members=list(tiny_zoo.members))
    other.members[1] = dataclasses.replace(other.members[1], weights_sha256="0" * 64)
    assert other.key == tiny_zoo.key and other.weights_sha256 != tiny_zoo.weights_sha256
    reordered = dataclasses.replace(tiny_zoo, members=tiny_zoo.members[::-1])
    assert reordered.weights_sha256 != tiny_zoo.weights_sha256  # member order matters (labels follow it)


def test_corrupted_member_is_an_error_naming_member_and_fix_then_repair_rebuilds(small_glyphs, cache_root):
    cfg = {**_tiny_cfg(), "name": "corrupt_me", "n_members": 1, "seed": 5}
    zoo = load_or_build_zoo(cfg, small_glyphs)
    weights = cache_root / "zoo_members" / zoo.members[0].key / "weights.pt"
    original = weights.read_bytes()
    weights.write_bytes(original[:-10] + b"0123456789")
    with pytest.raises(IntegrityError, match=r"member 0 .*not match.*dfml-zoo build corrupt_me --repair"):
        load_or_build_zoo(cfg, small_glyphs)
    rebuilt = load_or_build_zoo(cfg, small_glyphs, repair=True)
    assert weights.read_bytes() == original  # deterministic retrain on CPU
    assert rebuilt.members[0].weights_sha256 == zoo.members[0].weights_sha256
    weights.unlink()
    with pytest.raises(IntegrityError, match=r"weights.pt is missing"):
        load_or_build_zoo(cfg, small_glyphs)
    rebuilt = load_or_build_zoo(cfg, small_glyphs, repair=True)
    info = weights.parent / "member.json"
    assert (
        json.loads(info.read_text())["train_aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    )
    for damage in ("unreadable", "missing"):  # --repair also mends the member's metadata
        info.write_text("{not json") if damage == "unreadable" else info.unlink()
        with pytest.raises(IntegrityError, match=r"member.json is missing or unreadable.*--repair"):
            load_or_build_zoo(cfg, small_glyphs)
        rebuilt = load_or_build_zoo(cfg, small_glyphs, repair=True)
        assert rebuilt.members[0].weights_sha256 == zoo.members[0].weights_sha256 and info.is_file()


def test_member_spec_round_trips_through_json(tiny_zoo):
    spec = tiny_zoo.members[1].spec
    assert MemberSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_unknown_arch_is_a_clear_error(small_glyphs):
    with pytest.raises(BenchError, match=r"unknown architecture 'conv44'; did you mean 'conv4'"):
        load_or_build_zoo({**_tiny_cfg(), "arch": "conv44"}, small_glyphs)


def test_a_bad_architecture_option_or_recipe_key_names_the_valid_ones(small_glyphs):
    with pytest.raises(BenchError, match=r"'widht'.*conv4.*valid options: width, batch_stat_bn, global_pool"):
        load_or_build_zoo({**_tiny_cfg(), "arch_options": {"widht": 4}}, small_glyphs)
    with pytest.raises(BenchError, match=r"'epochz'.*valid keys: epochs, batch_size, optimizer"):
        load_or_build_zoo({**_tiny_cfg(), "recipe": {"epochz": 1}}, small_glyphs)
    # a value of the wrong type is named before any member trains (it was a traceback mid-training)
    with pytest.raises(
        BenchError, match=r"zoo recipe epochs='abc' for conv4 is not valid; valid: an integer"
    ):
        load_or_build_zoo({**_tiny_cfg(), "recipe": {"epochs": "abc"}}, small_glyphs)
    with pytest.raises(BenchError, match=r"n_members='abc' is not valid; valid: an integer >= 1 or null"):
        load_or_build_zoo({**_tiny_cfg(), "n_members": "abc"}, small_glyphs)


def _tiny_cfg():
    from tests.conftest import TINY_ZOO

    return dict(TINY_ZOO)


def test_members_record_the_thread_count_their_weights_depend_on(small_glyphs, cache_root):
    """Per-arch thread counts are applied while a member trains, recorded, shown, then restored."""
    from zoos.card import render_card
    from zoos.cli import parse_threads_by_arch
    from zoos.zoo import manifest_path

    cfg = {**_tiny_cfg(), "name": "threads_recorded", "n_members": 2, "seed": 11}
    before = torch.get_num_threads()
    zoo = load_or_build_zoo(cfg, small_glyphs, threads_by_arch=parse_threads_by_arch("conv4=2"))
    assert torch.get_num_threads() == before == 1  # restored (the suite runs one thread)
    for member in zoo.members:
        info = json.loads((cache_root / "zoo_members" / member.key / "member.json").read_text())
        assert info["train_threads"] == 2 and info["torch"] == torch.__version__ and info["train_device_name"]
    manifest = json.loads(manifest_path(zoo.key).read_text())
    assert [m["train_threads"] for m in manifest["members"]] == [2, 2]
    assert manifest["members"][0]["torch"] == torch.__version__
    card = render_card(
        manifest,
        [
            {
                "finished_at": "t",
                "wall_s": 60.0,
                "trained": 2,
                "loaded": 0,
                "device": "cpu",
                "machine": "x86_64, 1 threads",
                "threads_by_arch": {"conv4": 2},
            }
        ],
    )
    assert (
        f"- members trained on {manifest['members'][0]['train_device_name']}, torch {torch.__version__}: "
        in card
    )
    assert "conv4: 2 at 2 threads; numerics: native 2. A retrain" in card
    assert "(x86_64, 1 threads, by arch: conv4 2)" in card
    manifest["members"][0]["train_threads"] = None  # a member built before the field existed
    manifest["members"][1]["train_threads"] = 1
    assert "conv4: 1 at 1 thread, 1 not recorded" in render_card(manifest, [])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("resnet10", r"expects arch=N\[,arch=N...\], e.g. resnet10=2; got 'resnet10'"),
        ("conv4=two", r"got 'conv4=two'"),
        ("resnet18=2", r"no 'resnet18' members; its architectures: \['conv4'\]"),
        ("conv4=0", r"threads by arch: conv4 must be >= 1; got 0"),
        ("conv4=\u00b2", r"got 'conv4=\u00b2'"),
        ("conv4=1,conv4=2", r"names 'conv4' twice"),
    ],
)
def test_bad_threads_by_arch_is_a_clear_error(small_glyphs, text, pattern):
    from zoos.cli import parse_threads_by_arch

    with pytest.raises(BenchError, match=pattern):
        load_or_build_zoo(
            {**_tiny_cfg(), "name": "never_built"}, small_glyphs, threads_by_arch=parse_threads_by_arch(text)
        )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "0"], "--threads must be >= 1 or null; got 0"),
        (["--threads-by-arch", "resnet10"], "--threads-by-arch expects arch=N"),
    ],
)
def test_dfml_zoo_build_refuses_bad_thread_flags_before_building(capsys, flags, message):
    from zoos.cli import main

    assert main(["build", "glyphs_ss_conv4", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_short_last_node_keeps_a_five_wide_head():
    """purer.md §3: 64 classes in nodes of 5 -> 12 nodes of 5 and one of 4, every head 5 wide."""
    from types import SimpleNamespace

    from zoos.members import source_groups

    names = [f"c{i:02d}" for i in range(64)]
    data = SimpleNamespace(class_names=names, split_classes=lambda split: list(range(64)))
    groups = source_groups({"name": "z", "arch": "conv4", "classes_per_member": 5}, {"": data})
    assert [len(g) for _, g, _ in groups] == [5] * 12 + [4]
    assert {width for _, _, width in groups} == {5}


def test_a_member_trains_on_the_first_80_percent_of_each_class_and_holds_out_the_rest(tiny_zoo, small_glyphs):
    """purer.md §5: per class, the first round(0.8 n) stored images train, the others are held out."""
    from zoos.train import member_tensors

    spec = tiny_zoo.members[0].spec
    assert spec.recipe.holdout_fraction == pytest.approx(0.2)
    train_x, train_y, hold_x, hold_y = member_tensors(spec, small_glyphs, torch.device("cpu"))
    start_t = start_h = 0
    for local, name in enumerate(spec.classes):
        rows = small_glyphs.class_rows(small_glyphs.class_names.index(name))
        n_train = round(0.8 * rows.numel())
        images = small_glyphs.normalize(small_glyphs.read_rows(rows))
        assert torch.equal(train_x[start_t : start_t + n_train], images[:n_train])
        assert torch.equal(hold_x[start_h : start_h + rows.numel() - n_train], images[n_train:])
        assert (train_y[start_t : start_t + n_train] == local).all()
        assert (hold_y[start_h : start_h + rows.numel() - n_train] == local).all()
        start_t, start_h = start_t + n_train, start_h + rows.numel() - n_train
    assert start_t == len(train_x) and start_h == len(hold_x) and len(hold_x) > 0


def test_best_holdout_without_held_out_images_is_refused(small_glyphs, cache_root):
    cfg = {**_tiny_cfg(), "name": "no_holdout", "n_members": 1, "seed": 7}
    cfg["recipe"] = {**dict(cfg.get("recipe") or {}), "select": "best_holdout", "holdout_fraction": 0.0}
    with pytest.raises(
        BenchError, match=r"select='best_holdout' needs held-out images.*holdout_fraction=0.0"
    ):
        load_or_build_zoo(cfg, small_glyphs)
