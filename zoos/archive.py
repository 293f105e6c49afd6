"""Zoo archives: carry one *build* of a zoo (its members' exact weights) to another cache.

A zoo's key hashes its configuration; the weights its members end up with depend on the CPU and
the torch thread count they were trained on (results/README.md, "Zoo builds"), and every
zoo-reading method's numbers depend on the weights. Rebuilding a zoo on another machine therefore
gives another build, and a leaderboard row made on it is not comparable like for like with rows
made on the first. An archive carries the build itself::

    dfml-zoo export glyphs_sh --out glyphs_sh.tar      # on the machine that built it
    dfml-zoo import glyphs_sh.tar                      # anywhere: verified, then put in the cache

Archive layout (a plain or gzip tar, read member by member; nothing is extracted by path)::

    dfml-zoo-archive.json                       format, zoo name / key, build hash, member count
    zoos/<zoo_key>/manifest.json                the manifest (member specs, weights sha256, ...)
    zoos/<zoo_key>/builds.json                  the build log, when the source cache had one
    zoo_members/<member_key>/{spec.json, member.json, weights.pt}

Import checks, before anything reaches the cache: the entry names (the layout above, each once),
the header's format, every member key and the zoo key (hashes of the specs and of name +
members), each spec.json and member.json against its key and the manifest, size bounds (JSON;
weights at most 8 bytes per state element of the spec's model + 1 MiB), every weights sha256
against member.json and the manifest, every weights file against the shapes of its spec's model
(loaded with ``weights_only=True``), and the build hash against the header. These catch damage
and mix-ups; they cannot tell a deliberately re-hashed archive from a real build, so import
archives from sources you trust. A cache that already holds *another* build of a member is left
alone unless ``replace`` is asked for. Members are moved in one atomic rename
each and the manifest is written last, so an interrupted import leaves whole members only.
Imported members are used by runs whose member specs hash to the same keys, i.e. the same zoo
configuration on a dataset with the same content hash (the manifest's ``datasets``).

Not guarded: a ``--replace`` interrupted between its two renames leaves that member missing (the
next build retrains it, or import again), a killed import leaves a ``zoo_members/.import.*.tmp``
directory (safe to delete), and a build writing the same members at the same time may be
overwritten without ``--replace``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.atomic import _as_if_created, atomic_save, atomic_write_json, is_done
from bench.errors import BenchError, IntegrityError
from bench.hashing import sha256_file, spec_hash
from bench.paths import cache_dir
from zoos.architectures import build_model
from zoos.spec import MemberSpec
from zoos.zoo import build_hash, member_dir, zoo_key_of

FORMAT = "dfml-zoo-archive/1"
HEADER = "dfml-zoo-archive.json"
MEMBER_FILES = ("spec.json", "member.json", "weights.pt")
SUFFIXES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz"}
MAX_JSON = 16 << 20  # bytes: a manifest of a few thousand members stays far below
MAX_MEMBER_JSON = 64 << 10  # bytes of one member's spec.json / member.json
WEIGHTS_SLACK = 1 << 20  # bytes a weights file may hold beyond 8 per state tensor element (pickle)
_KEY = re.compile(r"[0-9a-f]{16}")
_SHA = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(
    r"(dfml-zoo-archive\.json"
    r"|zoos/[0-9a-f]{16}/(manifest|builds)\.json"
    r"|zoo_members/[0-9a-f]{16}/(spec\.json|member\.json|weights\.pt))"
)


def write_mode(out: Path) -> str:
    """The tarfile mode for ``out``'s suffix; BenchError naming the valid ones otherwise."""
    for suffix, mode in SUFFIXES.items():
        if out.name.endswith(suffix):
            return mode
    raise BenchError(f"archive name {out.name!r} must end in one of {', '.join(SUFFIXES)}")


