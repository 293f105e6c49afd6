from __future__ import annotations

import sys
from importlib import resources

import pytest

from bench.data import DATASETS
from bench.errors import BenchError
from bench.method import METHODS
from bench.registry import Registry, unknown_key_message
from zoos.architectures import ARCHITECTURES


def _stems(group: str) -> set[str]:
    return {
        p.name[:-5] for p in (resources.files("bench.conf") / group).iterdir() if p.name.endswith(".yaml")
    }


def test_method_registry_matches_method_yamls():
    assert set(METHODS.names()) == _stems("method")


def test_dataset_registry_matches_dataset_yamls():
    assert set(DATASETS.names()) == _stems("dataset")


def test_unknown_key_suggests_close_names():
    with pytest.raises(BenchError, match=r"unknown method 'weight_avrage'; did you mean 'weight_average'\?"):
        METHODS.get("weight_avrage")


def test_unknown_key_lists_available_without_bogus_suggestion():
    message = unknown_key_message("architecture", "zzz", ["conv4", "resnet18"])
    assert message == "unknown architecture 'zzz'; available: conv4, resnet18"
    with pytest.raises(BenchError, match="available: conv4"):
        ARCHITECTURES.get("conv5x")


def test_register_rejects_non_snake_case_and_duplicates():
    registry: Registry[object] = Registry("thing")
    with pytest.raises(ValueError, match="snake_case"):
        registry.register("BadName")
    registry.register("one")(object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("one")(object())
    first = type("Baseline", (), {"__module__": "baselines.a"})
    second = type("Baseline", (), {"__module__": "baselines.b"})  # another file, the same class name
    registry.register("two")(first)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("two")(second)
    registry.register("two")(type("Baseline", (), {"__module__": "baselines.a"}))  # a re-import: fine


def test_yaml_name_field_equals_file_stem():
    import yaml

    for group in ("method", "dataset", "zoo", "task"):
        for stem in _stems(group):
            data = yaml.safe_load((resources.files("bench.conf") / group / f"{stem}.yaml").read_text())
            assert data["name"] == stem, f"{group}/{stem}.yaml has name {data['name']!r}"


def test_a_broken_plugin_module_is_named_in_a_clear_error(tmp_path, monkeypatch):
    package = tmp_path / "plugins_broken"
    package.mkdir()
    (package / "__init__.py").write_text("")
    good = "from tests.test_registry import BROKEN_DEMO\n\n\n@BROKEN_DEMO.register('good')\nclass Good: ...\n"
    (package / "good.py").write_text(good)
    (package / "half_written.py").write_text("def oops(:\n")
    (package / "wrong_name.py").write_text("import math\n\nx = math.pi\ny = nn.Linear\n")
    (package / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match=r"plugins_broken\.half_written.*SyntaxError.*start with '_'"):
        BROKEN_DEMO.names()
    with pytest.raises(BenchError, match="half_written"):  # raised again, not a silently partial table
        BROKEN_DEMO.get("good")
    (package / "half_written.py").unlink()
    with pytest.raises(BenchError, match=r"plugins_broken\.wrong_name.*wrong_name\.py:4: NameError"):
        BROKEN_DEMO.names()  # the line that failed, not only the module
    (package / "wrong_name.py").unlink()
    assert BROKEN_DEMO.names() == ["good"]
    for name in [m for m in sys.modules if m.startswith("plugins_broken")]:
        monkeypatch.delitem(sys.modules, name)  # a rerun in this session imports afresh


BROKEN_DEMO: Registry[object] = Registry("demo", discover=("plugins_broken",))
