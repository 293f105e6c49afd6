"""dfml-zoo export / import: one build carried between caches, verified, never half-written."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

import zoos.archive as archive_module
from bench.errors import BenchError, IntegrityError
from bench.hashing import sha256_file
from tests.fixtures.zoo_builds import rebuild_member
from tests.test_zoo_cli import TINY, _run
from zoos.archive import export_zoo, import_zoo
from zoos.cli import find_manifest
from zoos.zoo import build_hash


@pytest.fixture
def exported(tmp_path, tiny_zoo) -> Path:
    """The session's tiny zoo build, exported from the session cache."""
    out = tmp_path / "tiny.tar.gz"
    export_zoo(find_manifest("tiny_conv4"), out)
    return out


@pytest.fixture
def other_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache the imports go to."""
    cache = tmp_path / "other-cache"
    cache.mkdir()
    monkeypatch.setenv("DFML_CACHE", str(cache))
    return cache


def _files(cache: Path) -> dict[str, str]:
    """Every file under ``cache`` with its sha256 (what an import wrote, leftovers included)."""
    return {str(p.relative_to(cache)): sha256_file(p) for p in sorted(cache.rglob("*")) if p.is_file()}


def _rewrite(archive: Path, out: Path, change) -> Path:  # noqa: ANN001
    """Copy ``archive`` to ``out`` with ``change(name, data) -> (name, data) | None`` per entry."""
    with tarfile.open(archive, "r:*") as source, tarfile.open(out, "w") as target:
        for entry in source:
            data = source.extractfile(entry).read()
            changed = change(entry.name, data)
            if changed is not None:
                info = tarfile.TarInfo(changed[0])
                info.size = len(changed[1])
                target.addfile(info, io.BytesIO(changed[1]))
    return out


def test_import_puts_the_exact_build_in_an_empty_cache(exported, other_cache, tiny_zoo):
    report = import_zoo(exported)
    assert report.build == tiny_zoo.weights_sha256
    assert sorted(report.added) == sorted(m.key for m in tiny_zoo.members) and not report.replaced
    for member in tiny_zoo.members:
        assert sha256_file(other_cache / "zoo_members" / member.key / "weights.pt") == member.weights_sha256
    assert not list((other_cache / "zoo_members").glob(".*")), "the staging directory is removed"
    again = import_zoo(exported)
    assert again.present == report.added and not again.added and not again.replaced


def test_cli_round_trip_then_the_build_trains_nothing(tmp_path, zoo_cache, small_glyphs):
    """Build in one cache, export, import into another: `dfml-zoo build` there loads every member."""
    cache = zoo_cache
    assert _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=cache).returncode == 0
    archive = tmp_path / "ss.tar"
    done = _run("dfml-zoo", "export", "glyphs_ss_conv4", "--out", str(archive), cwd=tmp_path, cache=cache)
    assert done.returncode == 0 and "4 members" in done.stdout, done.stderr
    second = tmp_path / "second"
    second.mkdir()
    (second / "datasets").symlink_to(cache / "datasets", target_is_directory=True)
    imported = _run("dfml-zoo", "import", str(archive), cwd=tmp_path, cache=second)
    assert imported.returncode == 0 and "4 members added" in imported.stdout, imported.stderr
    build = _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=second)
    assert build.returncode == 0 and "0 trained" in build.stdout, build.stderr
    (first_manifest,) = (cache / "zoos").glob("*/manifest.json")
    (second_manifest,) = (second / "zoos").glob("*/manifest.json")
    weights = [
        [m["weights_sha256"] for m in json.loads(p.read_text())["members"]]
        for p in (first_manifest, second_manifest)
    ]
    assert weights[0] == weights[1]


def test_a_damaged_weights_file_is_refused_and_nothing_is_written(tmp_path, exported, other_cache):
    def flip(name: str, data: bytes) -> tuple[str, bytes]:
        return (name, data[:-1] + bytes([data[-1] ^ 1])) if name.endswith("weights.pt") else (name, data)

    damaged = _rewrite(exported, tmp_path / "damaged.tar", flip)
    with pytest.raises(IntegrityError, match="damaged"):
        import_zoo(damaged)
    assert _files(other_cache) == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda name, data: ("../escape.json", data) if name.endswith("manifest.json") else (name, data),
            "unexpected entry",
        ),
        (
            lambda name, data: None if name == "dfml-zoo-archive.json" else (name, data),
            "no dfml-zoo-archive.json",
        ),
        (lambda name, data: None if name.endswith("spec.json") else (name, data), "lacks spec.json"),
    ],
    ids=["path-outside-the-layout", "no-header", "member-incomplete"],
)
def test_a_malformed_archive_is_refused_by_name(tmp_path, exported, other_cache, change, message):
    with pytest.raises(BenchError, match=message):
        import_zoo(_rewrite(exported, tmp_path / "bad.tar", change))
    assert not (tmp_path / "escape.json").exists() and _files(other_cache) == {}


def _edit_json(name: str, data: bytes, suffix: str, edit) -> tuple[str, bytes]:  # noqa: ANN001
    """``edit`` the JSON entry ending in ``suffix`` (in place); other entries unchanged."""
    if not name.endswith(suffix):
        return name, data
    obj = json.loads(data)
    edit(obj)
    return name, json.dumps(obj).encode()


def _escape_key(manifest: dict) -> None:
    manifest["members"][0]["key"] = "../../4aefaa4119352953"


def test_member_keys_are_checked_before_any_path_is_made_of_them(tmp_path, exported, other_cache):
    bad = _rewrite(
        exported, tmp_path / "bad.tar", lambda n, d: _edit_json(n, d, "manifest.json", _escape_key)
    )
    with pytest.raises(IntegrityError, match="member 0 lacks a valid index, key"):
        import_zoo(bad)
    assert _files(other_cache) == {} and not (tmp_path / "4aefaa4119352953").exists()


def test_members_swapped_with_consistent_hashes_are_refused(tmp_path, exported, other_cache, tiny_zoo):
    """Weights + member.json of members 0 and 1 exchanged, manifest and header re-hashed to match:
    every weights hash agrees, yet member 0's directory holds member 1. The spec/key check sees it."""
    k0, k1 = tiny_zoo.members[0].key, tiny_zoo.members[1].key
    swap = {f"zoo_members/{k0}/": f"zoo_members/{k1}/", f"zoo_members/{k1}/": f"zoo_members/{k0}/"}
    shas = [m.weights_sha256 for m in tiny_zoo.members]
    shas[0], shas[1] = shas[1], shas[0]

    def manifest(obj: dict) -> None:
        for member, sha in zip(obj["members"], shas, strict=True):
            member["weights_sha256"] = sha

    def header(obj: dict) -> None:
        obj["build"] = build_hash(shas)

    def change(name: str, data: bytes) -> tuple[str, bytes]:
        for old, new in swap.items():
            if name.startswith(old) and not name.endswith("spec.json"):
                return name.replace(old, new), data
        name, data = _edit_json(name, data, "manifest.json", manifest)
        return _edit_json(name, data, "dfml-zoo-archive.json", header)

    with pytest.raises(IntegrityError, match=rf"member 0 \({k0}\): its member.json names another member"):
        import_zoo(_rewrite(exported, tmp_path / "swapped.tar", change))
    assert _files(other_cache) == {}