def export_zoo(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the build described by ``manifest`` to the archive ``out`` (atomically); returns its header.

    Every member's weights are re-hashed first: a corrupt cache is refused, not exported.
    """
    mode = write_mode(out)
    weights = []
    for member in manifest["members"]:
        directory = member_dir(member["key"])
        missing = [name for name in MEMBER_FILES if not (directory / name).is_file()]
        if missing or not is_done(directory):
            raise IntegrityError(
                f"zoo {manifest['name']!r} member {member['index']} ({member['key']}) is not complete in "
                f"{cache_dir()} (missing: {', '.join(missing) or 'done marker'}); run "
                f"`dfml-zoo build {manifest['name']}` first"
            )
        actual = sha256_file(directory / "weights.pt")
        if actual != member["weights_sha256"]:
            raise IntegrityError(
                f"zoo {manifest['name']!r} member {member['index']} ({member['key']}): weights sha256 "
                f"{actual[:12]}... does not match the manifest's {member['weights_sha256'][:12]}...; run "
                f"`dfml-zoo build {manifest['name']} --repair` (a repaired member may be another build)"
            )
        weights.append(actual)
    header = {
        "format": FORMAT,
        "zoo": manifest["name"],
        "zoo_key": manifest["key"],
        "build": build_hash(weights),
        "members": len(weights),
        "datasets": manifest["datasets"],
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    builds = cache_dir() / "zoos" / manifest["key"] / "builds.json"

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, mode) as tar:
            _add_bytes(tar, HEADER, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode())
            _add_bytes(tar, f"zoos/{manifest['key']}/manifest.json", json.dumps(manifest, indent=2).encode())
            if builds.is_file():
                _add_bytes(tar, f"zoos/{manifest['key']}/builds.json", builds.read_bytes())
            for member in manifest["members"]:
                for name in MEMBER_FILES:
                    path = member_dir(member["key"]) / name
                    tar.add(path, arcname=f"zoo_members/{member['key']}/{name}", recursive=False)

    atomic_save(out, write)
    return header


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@dataclass
class ImportReport:
    """What an import did: the build, and which members were new, already there or replaced."""

    zoo: str
    zoo_key: str
    build: str
    added: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


def _fail(archive: Path, what: str) -> IntegrityError:
    return IntegrityError(
        f"{str(archive)!r}: {what}; not a sound `dfml-zoo export` archive, nothing imported"
    )


def _load_json(tar: tarfile.TarFile, entry: tarfile.TarInfo, archive: Path, limit: int) -> Any:
    """A JSON entry of at most ``limit`` bytes, parsed; a clear error otherwise."""
    if entry.size > limit:
        raise _fail(archive, f"{entry.name} is {entry.size:,} bytes (a JSON entry here may hold {limit:,})")
    source = tar.extractfile(entry)
    assert source is not None
    try:
        return json.loads(source.read())
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, int limits
        raise _fail(archive, f"{entry.name} is not usable JSON ({type(error).__name__}: {error})") from None


def _check_manifest(archive: Path, header: Any, manifest: Any) -> list[dict[str, Any]]:
    """The manifest's members, after checking the shape of header and manifest and the zoo key."""
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("members"), list)
        or not manifest["members"]
    ):
        raise _fail(archive, "its manifest lists no members")
    members = manifest["members"]
    for i, member in enumerate(members):
        ok = isinstance(member, dict) and isinstance(member.get("spec"), dict)
        ok = (
            ok
            and bool(_KEY.fullmatch(str(member.get("key"))))
            and bool(_SHA.fullmatch(str(member.get("weights_sha256"))))
        )
        if not ok or member.get("index") != i:
            raise _fail(archive, f"manifest member {i} lacks a valid index, key, weights_sha256 or spec")
    keys = [m["key"] for m in members]
    if len(set(keys)) != len(keys):
        raise _fail(archive, "its manifest lists a member twice")
    if zoo_key_of(str(manifest.get("name")), keys) != manifest.get("key"):
        raise _fail(archive, f"zoo key {manifest.get('key')!r} is not the hash of its name and members")
    if (manifest.get("name"), manifest.get("key"), len(members)) != (
        header.get("zoo"),
        header.get("zoo_key"),
        header.get("members"),
    ):
        raise _fail(archive, "its header and manifest name different zoos or member counts")
    return members


def _read_archive(archive: Path, staging: Path) -> tuple[dict[str, Any], dict[str, Any], bytes | None]:
    """Check the archive and copy its members' files into ``staging``; (header, manifest, builds).

    Headers and names are checked first (only the export layout, each name once), then the header
    and the manifest, then each listed member (:func:`_read_member`) as its files are copied.
    """
    if archive.is_dir():
        raise BenchError(f"{str(archive)!r} is a directory, not a zoo archive (a .tar or .tar.gz file)")
    if not archive.is_file():
        raise BenchError(f"zoo archive {str(archive)!r} not found")
    try:
        tar = tarfile.open(archive, "r:*")
        with tar:
            entries = tar.getmembers()
            return _read_entries(archive, tar, entries, staging)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
        reason = (
            str(error).strip().splitlines()[0].rstrip(":") if str(error).strip() else type(error).__name__
        )
        raise BenchError(
            f"{str(archive)!r} is not a readable zoo archive (a .tar or .tar.gz written by "
            f"`dfml-zoo export`): {reason}"
        ) from None


