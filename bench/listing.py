"""``dfml-ls``: what can be run — datasets, architectures, zoos, methods, task suites, experiments."""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import sys
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from bench.data import DATASETS
from bench.errors import BenchError
from bench.method import METHODS
from bench.overrides import group_options
from bench.paths import cache_dir
from bench.registry import first_doc_line
from zoos.architectures import ARCHITECTURES

SECTIONS = ("datasets", "architectures", "zoos", "methods", "tasks", "experiments")


def _yaml_description(group: str, name: str) -> str:
    text = (resources.files("bench.conf") / group / f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    nested = data.get("experiment", {}) if group == "experiment" else data
    return str(nested.get("description", ""))


def _dataset_options(name: str) -> dict[str, object]:
    """The loader options of ``conf/dataset/<name>.yaml``, interpolations (``${oc.env:...}``) resolved."""
    text = (resources.files("bench.conf") / "dataset" / f"{name}.yaml").read_text()
    options = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    return {k: v for k, v in options.items() if k not in ("name", "description")}  # type: ignore[union-attr]


def _dataset_status(name: str) -> str:
    """Where the configured root is and its classes per split (from the YAML's loader options)."""
    loader = DATASETS.get(name)
    inspect = getattr(importlib.import_module(loader.__module__), "inspect_root", None)
    if inspect is None:
        return _cached_status(name, _dataset_options(name))
    status = inspect(**_dataset_options(name))
    if not status.found:
        return f"root not found: {status.root}"
    if status.classes_per_split is None:
        return f"root found: {status.root}, but {status.detail}"
    counts = "/".join(str(status.classes_per_split[s]) for s in ("train", "val", "test"))
    return f"root found: {status.root}; train/val/test classes {counts}, {status.detail}"


def _cached_status(name: str, options: dict[str, object]) -> str:
    """Classes per split of a cached build with these options (datasets without a root, e.g. glyphs)."""
    for manifest_path in sorted((cache_dir() / "datasets" / name).glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        spec = manifest.get("spec", {})
        if all(spec.get(key) == value for key, value in options.items()):
            counts = "/".join(str(len(manifest["splits"][s])) for s in ("train", "val", "test"))
            return f"embedded; train/val/test classes {counts} (cached)"
    return "embedded, generated on first use"


def _datasets() -> list[tuple[str, str]]:
    """(key, YAML description [root status]) per registered dataset."""
    return [(n, f"{_yaml_description('dataset', n)} [{_dataset_status(n)}]") for n in DATASETS.names()]


#: Swept config groups a record can be matched on, and where the record keeps the chosen value.
_CELL_FIELDS = {
    "method": lambda r: r.method,
    "task": lambda r: r.setting.get("task_config", r.setting.get("task")),
    "zoo": lambda r: r.setting.get("zoo"),
    "dataset": lambda r: r.setting.get("dataset"),
}


def experiment_progress(name: str, results: Path) -> str:
    """``finished k/N cells`` of an experiment's sweep (records with status ok under results/runs).

    Empty when the experiment sweeps nothing or a parameter a record cannot be matched on.
    """
    text = (resources.files("bench.conf") / "experiment" / f"{name}.yaml").read_text()
    params = (((yaml.safe_load(text) or {}).get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    if not params or any(key not in _CELL_FIELDS for key in params):
        return ""
    keys = list(params)
    values = [[v.strip() for v in str(params[k]).split(",") if v.strip()] for k in keys]
    cells = set(itertools.product(*values))
    from bench.records import read_records

    folder = results / "runs" / name
    records = read_records(folder) if folder.is_dir() else []
    done = {tuple(str(_CELL_FIELDS[k](r)) for k in keys) for r in records if r.status == "ok"}
    return f"finished {len(cells & done)}/{len(cells)} cells"


def _experiments() -> list[tuple[str, str]]:
    """(key, description [sweep progress in $DFML_RESULTS or ./results])."""
    results = Path(os.environ.get("DFML_RESULTS") or "results")
    rows = []
    for name in group_options("experiment"):
        progress = experiment_progress(name, results)
        rows.append((name, _yaml_description("experiment", name) + (f" [{progress}]" if progress else "")))
    return rows


def listing() -> dict[str, list[tuple[str, str]]]:
    """Section -> [(key, one-line description)]."""
    methods = []
    for name, cls in METHODS.items():
        label = first_doc_line(cls)
        if cls.uses_real_data:
            label = f"[uses real data] {label}"
        elif cls.uses_real_val:
            label = f"[uses real meta-val episodes] {label}"
        methods.append((name, label))
    return {
        "datasets": _datasets(),
        "architectures": [(n, first_doc_line(f)) for n, f in ARCHITECTURES.items()],
        "zoos": [(n, _yaml_description("zoo", n)) for n in group_options("zoo")],
        "methods": methods,
        "tasks": [(n, _yaml_description("task", n)) for n in group_options("task")],
        "experiments": _experiments(),
    }


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="dfml-ls", description=__doc__)
    parser.add_argument("section", nargs="?", choices=SECTIONS, help="list only this section")
    args = parser.parse_args(argv)
    try:
        sections = listing()
    except BenchError as error:
        print(f"dfml-ls: error: {error}", file=sys.stderr)
        return 2
    for section, entries in sections.items():
        if args.section and section != args.section:
            continue
        print(f"{section}:")
        width = max((len(n) for n, _ in entries), default=0)
        for name, description in entries:
            print(f"  {name:<{width}}  {description}")
    return 0