def test_size_bounds_and_unlisted_entries(tmp_path, exported, other_cache, tiny_zoo, monkeypatch):
    key = tiny_zoo.members[0].key
    numel = sum(t.numel() for t in tiny_zoo.members[0].model.state_dict().values())
    oversized = 8 * numel + archive_module.WEIGHTS_SLACK + 1  # one byte over the bound

    def pad(name: str, data: bytes) -> tuple[str, bytes]:
        return (
            (name, data + bytes(oversized - len(data)))
            if name == f"zoo_members/{key}/weights.pt"
            else (name, data)
        )

    with pytest.raises(IntegrityError, match=rf"{key}/weights.pt is {oversized:,} bytes, more than"):
        import_zoo(_rewrite(exported, tmp_path / "big.tar", pad))
    monkeypatch.setattr(archive_module, "MAX_JSON", 100)
    with pytest.raises(
        IntegrityError, match=r"dfml-zoo-archive.json is [\d,]+ bytes \(a JSON entry here may hold 100\)"
    ):
        import_zoo(exported)
    monkeypatch.undo()
    stray = "zoo_members/ffffffffffffffff/weights.pt"
    with tarfile.open(exported) as source, tarfile.open(tmp_path / "stray.tar", "w") as target:
        for entry in source:
            target.addfile(entry, source.extractfile(entry))
        info = tarfile.TarInfo(stray)
        info.size = 4
        target.addfile(info, io.BytesIO(b"1234"))
    with pytest.raises(IntegrityError, match=f"it holds '{stray}', which its manifest does not list"):
        import_zoo(tmp_path / "stray.tar")
    garbled = _rewrite(
        exported, tmp_path / "garbled.tar", lambda n, d: (n, b"{no" if n.endswith("archive.json") else d)
    )
    with pytest.raises(IntegrityError, match="dfml-zoo-archive.json is not usable JSON"):
        import_zoo(garbled)
    assert _files(other_cache) == {}