def _read_entries(
    archive: Path, tar: tarfile.TarFile, entries: list[tarfile.TarInfo], staging: Path
) -> tuple[dict[str, Any], dict[str, Any], bytes | None]:
    by_name: dict[str, tarfile.TarInfo] = {}
    for entry in entries:
        if not entry.isfile() or not _NAME.fullmatch(entry.name) or entry.name in by_name:
            kind = "a duplicate" if entry.name in by_name else "an unexpected entry"
            raise BenchError(
                f"{str(archive)!r}: {kind} {entry.name!r}; a zoo archive holds only {HEADER}, "
                "zoos/<key>/{manifest,builds}.json and "
                "zoo_members/<key>/{spec.json,member.json,weights.pt}"
            )
        by_name[entry.name] = entry
    if HEADER not in by_name:
        raise BenchError(f"{str(archive)!r} has no {HEADER}: not written by `dfml-zoo export`")
    header = _load_json(tar, by_name[HEADER], archive, MAX_JSON)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise BenchError(f"{str(archive)!r}: format {found!r}; this version reads {FORMAT!r}")
    zoo_dir = f"zoos/{header.get('zoo_key')}"
    if f"{zoo_dir}/manifest.json" not in by_name:
        raise _fail(archive, f"no manifest for the header's zoo key ({zoo_dir})")
    manifest = _load_json(tar, by_name[f"{zoo_dir}/manifest.json"], archive, MAX_JSON)
    members = _check_manifest(archive, header, manifest)
    wanted = {f"zoo_members/{m['key']}/{name}" for m in members for name in MEMBER_FILES}
    extra = sorted(set(by_name) - wanted - {HEADER, f"{zoo_dir}/manifest.json", f"{zoo_dir}/builds.json"})
    if extra:
        raise _fail(archive, f"it holds {extra[0]!r}, which its manifest does not list")
    for member in members:
        _read_member(archive, tar, by_name, member, staging)
    builds_entry = by_name.get(f"{zoo_dir}/builds.json")
    builds = None
    if builds_entry is not None:
        builds = json.dumps(_load_json(tar, builds_entry, archive, MAX_JSON)).encode()
    return header, manifest, builds


