"""The README's "Adding a baseline" example, run as written: one file + one YAML -> a leaderboard row."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _block(readme: str, first_line: str) -> str:
    """The fenced code block whose first line is ``first_line`` (without that line)."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S):
        if block.startswith(first_line + "\n"):
            return block[len(first_line) + 1 :]
    raise AssertionError(f"README has no code block starting with {first_line!r}")


def test_readme_baseline_example_runs_and_reaches_the_leaderboard(tmp_path, small_glyphs):
    """The example is added to a private copy of the source tree, never to the checkout.

    Writing it into the checkout raced with other xdist workers: their ``dfml-run`` discovered
    ``baselines/first_member.py`` and failed to import it once this test had removed it again.
    The copy comes first on ``PYTHONPATH``, ahead of the editable install's finder.
    """
    readme = (ROOT / "README.md").read_text()
    src = tmp_path / "src"
    for package in ("bench", "baselines", "purer", "zoos"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    module = src / "baselines" / "first_member.py"
    config = src / "bench" / "conf" / "method" / "first_member.yaml"
    assert not (ROOT / "baselines" / "first_member.py").exists(), "the example must not be committed"
    assert not module.exists() and not config.exists()
    module.write_text(_block(readme, "# baselines/first_member.py"))
    config.write_text(_block(readme, "# bench/conf/method/first_member.yaml"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    inherited = os.environ.get("PYTHONPATH")  # e.g. where a GPU image keeps the dependencies
    path = os.pathsep.join(filter(None, [str(src), inherited]))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": path}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [
            str(BIN / "dfml-run"),
            "experiment=smoke",
            "method=random_init,first_member",
            "task.n_episodes=4",
        ],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| first_member" in done.stdout and "| random_init" in done.stdout
    lint = subprocess.run(
        [str(BIN / "ruff"), "check", "--config", str(ROOT / "pyproject.toml"), str(module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert lint.returncode == 0, lint.stdout  # the example follows the project's style rules


def test_the_readme_prints_the_committed_default_leaderboard():
    """README command 1's printed table is the committed ``results/leaderboards/default.md``'s."""
    readme = (ROOT / "README.md").read_text()
    committed = (ROOT / "results" / "leaderboards" / "default.md").read_text()
    block = readme.split("It ends by printing")[1].split("```")[1]
    rows = [line for line in block.splitlines() if line.startswith("| ") and "±" in line]
    assert rows, "no leaderboard rows in the README"
    for row in rows:
        assert row in committed, f"README row not in results/leaderboards/default.md: {row}"