def test_another_build_in_the_cache_is_kept_unless_replace(exported, other_cache, tiny_zoo):
    import_zoo(exported)
    victim = tiny_zoo.members[1]
    theirs = rebuild_member(other_cache, victim.key)
    before = _files(other_cache)
    with pytest.raises(BenchError, match=rf"another build of 1 member.*member 1 \({victim.key}\).*--replace"):
        import_zoo(exported)
    assert _files(other_cache) == before, "a refused import writes nothing"
    assert theirs != victim.weights_sha256
    report = import_zoo(exported, replace=True)
    assert report.replaced == [victim.key] and len(report.present) == len(tiny_zoo.members) - 1
    assert sha256_file(other_cache / "zoo_members" / victim.key / "weights.pt") == victim.weights_sha256


def test_a_damaged_copy_of_the_same_build_is_repaired_without_replace(exported, other_cache, tiny_zoo):
    import_zoo(exported)
    weights = other_cache / "zoo_members" / tiny_zoo.members[0].key / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    report = import_zoo(exported)
    assert report.replaced == [tiny_zoo.members[0].key]
    assert sha256_file(weights) == tiny_zoo.members[0].weights_sha256
    info = weights.parent / "member.json"  # a truncated member.json is a damaged copy too
    info.write_text(info.read_text()[:10])
    assert import_zoo(exported).replaced == [tiny_zoo.members[0].key]
    assert json.loads(info.read_text())["weights_sha256"] == tiny_zoo.members[0].weights_sha256


def test_export_refuses_a_corrupt_cache_and_a_bad_archive_name(tmp_path, tiny_zoo, monkeypatch):
    manifest = find_manifest("tiny_conv4")
    with pytest.raises(BenchError, match=r"must end in one of \.tar, \.tar\.gz, \.tgz"):
        export_zoo(manifest, tmp_path / "zoo.zip")
    tampered = json.loads(json.dumps(manifest))
    tampered["members"][0]["weights_sha256"] = "0" * 64
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        export_zoo(tampered, tmp_path / "zoo.tar")
    assert not (tmp_path / "zoo.tar").exists()


def test_weights_of_another_shape_are_refused_even_with_matching_hashes(
    tmp_path, exported, other_cache, tiny_zoo
):
    """Member 0's weights replaced by a tensor dict of other shapes, every hash rewritten to match."""
    key = tiny_zoo.members[0].key
    state = {
        k: v[..., :1].clone() if v.dim() > 1 else v for k, v in tiny_zoo.members[0].model.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    digest = hashlib.sha256(weights).hexdigest()
    shas = [digest] + [m.weights_sha256 for m in tiny_zoo.members[1:]]

    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if name == f"zoo_members/{key}/weights.pt":
            return name, weights
        if name == f"zoo_members/{key}/member.json":
            return _edit_json(name, data, "member.json", lambda info: info.update(weights_sha256=digest))
        if name.endswith("manifest.json"):
            return _edit_json(
                name, data, "manifest.json", lambda m: m["members"][0].update(weights_sha256=digest)
            )
        return _edit_json(name, data, "dfml-zoo-archive.json", lambda h: h.update(build=build_hash(shas)))

    with pytest.raises(
        IntegrityError, match=rf"member 0 \({key}\): weights.pt does not fit its spec's model"
    ):
        import_zoo(_rewrite(exported, tmp_path / "reshaped.tar", change))
    assert _files(other_cache) == {}


def test_an_archive_of_another_format_says_so(tmp_path, exported, other_cache):
    future = _rewrite(
        exported,
        tmp_path / "future.tar",
        lambda n, d: _edit_json(
            n, d, "dfml-zoo-archive.json", lambda h: h.update(format="dfml-zoo-archive/2")
        ),
    )
    with pytest.raises(
        BenchError, match="format 'dfml-zoo-archive/2'; this version reads 'dfml-zoo-archive/1'"
    ):
        import_zoo(future)


def test_a_header_naming_another_build_is_refused(tmp_path, exported, other_cache, tiny_zoo):
    wrong = _rewrite(
        exported,
        tmp_path / "wrong.tar",
        lambda n, d: _edit_json(n, d, "dfml-zoo-archive.json", lambda h: h.update(build="0" * 64)),
    )
    with pytest.raises(
        IntegrityError, match=rf"make build {tiny_zoo.weights_sha256[:12]}\.\.\., the header says 0{{12}}"
    ):
        import_zoo(wrong)
    assert _files(other_cache) == {}


def test_a_file_that_is_no_archive_is_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an archive\n")
    with pytest.raises(BenchError) as refused:
        archive_module.import_zoo(notes)
    message = str(refused.value)
    assert "is not a readable zoo archive (a .tar or .tar.gz written by `dfml-zoo export`)" in message
    assert "\n" not in message  # tarfile's per-method report of its attempts stays out
    with pytest.raises(BenchError, match=r"is a directory, not a zoo archive"):
        archive_module.import_zoo(tmp_path)
