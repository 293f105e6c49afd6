"""Zoo architectures and scenarios: resnets, SH/MH assignment, meta-train-only classes, determinism."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from bench.errors import BenchError
from bench.overrides import group_options
from purer.teachers import FoldedConv4Teacher, HookedTeacher, MappedTeacher, teacher_forward
from tests.conftest import SMALL_GLYPHS
from zoos.architectures import build_model
from zoos.card import _near_chance_line
from zoos.members import assign_archs, check_meta_train_only, member_specs, recipe_for
from zoos.spec import MemberSpec, TrainRecipe
from zoos.train import near_chance, recalibrate_bn
from zoos.zoo import InputMapped, input_map, load_or_build_zoo, zoo_datasets

ARCHS = ("conv4", "resnet10", "resnet18", "resnet12")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (84, 3)])
def test_every_arch_maps_images_to_logits_at_28_32_84(arch, size, channels):
    model = build_model(arch, 5, size, channels, torch.Generator().manual_seed(0)).eval()
    x = torch.randn(2, channels, size, size)
    assert model(x).shape == (2, 5)
    assert model.embed(x).shape == (2, model.feature_dim)
    assert torch.allclose(model.head(model.embed(x)), model(x))


def test_resnet_reference_stem_has_no_relu_or_maxpool_and_the_flag_restores_them():
    gen = torch.Generator().manual_seed(0)
    reference = build_model("resnet18", 5, 32, 3, gen)
    standard = build_model("resnet18", 5, 32, 3, gen, reference_stem=False)
    assert [type(m) for m in reference.stem] == [nn.Conv2d, nn.BatchNorm2d]
    assert [type(m) for m in standard.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert reference.stem[0].stride == (1, 1) and reference.stem[0].kernel_size == (3, 3)


def test_resnet_stage_maps_at_84px_are_84_42_21_11_and_blocks_match_depth():
    model = build_model("resnet18", 5, 84, 3, torch.Generator().manual_seed(0)).eval()
    sides = []
    for block in model.features:
        block.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    model(torch.randn(1, 3, 84, 84))
    assert sides == [84, 84, 42, 42, 21, 21, 11, 11]
    resnet10 = build_model("resnet10", 5, 84, 3, torch.Generator())
    assert len(resnet10.features) == 4 and resnet10.head.in_features == 512


def test_sh_cyclic_assignment_is_purers_i_mod_3_and_random_is_seeded():
    cfg = {"name": "sh", "arch": ["conv4", "resnet10", "resnet18"], "seed": 3}
    archs = assign_archs(cfg, 13)
    assert [i for i, a in enumerate(archs) if a == "conv4"] == [0, 3, 6, 9, 12]
    assert [i for i, a in enumerate(archs) if a == "resnet10"] == [1, 4, 7, 10]
    drawn = assign_archs({**cfg, "arch_assignment": "random"}, 100)
    assert drawn == assign_archs({**cfg, "arch_assignment": "random"}, 100)
    assert set(drawn) == set(cfg["arch"]) and drawn != assign_archs(cfg, 100)  # not the cycle
    assert drawn != assign_archs({**cfg, "seed": 4, "arch_assignment": "random"}, 100)  # seeded
    with pytest.raises(BenchError, match=r"unknown architecture 'resnet81'; did you mean 'resnet18'"):
        assign_archs({**cfg, "arch": ["conv4", "resnet81"]}, 2)
    with pytest.raises(BenchError, match="arch_assignment 'cycle'; valid: cyclic, random"):
        assign_archs({**cfg, "arch_assignment": "cycle"}, 2)


def test_resnet_recipe_overrides_apply_per_arch():
    cfg = {
        "arch": ["conv4", "resnet10"],
        "recipe": {"optimizer": "adam", "epochs": 3},
        "recipe_by_arch": {"resnet10": {"optimizer": "sgd", "weight_decay": 5e-4}},
    }
    assert recipe_for(cfg, "conv4") == TrainRecipe(optimizer="adam", epochs=3)
    assert recipe_for(cfg, "resnet10") == TrainRecipe(optimizer="sgd", epochs=3, weight_decay=5e-4)


def _zoo_config(name: str, dataset: str, *overrides: str):
    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"zoo={name}", f"dataset={dataset}", *overrides])
    return OmegaConf.to_container(cfg.zoo, resolve=True), OmegaConf.to_container(cfg.dataset, resolve=True)


@pytest.mark.parametrize("zoo", ["glyphs_ss_conv4", "glyphs_sh", "glyphs_scale_100"])
def test_shipped_glyphs_zoos_only_ever_see_meta_train_classes(zoo, small_glyphs):
    zoo_cfg, _ = _zoo_config(zoo, "glyphs")
    specs = member_specs({**zoo_cfg, "n_members": min(zoo_cfg["n_members"], 40)}, {"": small_glyphs})
    train = {small_glyphs.class_names[i] for i in small_glyphs.split_classes("train")}
    held_out = {small_glyphs.class_names[i] for s in ("val", "test") for i in small_glyphs.split_classes(s)}
    seen = {c for spec in specs for c in spec.classes}
    assert seen <= train and not seen & held_out


def test_a_member_with_a_meta_test_class_is_refused(small_glyphs):
    test_class = small_glyphs.class_names[small_glyphs.split_classes("test")[0]]
    spec = MemberSpec("conv4", {}, "glyphs", "h", (test_class,), 32, 3, 5, TrainRecipe(), 0)
    with pytest.raises(BenchError, match="outside the meta-train split.*may only see meta-train classes"):
        check_meta_train_only(spec, small_glyphs)


def test_every_shipped_zoo_config_composes_and_names_its_dataset():
    for name in group_options("zoo"):
        with initialize_config_module("bench.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"zoo={name}"])
        zoo = cfg.zoo
        assert zoo.name == name and (zoo.get("dataset") or zoo.get("sources")), name
        for arch in [zoo.arch] if isinstance(zoo.arch, str) else zoo.arch:
            assert arch in ("conv4", "resnet10", "resnet18", "resnet12"), (name, arch)


def test_paper_mh_zoo_puts_every_source_at_84px_with_bidfmkd_offsets_order():
    zoo_cfg, _ = _zoo_config("mh_paper", "cifar_fs")
    assert list(zoo_cfg["sources"]) == ["cifar_fs", "mini_imagenet", "cub"]
    assert {s["dataset"]["image_size"] for s in zoo_cfg["sources"].values()} == {84}


def test_zoo_on_another_dataset_is_refused(small_glyphs):
    with pytest.raises(BenchError, match="built on dataset 'omniglot'.*use dataset=omniglot"):
        zoo_datasets({"name": "z", "dataset": "omniglot", "arch": "conv4"}, small_glyphs)


def test_sh_zoo_builds_deterministically_with_per_arch_recipes(small_glyphs, tmp_path, monkeypatch):
    cfg = {
        "name": "tiny_sh",
        "dataset": "glyphs",
        "arch": ["conv4", "resnet10"],
        "arch_options": {"conv4": {"width": 8}},
        "n_members": 2,
        "seed": 1,
        "recipe": {"epochs": 1, "milestones": [1]},
        "recipe_by_arch": {"resnet10": {"optimizer": "sgd", "weight_decay": 5e-4}},
    }
    digests = []
    for run in ("a", "b"):  # two empty caches: the weights must come out bit-identical
        monkeypatch.setenv("DFML_CACHE", str(tmp_path / run))
        zoo = load_or_build_zoo(cfg, small_glyphs)
        digests.append([m.weights_sha256 for m in zoo.members])
    assert digests[0] == digests[1]
    assert [m.spec.arch for m in zoo.members] == ["conv4", "resnet10"] and zoo.heterogeneous
    assert zoo.members[1].spec.recipe.optimizer == "sgd"
    assert zoo.manifest["members"][1]["param_count"] > 4_000_000


@pytest.mark.data
def test_mh_zoo_trains_each_member_on_one_source_with_global_label_offsets(small_glyphs, shared_data):
    omniglot_root = shared_data / "omniglot"
    if not omniglot_root.is_dir():
        pytest.skip(f"real Omniglot subsets not found at {omniglot_root}")
    from bench.data import load_dataset

    omniglot = load_dataset({"name": "omniglot", "root": str(omniglot_root), "image_size": 32})
    cfg = {
        "name": "tiny_mh",
        "arch": ["conv4"],
        "arch_options": {"conv4": {"width": 8}},
        "seed": 0,
        "recipe": {"epochs": 1, "milestones": [1]},
        "sources": {"glyphs": {"n_members": 2, "dataset": {}}, "omniglot": {"n_members": 1, "dataset": {}}},
    }
    datasets = {"glyphs": small_glyphs, "omniglot": omniglot}
    specs = member_specs(cfg, datasets)
    assert [s.dataset for s in specs] == ["glyphs", "glyphs", "omniglot"]
    train_omniglot = {omniglot.class_names[i] for i in omniglot.split_classes("train")}
    assert set(specs[2].classes) <= train_omniglot
    cfg["sources"]["glyphs"]["dataset"] = dict(SMALL_GLYPHS)
    cfg["sources"]["omniglot"]["dataset"] = {"name": "omniglot", "root": str(omniglot_root), "image_size": 32}
    zoo = load_or_build_zoo(cfg, small_glyphs)
    n_glyphs = len(small_glyphs.split_classes("train"))
    assert zoo.datasets == ["glyphs", "omniglot"] and zoo.label_offsets == {"glyphs": 0, "omniglot": n_glyphs}
    assert min(zoo.manifest["members"][2]["global_labels"]) >= n_glyphs
    assert len({k for m in zoo.members for k in m.class_keys}) == 15
    # Every member is queried in the run dataset's space: the Omniglot member maps it into its own.
    assert zoo.members[0].input_map is None and zoo.members[0].run_model is zoo.members[0].model
    pixels = torch.rand(4, 3, 32, 32)

    def normalised(d):  # noqa: ANN001, ANN202
        return (pixels - torch.tensor(d.mean).view(-1, 1, 1)) / torch.tensor(d.std).view(-1, 1, 1)

    as_run, as_own = normalised(small_glyphs), normalised(omniglot)
    omniglot_member = zoo.members[2]
    assert isinstance(omniglot_member.run_model, InputMapped)
    assert torch.allclose(omniglot_member.run_model(as_run), omniglot_member.model(as_own), atol=1e-5)
    mapped = teacher_forward(omniglot_member.run_model)
    assert isinstance(mapped, MappedTeacher) and isinstance(mapped.inner, FoldedConv4Teacher)
    logits, moments = mapped(as_run)
    hooked_logits, hooked_moments = HookedTeacher(omniglot_member.model)(as_own)
    assert torch.allclose(logits, hooked_logits, atol=1e-4)
    for (m1, v1), (m2, v2) in zip(moments, hooked_moments, strict=True):
        assert torch.allclose(m1, m2, atol=1e-4) and torch.allclose(v1, v2, rtol=1e-3, atol=1e-4)
    on_omniglot = load_or_build_zoo(cfg, omniglot)  # tested on Omniglot: the glyphs members are mapped
    assert on_omniglot.members[2].input_map is None and on_omniglot.members[0].input_map is not None
    with pytest.raises(BenchError, match=r"MH\) zoo over \['glyphs', 'omniglot'\].*not one of them"):
        other = load_dataset({**SMALL_GLYPHS, "seed": 1})
        load_or_build_zoo(cfg, other)


def test_recalibrate_bn_sets_running_statistics_to_the_training_images_and_keeps_weights():
    torch.manual_seed(0)
    model = build_model("resnet10", 5, 32, 3, torch.Generator().manual_seed(0)).eval()
    first_bn = model.stem[1]
    first_bn.running_mean.fill_(7.0)  # far from anything the images give
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "batches" not in k
    }
    x = torch.randn(40, 3, 32, 32)
    recalibrate_bn(model, x, batch=40)  # one batch: exactly that batch's statistics
    stem_out = model.stem[0](x)
    assert torch.allclose(first_bn.running_mean, stem_out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first_bn.running_var, stem_out.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert first_bn.momentum == 0.1 and not model.training
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_recalibration_batches_mix_the_class_ordered_images():
    """Images are stored class by class; batches of one class would give within-class variances."""
    model = nn.Sequential(nn.BatchNorm2d(1))
    x = torch.cat([torch.zeros(16, 1, 2, 2), torch.ones(16, 1, 2, 2)]) + 0.01 * torch.randn(32, 1, 2, 2)
    recalibrate_bn(model, x, batch=16)  # stored order: each batch one "class"
    assert float(model[0].running_var) < 0.01
    recalibrate_bn(model, x, batch=16, generator=torch.Generator().manual_seed(0))
    assert abs(float(model[0].running_var) - float(x.var())) < 0.1 * float(x.var())


def test_recipe_switches_enter_member_keys_only_when_on():
    """Keys of members built before ``recalibrate_bn_batch`` existed (it off) must not move."""
    assert "recalibrate_bn_batch" not in TrainRecipe().to_json() and "augment" not in TrainRecipe().to_json()
    assert TrainRecipe(recalibrate_bn_batch=128).to_json()["recalibrate_bn_batch"] == 128


@pytest.mark.parametrize("zoo", ["glyphs_sh", "mh_glyphs_omniglot"])
def test_shipped_cpu_sh_and_mh_zoos_give_resnets_enough_steps_and_recalibrated_bn(zoo):
    cfg, _ = _zoo_config(zoo, "glyphs")
    assert recipe_for(cfg, "conv4") == TrainRecipe(
        **{**cfg["recipe"], "milestones": tuple(cfg["recipe"]["milestones"])}
    )
    for arch in ("resnet10", "resnet18"):
        recipe = recipe_for(cfg, arch)
        assert recipe.batch_size == 16 and recipe.recalibrate_bn_batch == 128 and recipe.optimizer == "sgd"


def test_members_near_chance_are_flagged_on_the_card():
    assert near_chance(20.0, 5) and near_chance(30.0, 5) and not near_chance(35.0, 5)
    members = [
        {"index": 0, "arch": "conv4", "heldout_acc": 90.0, "classes": list("abcde")},
        {"index": 1, "arch": "resnet18", "heldout_acc": 20.0, "classes": list("fghij")},
        {
            "index": 2,
            "arch": "conv4",
            "heldout_acc": 20.0,
            "classes": list("klmno"),
            "spec": {"extra": {"untrusted": "untrained"}},
        },  # shipped untrained on purpose
    ]
    line = _near_chance_line(members)
    assert "1 (resnet18, 20.0 %)" in line and "0 (" not in line and "2 (" not in line
    assert _near_chance_line(members[:1]).endswith(": none.")


def test_the_input_map_takes_the_run_normalisation_to_the_members_and_is_none_when_equal():
    glyphs, omniglot = ((0.1,) * 3, (0.27,) * 3), ((0.08,) * 3, (0.22,) * 3)
    assert input_map(glyphs, glyphs, torch.device("cpu")) is None
    scale, shift = input_map(omniglot, glyphs, torch.device("cpu"))
    pixels = torch.rand(2, 3, 4, 4)
    as_run, as_own = (pixels - 0.1) / 0.27, (pixels - 0.08) / 0.22
    assert scale.shape == shift.shape == (3, 1, 1)
    assert torch.allclose(as_run * scale + shift, as_own, atol=1e-6)
    model = build_model("conv4", 5, 32, 3, torch.Generator().manual_seed(0)).eval()
    wrapped = InputMapped(model, scale, shift)
    assert set(wrapped.state_dict()) == {f"inner.{k}" for k in model.state_dict()}  # no extra buffers


def test_a_zoo_with_members_near_chance_says_so_at_every_load(small_glyphs, tmp_path, monkeypatch, caplog):
    """One SGD step at a tiny lr leaves a resnet at chance: the build and each later load warn."""
    monkeypatch.setenv("DFML_CACHE", str(tmp_path))
    cfg = {
        "name": "weak_sh",
        "dataset": "glyphs",
        "arch": ["resnet10"],
        "n_members": 1,
        "seed": 0,
        "recipe": {"epochs": 1, "milestones": [1], "optimizer": "sgd", "lr": 1e-6},
    }
    for _ in range(2):  # build, then load from the cache
        caplog.clear()
        with caplog.at_level("WARNING", logger="zoos.zoo"):
            zoo = load_or_build_zoo(cfg, small_glyphs)
        assert near_chance(zoo.members[0].heldout_acc, 5)
        assert "zoo weak_sh: 1 of 1 members hold out near chance: 0 (resnet10" in caplog.text


def test_averaging_refuses_members_that_need_an_input_map():
    """An MH zoo of one architecture still mixes input spaces: weight averaging must refuse it."""
    from tests.benchmarks.purer_shapes import synthetic_conv4_zoo
    from zoos.averaging import require_same_architecture

    zoo = synthetic_conv4_zoo(n_members=2, n_classes=10)
    require_same_architecture(zoo, "weight_average")  # plain SS: fine
    zoo.members[1].input_map = (torch.ones(3, 1, 1), torch.zeros(3, 1, 1))
    with pytest.raises(BenchError, match=r"weight_average averages parameters.*another normalisation"):
        require_same_architecture(zoo, "weight_average")