def _copy(tar: tarfile.TarFile, entry: tarfile.TarInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(entry)
    assert source is not None
    with source, open(target, "wb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)


def _read_member(
    archive: Path,
    tar: tarfile.TarFile,
    by_name: dict[str, tarfile.TarInfo],
    member: dict[str, Any],
    staging: Path,
) -> None:
    """Check one member while copying its files into ``staging``.

    spec.json must hash to the member key and equal the manifest's spec, member.json must name the
    key; the weights may hold at most 8 bytes per state element of the spec's model + 1 MiB, must
    match member.json's and the manifest's sha256 and must load into the spec's model (strict,
    ``weights_only=True``, so no code runs). These catch damage and mix-ups, not a deliberately
    re-hashed archive: import archives from sources you trust.
    """
    label = f"member {member['index']} ({member['key']})"
    prefix = f"zoo_members/{member['key']}/"
    missing = [name for name in MEMBER_FILES if prefix + name not in by_name]
    if missing:
        raise _fail(archive, f"{label} lacks {', '.join(missing)}")
    spec = _load_json(tar, by_name[prefix + "spec.json"], archive, MAX_MEMBER_JSON)
    info = _load_json(tar, by_name[prefix + "member.json"], archive, MAX_MEMBER_JSON)
    if spec_hash(spec) != member["key"] or spec != member["spec"]:
        raise _fail(archive, f"{label}: spec.json does not hash to its key or differs from the manifest")
    if not isinstance(info, dict) or info.get("key") != member["key"]:
        raise _fail(archive, f"{label}: its member.json names another member")
    model = _model_of(archive, label, spec)
    limit = 8 * sum(t.numel() for t in model.state_dict().values()) + WEIGHTS_SLACK
    weights = by_name[prefix + "weights.pt"]
    if weights.size > limit:
        raise _fail(archive, f"{weights.name} is {weights.size:,} bytes, more than its {limit:,}-byte bound")
    for name in MEMBER_FILES:
        _copy(tar, by_name[prefix + name], staging / (prefix + name))
    staged = staging / prefix / "weights.pt"
    actual = sha256_file(staged)
    if not actual == info.get("weights_sha256") == member["weights_sha256"]:
        raise IntegrityError(
            f"{str(archive)!r}: {label} weights sha256 {actual[:12]}... does not match its "
            f"member.json / manifest ({str(info.get('weights_sha256'))[:12]}... / "
            f"{member['weights_sha256'][:12]}...); the archive is damaged: export it again"
        )
    try:
        model.load_state_dict(torch.load(staged, map_location="cpu", weights_only=True))
    except Exception as error:  # noqa: BLE001 - an unpickling or shape error: not this spec's weights
        raise _fail(archive, f"{label}: weights.pt does not fit its spec's model ({error})") from None


def _model_of(archive: Path, label: str, spec: dict[str, Any]) -> torch.nn.Module:
    """The untrained model a member spec describes (the shapes its weights must have)."""
    try:
        parsed = MemberSpec.from_json(spec)
        return build_model(
            parsed.arch,
            parsed.head_width,
            parsed.image_size,
            parsed.channels,
            torch.Generator(),
            **parsed.arch_options,
        )
    except (BenchError, TypeError, ValueError, KeyError) as error:
        raise _fail(archive, f"{label}: its spec describes no buildable model ({error})") from None


def import_zoo(archive: Path, replace: bool = False) -> ImportReport:
    """Verify ``archive`` and put its build into the cache; see the module docstring.

    A member key the cache already holds with *other* weights (another build of the same
    configuration) is a BenchError listing them, and nothing is written, unless ``replace``.
    """
    members_root = cache_dir() / "zoo_members"
    members_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import.", suffix=".tmp", dir=members_root))
    try:
        header, manifest, builds = _read_archive(archive, staging)
        build = build_hash([m["weights_sha256"] for m in manifest["members"]])
        if build != header.get("build"):
            raise _fail(
                archive,
                f"its members make build {build[:12]}..., the header says {str(header.get('build'))[:12]}...",
            )
        report = ImportReport(manifest["name"], manifest["key"], header["build"])
        conflicts = []
        for member in manifest["members"]:
            final = members_root / member["key"]
            if not is_done(final):
                continue
            try:
                held = str(json.loads((final / "member.json").read_text()).get("weights_sha256", ""))
            except (OSError, ValueError, AttributeError):
                continue  # a damaged copy (member.json missing or unreadable): the archive's copy repairs it
            if held != member["weights_sha256"]:
                conflicts.append((member, held))
            elif (final / "weights.pt").is_file() and sha256_file(final / "weights.pt") == held:
                report.present.append(member["key"])
            # else: a damaged copy of this very build; the archive's copy repairs it below
        if conflicts and not replace:
            listed = "; ".join(
                f"member {m['index']} ({m['key']}): cache {held[:12]}..., "
                f"archive {m['weights_sha256'][:12]}..."
                for m, held in conflicts[:5]
            )
            raise BenchError(
                f"the cache {cache_dir()} holds another build of {len(conflicts)} member(s) of zoo "
                f"{manifest['name']!r} ({listed}{'; ...' if len(conflicts) > 5 else ''}); nothing was "
                "imported. Pass --replace to put the archive's build in their place (runs on the cache's "
                "build would then not be reproducible from this cache), or import into another DFML_CACHE"
            )
        for member in manifest["members"]:
            if member["key"] in report.present:
                continue
            source = staging / "zoo_members" / member["key"]
            _as_if_created(source, directory=True)
            (source / "done").write_text("ok\n")
            final = members_root / member["key"]
            (report.replaced if is_done(final) else report.added).append(member["key"])
            if final.exists():  # another build (replace=True), a damaged copy, or an unfinished dir
                os.replace(final, staging / f"old-{member['key']}")
            os.replace(source, final)
        zoo_dir = cache_dir() / "zoos" / manifest["key"]
        if builds is not None and not (zoo_dir / "builds.json").is_file():
            atomic_write_json(zoo_dir / "builds.json", json.loads(builds))
        atomic_write_json(zoo_dir / "manifest.json", manifest)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
