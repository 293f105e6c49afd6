from __future__ import annotations

import torch

from bench.hashing import canonical_json, spec_hash, tensor_sha256
from bench.seeding import derive_seed, make_generator


def test_derive_seed_pinned_values():
    # Pinned: changing derive_seed would silently change every episode suite and zoo.
    assert derive_seed(0, "episode", 0) == 176435181257698090
    assert derive_seed(1, "glyphs") == 8896119340034226796


def test_derive_seed_streams_are_independent_of_new_consumers():
    assert derive_seed(0, "a") != derive_seed(0, "b")
    assert derive_seed(0, "a", 1) != derive_seed(0, "a1")


def test_spec_hash_ignores_dict_order_but_not_values():
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_generators_do_not_touch_global_rng():
    state = torch.get_rng_state()
    torch.randn(3, generator=make_generator(7))
    assert torch.equal(state, torch.get_rng_state())


def test_tensor_sha256_sees_dtype_and_shape():
    a = torch.zeros(4, dtype=torch.uint8)
    assert tensor_sha256(a) != tensor_sha256(a.view(2, 2))
    assert tensor_sha256(a) != tensor_sha256(a.to(torch.int8))


def test_the_git_state_is_read_once_per_process(monkeypatch):
    """A record names the code the process imported, not the checkout at the run's end."""
    import subprocess

    from bench import environment

    environment._git_state_once.cache_clear()
    first = environment.git_state()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-read")))
    assert environment.git_state() == first and environment.git_state() is not environment.git_state()


def test_the_code_checksum_names_every_source_and_config_change(tmp_path, monkeypatch):
    """code_sha256 moves with any .py or .yaml of the packages, and ignores bytecode caches."""
    from bench import environment

    package = tmp_path / "dfml_checksum_probe"
    (package / "conf").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "conf" / "m.yaml").write_text("lr: 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def checksum() -> str:
        environment._code_sha256_once.cache_clear()
        return environment.code_sha256(("dfml_checksum_probe", "dfml_no_such_package"))

    first = checksum()
    assert len(first) == 64 and checksum() == first
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.py").write_text("stale")
    (package / "notes.txt").write_text("not code")
    assert checksum() == first
    (package / "conf" / "m.yaml").write_text("lr: 0.2\n")
    second = checksum()
    assert second != first
    (package / "conf" / "m.yaml").rename(package / "m.yaml")  # same bytes, other place
    assert checksum() not in (first, second)
    environment._code_sha256_once.cache_clear()


def test_a_set_hashes_the_same_under_any_hash_seed():
    import os
    import subprocess
    import sys

    code = "from bench.hashing import spec_hash; print(spec_hash({'m': {'alpha', 'beta', 'gamma', 'delta'}}))"
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in range(6)
    }
    assert len(hashes) == 1
    assert spec_hash({"m": {"beta", "alpha"}}) == spec_hash({"m": ["alpha", "beta"]})
