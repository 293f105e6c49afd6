"""``dfml-ls``: what can be run — datasets, architectures, zoos, methods, task suites, experiments."""

from __future__ import annotations

import argparse
from importlib import resources

import yaml

from bench.data import DATASETS
from bench.method import METHODS
from bench.overrides import group_options
from bench.registry import first_doc_line
from zoos.architectures import ARCHITECTURES

SECTIONS = ("datasets", "architectures", "zoos", "methods", "tasks", "experiments")


def _yaml_description(group: str, name: str) -> str:
    text = (resources.files("bench.conf") / group / f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    nested = data.get("experiment", {}) if group == "experiment" else data
    return str(nested.get("description", ""))


def listing() -> dict[str, list[tuple[str, str]]]:
    """Section -> [(key, one-line description)]."""
    methods = []
    for name, cls in METHODS.items():
        label = first_doc_line(cls)
        if cls.uses_real_data:
            label = f"[uses real data] {label}"
        methods.append((name, label))
    return {
        "datasets": [(n, first_doc_line(f)) for n, f in DATASETS.items()],
        "architectures": [(n, first_doc_line(f)) for n, f in ARCHITECTURES.items()],
        "zoos": [(n, _yaml_description("zoo", n)) for n in group_options("zoo")],
        "methods": methods,
        "tasks": [(n, _yaml_description("task", n)) for n in group_options("task")],
        "experiments": [(n, _yaml_description("experiment", n)) for n in group_options("experiment")],
    }


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="dfml-ls", description=__doc__)
    parser.add_argument("section", nargs="?", choices=SECTIONS, help="list only this section")
    args = parser.parse_args(argv)
    for section, entries in listing().items():
        if args.section and section != args.section:
            continue
        print(f"{section}:")
        width = max((len(n) for n, _ in entries), default=0)
        for name, description in entries:
            print(f"  {name:<{width}}  {description}")
    return 0
