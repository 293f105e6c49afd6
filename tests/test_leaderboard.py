"""Golden test: committed fixture records -> the committed leaderboard, byte for byte.

Regenerate both after an intended format change: ``python -m tests.fixtures.make_leaderboard_fixture``.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.leaderboard import setting_label, tidy_table, write_leaderboard
from bench.legacy import legacy_switches
from bench.records import read_records
from tests.fixtures.make_leaderboard_fixture import EXPECTED, RUNS, fixture_records


def test_golden_leaderboard(tmp_path):
    records = read_records(RUNS)
    assert len(records) == 11
    write_leaderboard(records, tmp_path, "golden")
    assert (tmp_path / "golden.md").read_text() == (EXPECTED / "golden.md").read_text()
    assert (tmp_path / "golden.csv").read_text() == (EXPECTED / "golden.csv").read_text()


def test_committed_records_equal_the_generator():
    assert [r.to_json() for r in read_records(RUNS)] == sorted(
        (r.to_json() for r in fixture_records()), key=lambda d: d["run_key"]
    )


def test_tidy_table_aggregates_seeds_and_orders_rows():
    table = tidy_table(fixture_records())
    assert list(dict.fromkeys(table["method"])) == ["random_init", "weight_average", "maml_oracle"]
    row = table[(table.method == "random_init") & (table.task == "5w1s") & (table.test_steps == 10)].iloc[0]
    seeds = [r for r in fixture_records() if r.method == "random_init" and r.setting["task"] == "5w1s"]
    assert row.n_seeds == 2 and row.n_episodes == 40
    assert row.acc_mean == pytest.approx(sum(r.metrics["steps_10"]["mean"] for r in seeds) / 2)
    assert pd.isna(row.delta_vs_reference)
    wa = table[(table.method == "weight_average") & (table.task == "5w5s") & (table.test_steps == 10)].iloc[0]
    assert wa.n_seeds == 1 and wa.delta_vs_reference == pytest.approx(16.0, abs=3.0)
    # the paired difference, episode by episode against random_init of the same seed, by hand
    (wa_record,) = [
        r for r in fixture_records() if r.method == "weight_average" and r.setting["task"] == "5w5s"
    ]
    (ri_record,) = [
        r
        for r in fixture_records()
        if r.method == "random_init"
        and r.setting["task"] == "5w5s"
        and r.seeds["root"] == wa_record.seeds["root"]
    ]
    diffs = [
        a - b
        for a, b in zip(wa_record.per_episode["steps_10"], ri_record.per_episode["steps_10"], strict=True)
    ]
    mean = sum(diffs) / len(diffs)
    population_std = (sum((d - mean) ** 2 for d in diffs) / len(diffs)) ** 0.5
    assert wa.delta_vs_reference == pytest.approx(mean)
    assert wa.delta_ci95 == pytest.approx(1.96 * population_std / len(diffs) ** 0.5)
    reversed_pairs = [
        a - b
        for a, b in zip(
            wa_record.per_episode["steps_10"], ri_record.per_episode["steps_10"][::-1], strict=True
        )
    ]
    shuffled_std = (sum((d - mean) ** 2 for d in reversed_pairs) / len(diffs)) ** 0.5
    assert abs(shuffled_std - population_std) > 0.5  # the pairing matters on these records
    assert not table[table.method == "maml_oracle"].data_free.any()


def test_markdown_marks_oracles_missing_runs_and_paper_protocol():
    text = (EXPECTED / "golden.md").read_text()
    assert "maml_oracle (oracle: uses real data)" in text
    assert setting_label("5w1s", 1) == "5w1s · 1 step (paper)" and setting_label("5w1s", 1) in text
    assert "Paired difference to `random_init`" in text


def test_a_method_that_used_an_external_model_is_labelled(tmp_path):
    """TGR with a user-given probe records uses_external_model = 1: its row says so."""
    records = fixture_records()
    for r in records:
        if r.method == "weight_average":
            r.train_stats["uses_external_model"] = 1.0
    write_leaderboard(records, tmp_path, "golden")
    text = (tmp_path / "golden.md").read_text()
    assert "weight_average (uses an external model)" in text
    assert "random_init (uses an external model)" not in text
    csv = pd.read_csv(tmp_path / "golden.csv")
    assert set(csv[csv.method == "weight_average"].external_model) == {True}
    assert not csv[csv.method == "random_init"].external_model.any()


def test_a_run_with_reference_behaviours_switched_on_is_labelled(tmp_path):
    """purer.md §11: runs with a legacy switch are flagged and get their own row label."""
    records = fixture_records()
    for r in records:
        if r.method == "weight_average" and r.setting["task"] == "5w1s":
            r.legacy = ["legacy.cumulative_node_weighting"]
        if r.method == "maml_oracle":  # a record older than the field: derived from its config
            r.config["method"]["kd_loss"] = "kl_prob_legacy"
    write_leaderboard(records, tmp_path, "golden")
    text = (tmp_path / "golden.md").read_text()
    assert "weight_average (legacy: legacy.cumulative_node_weighting)" in text
    assert "maml_oracle (legacy: kd_loss=kl_prob_legacy) (oracle: uses real data)" in text
    csv = pd.read_csv(tmp_path / "golden.csv", keep_default_na=False)
    flagged = csv[csv.method == "weight_average (legacy: legacy.cumulative_node_weighting)"]
    assert set(flagged.task) == {"5w1s"} and set(flagged.legacy) == {"legacy.cumulative_node_weighting"}
    assert set(csv[csv.method == "weight_average"].task) == {"5w5s"}  # the plain row keeps 5w5s only
    assert set(csv[csv.method == "random_init"].legacy) == {""}


def test_legacy_runs_never_share_a_row_or_a_mean_with_plain_runs():
    records = fixture_records()
    for r in records:  # legacy on one seed of weight_average 5w1s only
        if r.method == "weight_average" and r.setting["task"] == "5w1s" and r.seeds["root"] == 1:
            r.legacy = ["legacy.alias_members"]
    table = tidy_table(records)
    rows = table[(table.task == "5w1s") & (table.test_steps == 10)].set_index("method")
    assert rows.loc["weight_average", "n_seeds"] == 1
    assert rows.loc["weight_average (legacy: legacy.alias_members)", "n_seeds"] == 1
    legacy_5w5s = table[(table.method.str.contains("legacy")) & (table.task == "5w5s")]
    assert legacy_5w5s.empty  # the legacy row has no 5w5s cell: it shows X there
    plain = [r for r in records if r.method == "weight_average" and r.setting["task"] == "5w1s"]
    legacy_mean = next(r for r in plain if r.legacy).metrics["steps_10"]["mean"]
    assert rows.loc["weight_average (legacy: legacy.alias_members)", "acc_mean"] == pytest.approx(legacy_mean)


def test_legacy_switches_reads_legacy_blocks_and_legacy_choices():
    assert legacy_switches({"name": "purer", "legacy": {"cumulative_node_weighting": False}}) == []
    assert legacy_switches(
        {"kd_loss": "kl_prob_legacy", "legacy": {"alias_members": True, "bank_last_member_only": False}}
    ) == ["kd_loss=kl_prob_legacy", "legacy.alias_members"]


def test_failed_runs_are_not_counted():
    records = fixture_records()
    records[0].status = "failed"
    table = tidy_table(records)
    first = records[0]
    hit = table[(table.method == first.method) & (table.task == first.setting["task"])]
    assert set(hit.n_seeds) == {1}


def test_plot_png_and_latex_table(tmp_path):
    from PIL import Image

    from bench.leaderboard import latex_table

    table, _ = write_leaderboard(read_records(RUNS), tmp_path, "golden")
    with Image.open(tmp_path / "golden.png") as image:
        assert image.format == "PNG" and image.size[0] > 400
    latex = latex_table(table, "golden")
    assert "\\begin{tabular}" in latex and "\\toprule" in latex and latex.count("\\end{tabular}") >= 1
    assert (
        "random\\_init &" in latex and "$\\pm$" in latex and "maml\\_oracle (oracle: uses real data)" in latex
    )
    assert "5w1s $\\cdot$ 1 step (paper)" in latex
    # the paired differences follow the accuracies, signed, without the reference's own row
    assert "paired difference to random_init" in latex and latex.count("\\end{tabular}") == 2
    differences = latex.split("paired difference to random_init")[1]
    assert "weight\\_average & +" in differences and "random\\_init &" not in differences


def test_scale_plot_when_zoos_of_one_dataset_differ_in_size(tmp_path):
    import dataclasses

    records = [r for r in fixture_records() if r.status == "ok"]
    bigger = [
        dataclasses.replace(
            r,
            run_key=r.run_key + "b",
            setting={**r.setting, "zoo": "glyphs_scale_100"},
            zoo={**r.zoo, "n_members": 100},
        )
        for r in records
    ]
    write_leaderboard(records + bigger, tmp_path, records[0].experiment)
    assert (tmp_path / f"{records[0].experiment}_scale.png").is_file()
    # one zoo size left (the bigger zoo's records moved away): no stale scale plot stays behind
    write_leaderboard(records, tmp_path, records[0].experiment, carry=False)
    assert not (tmp_path / f"{records[0].experiment}_scale.png").exists()
    assert (tmp_path / f"{records[0].experiment}.png").is_file()


def test_multi_dataset_tables_get_a_dataset_average_for_methods_run_on_every_dataset():
    import copy

    records = fixture_records()
    second = []
    for record in records:
        if record.method == "maml_oracle":  # left out on the second dataset: no average row for it
            continue
        twin = copy.deepcopy(record)
        twin.setting["dataset"], twin.run_key = "omniglot", record.run_key + "-o"
        for summary in twin.metrics.values():
            summary["mean"] += 10.0
        second.append(twin)
    table = tidy_table(records + second)
    average = table[table.dataset == "average over glyphs, omniglot"]
    assert set(average.method) == {"random_init", "weight_average"}
    row = average[
        (average.method == "weight_average") & (average.task == "5w5s") & (average.test_steps == 10)
    ]
    parts = table[(table.method == "weight_average") & (table.task == "5w5s") & (table.test_steps == 10)]
    parts = parts[parts.dataset != row.iloc[0].dataset]
    assert row.iloc[0].acc_mean == pytest.approx(parts.acc_mean.mean())
    assert row.iloc[0].acc_ci95 == pytest.approx((parts.acc_ci95**2).sum() ** 0.5 / 2)
    assert row.iloc[0].acc_mean == pytest.approx(parts.acc_mean.min() + 5.0)
    from bench.leaderboard import markdown_table

    markdown = markdown_table(table, "golden")
    assert "## dataset `average over glyphs, omniglot`" in markdown
    assert tidy_table(records)[lambda t: t.dataset.str.startswith("average")].empty


def test_a_partial_table_lists_the_swept_methods_without_a_record():
    from bench.collect import experiment_yaml
    from bench.leaderboard import markdown_table

    text = markdown_table(tidy_table(fixture_records()), "golden", expected=["random_init", "ota", "tds"])
    line = next(x for x in text.splitlines() if x.startswith("Not run yet"))
    assert "`ota`, `tds`" in line and "random_init" not in line
    assert "Not run yet" not in markdown_table(
        tidy_table(fixture_records()), "golden", expected=["random_init"]
    )
    swept = experiment_yaml("omniglot")["hydra"]["sweeper"]["params"]["method"]
    assert "tgr" in swept and experiment_yaml("no_such_experiment") == {}


def test_compare_to_adds_paired_differences_to_a_second_method(tmp_path):
    records = fixture_records()
    table = tidy_table(records, compare_to=["weight_average"])
    pick = (table.task == "5w5s") & (table.test_steps == 10)
    ri = table[pick & (table.method == "random_init")].iloc[0]
    wa = table[pick & (table.method == "weight_average")].iloc[0]
    # paired differences are antisymmetric: random_init - weight_average = -(weight_average - random_init)
    assert ri["delta_vs_weight_average"] == pytest.approx(-wa["delta_vs_reference"])
    assert ri["delta_vs_weight_average_ci95"] == pytest.approx(wa["delta_ci95"])
    assert pd.isna(wa["delta_vs_weight_average"])
    _, markdown = write_leaderboard(records, tmp_path, "golden", compare_to=["weight_average"])
    section = markdown.split("Paired difference to `weight_average`")[1].split("\n\n")[1]
    rows = [line.split("|")[1].strip() for line in section.splitlines()[2:]]
    assert rows[0] == "random_init" and "weight_average" not in rows
    assert "delta_vs_weight_average" in (tmp_path / "golden.csv").read_text().splitlines()[0]


def _variant(record, run_key: str, **config):
    """A copy of ``record`` run with another configuration (other run key, shifted accuracies)."""
    import copy

    twin = copy.deepcopy(record)
    twin.run_key = run_key
    for dotted, value in config.items():
        node = twin.config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return twin


def test_two_configurations_of_one_method_in_one_cell_get_their_own_rows():
    from bench.evaluate import summarize

    records = fixture_records()
    variants = []
    for record in records:
        if record.method == "weight_average":
            twin = _variant(record, record.run_key + "-ablation", **{"method.scale": 2.0})
            twin.per_episode = {k: [v - 20.0 for v in vs] for k, vs in twin.per_episode.items()}
            twin.metrics = {k: summarize(v) for k, v in twin.per_episode.items()}
            variants.append(twin)
            record.config["method"]["scale"] = 1.0
    table = tidy_table(records + variants)
    names = set(table.method)
    assert {"weight_average [method.scale=1.0]", "weight_average [method.scale=2.0]"} <= names
    assert "weight_average" not in names  # never pooled into one row
    pick = (table.task == "5w1s") & (table.test_steps == 10)
    one = table[pick & (table.method == "weight_average [method.scale=1.0]")].iloc[0]
    two = table[pick & (table.method == "weight_average [method.scale=2.0]")].iloc[0]
    assert one.acc_mean - two.acc_mean == pytest.approx(20.0, abs=1e-6)
    assert one.delta_vs_reference - two.delta_vs_reference == pytest.approx(20.0, abs=1e-6)
    # the sweep's method is present (as variants), so it is not listed as "not run yet"
    from bench.leaderboard import markdown_table

    assert "Not run yet" not in markdown_table(table, "golden", expected=["weight_average"])


def test_a_presentation_key_does_not_name_rows_only_the_result_keys_do():
    """An experiment key added after some runs (experiment.compare_to) is no config difference."""
    records = fixture_records()
    variants = []
    for record in records:
        if record.method == "weight_average":
            twin = _variant(
                record,
                record.run_key + "-init",
                **{"method.init": "average", "experiment.compare_to": ["purer"]},
            )
            variants.append(twin)
    names = set(tidy_table(records + variants).method)
    assert {"weight_average [method.init=default]", "weight_average [method.init=average]"} <= names
    assert not any("experiment." in name for name in names)


def _records_with_init_variants():
    """The fixture records plus a ``method.init=average`` twin of each weight_average record."""
    records = fixture_records()
    variants = [
        _variant(r, r.run_key + "-init", **{"method.init": "average"})
        for r in records
        if r.method == "weight_average"
    ]
    return records, variants


def test_a_re_run_keeps_its_label_while_the_record_that_set_it_apart_is_carried(tmp_path):
    """The labelled variant re-run alone must not become a bare row beside its carried sibling."""
    records, variants = _records_with_init_variants()
    write_leaderboard(records + variants, tmp_path, "golden")  # both variants have records
    others = [r for r in records if r.method != "weight_average"]
    table, markdown = write_leaderboard(others + variants, tmp_path, "golden")  # default one carried
    names = set(table.method)
    assert {"weight_average [method.init=default]", "weight_average [method.init=average]"} <= names
    assert "weight_average" not in names
    assert (
        not table[table.method == "weight_average [method.init=average]"]
        .duplicated(["task", "test_steps"])
        .any()
    )
    fresh, _ = write_leaderboard(others + variants, tmp_path / "fresh", "golden")  # no earlier CSV
    assert "weight_average" in set(fresh.method)  # alone, the variant needs no label


def test_a_new_seed_beside_a_carried_labelled_sibling_joins_its_labelled_row(tmp_path):
    """A record whose run key the earlier CSV never had is labelled from its own config too."""
    import copy

    records, variants = _records_with_init_variants()
    table_before, _ = write_leaderboard(records + variants, tmp_path, "golden")  # both have records
    seed_7 = []
    for variant in (v for v in variants if v.setting["task"] == "5w5s"):  # one seed there so far
        twin = copy.deepcopy(variant)
        twin.run_key, twin.seeds = variant.run_key + "-seed7", {**variant.seeds, "root": 7}
        twin.config["seed"] = 7
        seed_7.append(twin)
    others = [r for r in records if r.method != "weight_average"]
    table, _ = write_leaderboard(others + variants + seed_7, tmp_path, "golden")  # default carried
    labelled = table[table.method == "weight_average [method.init=average]"]
    assert "weight_average" not in set(table.method)
    before = table_before[table_before.method == "weight_average [method.init=average]"]
    grew = {t: n for t, n in zip(labelled.task, labelled.n_seeds, strict=True)}
    assert grew == {"5w1s": before[before.task == "5w1s"].n_seeds.iloc[0], "5w5s": 2}  # pooled, not split
    assert "weight_average [method.init=default]" in set(table.method)  # the carried sibling
    alone, _ = write_leaderboard(others + variants + seed_7, tmp_path / "alone", "golden", carry=False)
    assert "weight_average" in set(alone.method)  # no carried sibling: no label


def test_labels_come_from_result_keys_of_the_methods_own_rows():
    from bench.leaderboard import _label_keys

    names = [
        "purer [method.adv.scale=1.0, task.k_shot=1]",
        "purer_ei [method.init=random]",  # another method
        "purer [run abc123]",  # a run-key label
        "purer [experiment.compare_to=['purer']]",  # not a result key
        "purer (legacy: x) [method.init=random]",  # a legacy row
    ]
    assert _label_keys("purer", names) == {"method.adv.scale", "task.k_shot"}
    assert _label_keys("tds", names) == set()


def test_a_short_smoke_run_beside_a_full_one_is_its_own_row_and_is_not_paired():
    records = fixture_records()
    smoke = next(r for r in records if r.method == "weight_average" and r.setting["task"] == "5w1s")
    short = _variant(smoke, "smoke-run", **{"eval.limit": 5})
    from bench.evaluate import summarize

    short.per_episode = {k: v[:5] for k, v in short.per_episode.items()}
    short.metrics = {k: summarize(v) for k, v in short.per_episode.items()}
    table = tidy_table([*records, short])  # a mismatched episode count used to raise here
    row = table[table.method == "weight_average [eval.limit=5]"]
    assert set(row.n_episodes) == {5} and row.delta_vs_reference.isna().all()
    full = table[(table.method == "weight_average [eval.limit=default]") & (table.task == "5w1s")]
    assert set(full.n_episodes) == {40} and full.delta_vs_reference.notna().all()


def _portable_twins(records):
    """Portable re-runs of ``records`` (maml_oracle aside): random_init 7 points up, the others 2."""
    from bench.evaluate import summarize

    portable = []
    for record in records:
        if record.method == "maml_oracle":
            continue  # run natively only: its row still says so
        twin = _variant(record, record.run_key + "-portable", numerics="portable")
        shift = 7.0 if record.method == "random_init" else 2.0  # the reference moves more than the method
        twin.per_episode = {k: [v + shift for v in vs] for k, vs in twin.per_episode.items()}
        twin.metrics = {k: summarize(v) for k, v in twin.per_episode.items()}
        portable.append(twin)
    return portable


def test_native_and_portable_runs_pair_within_their_numerics_and_every_row_names_its_numerics(tmp_path):
    """Portable re-runs beside native records: every row pairs with the random_init of its numerics."""
    records = fixture_records()
    portable = _portable_twins(records)
    table = tidy_table(records + portable, compare_to=["weight_average"])
    pick = (table.task == "5w1s") & (table.test_steps == 10)
    row = {name: table[pick & (table.method == name)].iloc[0] for name in set(table[pick].method)}
    native, moved = row["weight_average [numerics=native]"], row["weight_average [numerics=portable]"]
    # paired with its own numerics' random_init: 2 - 7 points lower than the native pair
    assert moved.delta_vs_reference - native.delta_vs_reference == pytest.approx(-5.0, abs=1e-6)
    ri = row["random_init [numerics=portable]"]
    assert ri.delta_vs_weight_average == pytest.approx(-moved.delta_vs_reference)
    assert list(table.method)[:2] == ["random_init [numerics=native]"] * 2
    assert "maml_oracle [numerics=native]" in row and "maml_oracle" not in row
    n_reference = int(table.method.str.startswith("random_init [").sum())
    assert {m.split(" [")[0] for m in table.method[:n_reference]} == {"random_init"}
    _, markdown = write_leaderboard(records + portable, tmp_path, "golden")
    heading = "Paired difference to `random_init` (same episodes; each row against the `random_init` row"
    section = markdown.split(heading)[1].split("\n\n")[1]
    assert "random_init" not in section and "weight_average [numerics=portable]" in section


def test_profiles_pair_within_their_own_profile_and_the_paper_comparison_uses_paper_runs():
    import copy

    from bench.leaderboard import paper_comparison

    records = fixture_records()
    paper = []
    for record in records:
        twin = copy.deepcopy(record)
        twin.run_key, twin.setting["profile"] = record.run_key + "-paper", "paper"
        twin.config["profile"] = "paper"
        for summary in twin.metrics.values():
            summary["mean"] += 30.0
        paper.append(twin)
    table = tidy_table(records + paper)
    wa = table[(table.method == "weight_average") & (table.test_steps == 10)]
    assert set(wa.profile) == {"cpu", "paper"} and wa.delta_vs_reference.notna().all()
    block = {"source": "test", "readout": 10, "results": {"weight_average": {"5w1s": [50.0, 1.0]}}}
    ours = table[(table.method == "weight_average") & (table.task == "5w1s") & (table.test_steps == 10)]
    paper_mean = ours[ours.profile == "paper"].acc_mean.iloc[0]
    assert f"| {paper_mean:.2f} ±" in paper_comparison(table, block)


def test_a_dataset_average_is_missing_where_one_dataset_lacks_the_difference():
    import copy

    records = fixture_records()
    second = []
    for record in records:
        if record.method == "random_init" and record.setting["task"] == "5w1s":
            continue  # the reference is missing on the second dataset for 5w1s
        twin = copy.deepcopy(record)
        twin.setting["dataset"], twin.run_key = "omniglot", record.run_key + "-o"
        second.append(twin)
    table = tidy_table(records + second)
    average = table[(table.dataset == "average over glyphs, omniglot") & (table.method == "weight_average")]
    assert average[average.task == "5w1s"].delta_vs_reference.isna().all()
    assert average[average.task == "5w5s"].delta_vs_reference.notna().all()


def test_the_markdown_names_failed_runs_and_the_code_behind_the_numbers(tmp_path):
    records = fixture_records()
    records[0].status, records[0].error = "failed", "FloatingPointError: non-finite loss"
    records[1].hashes["git_dirty"] = True
    records[2].hashes.update(git_dirty=True, code_sha256="0123abcd" + "9" * 56)
    records[3].hashes.update(git_dirty=False, code_sha256="f" * 64)  # clean: the sha says it all
    assert "resumed work written by other code" not in write_leaderboard(records, tmp_path, "golden")[1]
    records[3].hashes["resumed_code"] = [{"git_sha": "e" * 40, "git_dirty": False, "code_sha256": "0" * 64}]
    _, markdown = write_leaderboard(records, tmp_path, "golden")
    assert (
        "Runs that resumed work written by other code (named in each record's hashes.resumed_code):"
        f" {records[3].run_key}." in markdown
    )
    assert f"(run `{records[0].run_key}`): FloatingPointError: non-finite loss" in markdown
    assert (
        "Code behind these records (git commit × records): fixture × 8,"
        " fixture (uncommitted changes) × 1, fixture (uncommitted changes, code 0123abcd) × 1." in markdown
    )


def test_the_markdown_names_the_zoo_builds_and_flags_two_builds_of_one_zoo(tmp_path):
    records = [r for r in fixture_records() if r.status == "ok"]
    _, markdown = write_leaderboard(records, tmp_path, "golden")
    assert "Zoo builds" not in markdown  # records older than the field say nothing
    for r in records:
        r.hashes["zoo_weights"] = "a" * 64
    _, markdown = write_leaderboard(records, tmp_path, "golden")
    zoo = records[0].setting["zoo"]
    line = next(x for x in markdown.splitlines() if x.startswith("Zoo builds"))
    assert f"`{zoo}` {'a' * 12} × {len(records)}." in line and "More than one build" not in line
    records[0].hashes["zoo_weights"] = "b" * 64
    _, markdown = write_leaderboard(records, tmp_path, "golden")
    line = next(x for x in markdown.splitlines() if x.startswith("Zoo builds"))
    assert f"{'a' * 12} × {len(records) - 1}, {'b' * 12} × 1." in line and "More than one build" in line
    del records[1].hashes["zoo_weights"]  # a record from before the field is counted, not dropped
    _, markdown = write_leaderboard(records, tmp_path, "golden")
    line = next(x for x in markdown.splitlines() if x.startswith("Zoo builds"))
    assert f"{'a' * 12} × {len(records) - 2}, {'b' * 12} × 1, not named × 1." in line
    # another configuration of the zoo (an override such as n_members) is not another build
    records[1].hashes["zoo_weights"] = "a" * 64
    for r in records:
        r.hashes["zoo"] = "1" * 16
    records[0].hashes["zoo"] = "2" * 16
    _, markdown = write_leaderboard(records, tmp_path, "golden")
    line = next(x for x in markdown.splitlines() if x.startswith("Zoo builds"))
    assert f"`{zoo} (config 11111111)` {'a' * 12} × {len(records) - 1}" in line
    assert f"`{zoo} (config 22222222)` {'b' * 12} × 1" in line and "More than one build" not in line


def test_a_repeated_seed_on_the_same_suite_does_not_narrow_the_paired_ci():
    import copy

    seed0 = [r for r in fixture_records() if r.seeds["root"] == 0]
    repeat = []
    for record in seed0:  # seed 1 on the same suite, with exactly seed 0's episode results
        twin = copy.deepcopy(record)
        twin.run_key, twin.seeds["root"], twin.config["seed"] = record.run_key + "-again", 1, 1
        repeat.append(twin)
    pick = lambda t: t[(t.method == "weight_average") & (t.task == "5w1s") & (t.test_steps == 10)].iloc[0]  # noqa: E731
    one, two = pick(tidy_table(seed0)), pick(tidy_table(seed0 + repeat))
    assert two.n_seeds == 2 and one.n_seeds == 1
    assert two.delta_vs_reference == pytest.approx(one.delta_vs_reference)
    assert two.delta_ci95 == pytest.approx(one.delta_ci95)  # pooling as 80 independent episodes: x 0.71


def test_a_collect_keeps_the_rows_of_the_previous_csv_that_no_record_replaces(tmp_path):
    """A fresh checkout has the committed tables, not the records behind them: collecting new
    records there must not drop the committed rows (it did: a sweep's callback rewrote two tables
    with only the new records), and must say which rows it carried."""
    records = fixture_records()
    full, _ = write_leaderboard(records, tmp_path, "golden")
    some = [r for r in records if r.method == "weight_average"]
    table, markdown = write_leaderboard(some, tmp_path, "golden")
    key = ["method", "task", "test_steps"]
    assert sorted(map(tuple, table[key].values.tolist())) == sorted(map(tuple, full[key].values.tolist()))
    merged = table.set_index(key)["acc_mean"]
    assert merged.to_dict() == pytest.approx(full.set_index(key)["acc_mean"].to_dict(), abs=1e-4)  # CSV: 4 dp
    footer = next(line for line in markdown.splitlines() if line.startswith("Carried over"))
    assert "`random_init` 5w1s" in footer and "weight_average" not in footer
    wa = table[table.method == "weight_average"]
    assert wa["delta_vs_reference"].isna().all()  # recomputed from records: no random_init record here
    ri = table[table.method == "random_init"]
    assert ri["acc_mean"].tolist() == pytest.approx(
        full[full.method == "random_init"]["acc_mean"].tolist(), abs=1e-4
    )
    alone, markdown = write_leaderboard(some, tmp_path, "golden", carry=False)
    assert set(alone.method) == {"weight_average"} and "Carried over" not in markdown


def _two_dataset_records():
    import copy

    records = fixture_records()
    twins = []
    for record in records:
        twin = copy.deepcopy(record)
        twin.setting["dataset"], twin.run_key = "omniglot", record.run_key + "-o"
        twins.append(twin)
    return records + twins


def test_carrying_is_idempotent_and_recomputes_dataset_averages(tmp_path):
    records = _two_dataset_records()
    full, _ = write_leaderboard(records, tmp_path, "golden")
    first = (tmp_path / "golden.csv").read_text()
    some = [r for r in records if r.method == "weight_average"]
    for _ in range(2):  # average rows are neither carried as rows nor averaged again
        table, _ = write_leaderboard(some, tmp_path, "golden")
        assert len(table) == len(full)
        assert not table.dataset.str.startswith("average over average").any()
    assert (tmp_path / "golden.csv").read_text().splitlines()[0] == first.splitlines()[0]


def test_a_rerun_of_a_carried_run_replaces_it_even_when_failed_or_renamed(tmp_path):
    import copy

    records = fixture_records()
    write_leaderboard(records, tmp_path, "golden")
    failed = copy.deepcopy(next(r for r in records if r.method == "weight_average"))
    failed.status, failed.error = "failed", "FloatingPointError: boom"
    table, markdown = write_leaderboard([failed], tmp_path, "golden")
    carried = table[table.run_keys.str.contains(failed.run_key)]
    assert carried.empty  # not its old numbers beside the failure
    assert "Failed runs" in markdown and "random_init" in set(table.method)
    numbers = pd.read_csv(tmp_path / "golden.csv", dtype=str)["acc_mean"]
    assert numbers.str.fullmatch(r"\d+\.\d{4}").all()  # still written with 4 decimals


def test_carried_differences_to_another_reference_are_not_shown_as_this_ones(tmp_path):
    records = fixture_records()
    write_leaderboard(records, tmp_path, "golden")  # paired with random_init
    some = [r for r in records if r.method == "weight_average"]
    table, _ = write_leaderboard(some, tmp_path, "golden", reference="weight_average")
    carried = table[table.method != "weight_average"]
    assert carried["delta_vs_reference"].isna().all() and set(table.reference) == {"weight_average"}


def test_carried_differences_follow_whether_their_partner_row_was_re_made_and_moved(tmp_path):
    records = fixture_records()
    compare = {"compare_to": ["weight_average"]}
    write_leaderboard(records, tmp_path / "a", "golden", **compare)
    oracle_only = [r for r in records if r.method == "maml_oracle"]
    kept, markdown = write_leaderboard(oracle_only, tmp_path / "a", "golden", **compare)
    # random_init and weight_average both carried: the difference between them stays, no note
    assert kept.loc[kept.method == "weight_average", "delta_vs_reference"].notna().all()
    assert "Re-made rows" not in markdown

    rerun = [r for r in records if r.method == "weight_average"]
    for shift, kept_after in ((0.0, True), (0.1, True), (5.0, False)):  # earlier record's mean moved
        directory = tmp_path / f"shift{shift}"
        write_leaderboard(records, directory, "golden", **compare)
        csv = pd.read_csv(directory / "golden.csv")
        csv.loc[csv.method == "weight_average", "acc_mean"] += shift
        csv.to_csv(directory / "golden.csv", index=False)
        table, markdown = write_leaderboard(rerun, directory, "golden", **compare)
        oracle = table[table.method.str.startswith("maml_oracle")]
        assert oracle["delta_vs_reference"].notna().all()  # random_init is still the carried row
        assert oracle["delta_vs_weight_average"].notna().all() == kept_after
        assert ("`weight_average` 5w1s · 1 step was re-made" in markdown) == (shift > 0)
        assert ("differences to it blanked" in markdown) == (not kept_after)
        assert table.loc[table.method == "weight_average", "delta_vs_reference"].isna().all()
        again, again_markdown = write_leaderboard(rerun, directory, "golden", **compare)  # the decision stays
        assert again.equals(table)
        # and so does its note, for as long as a carried row it concerns is in the table
        assert again_markdown.count("was re-made") == markdown.count("was re-made")


def test_carried_rows_of_a_table_that_mixes_numerics_keep_the_difference_to_their_own_reference(tmp_path):
    """A native record moved aside (a table being re-made): its carried row keeps its paired difference
    to ``random_init [numerics=native]``, and loses it once that partner is re-made and moves."""
    records = fixture_records()
    everything = records + _portable_twins(records)
    pick = "weight_average [numerics=native]"
    # (the reference's earlier mean moved by, difference kept, CSV from before the numerics column)
    for moved, kept, older in ((0.0, True, False), (0.0, True, True), (5.0, False, False)):
        directory = tmp_path / f"moved{moved}{older}"
        full, _ = write_leaderboard(everything, directory, "golden")
        csv = pd.read_csv(directory / "golden.csv")
        csv.loc[csv.method == "random_init [numerics=native]", "acc_mean"] += moved
        if older:  # its rows' numerics are read from their labels
            csv = csv.drop(columns="numerics")
        csv.to_csv(directory / "golden.csv", index=False)
        aside = [r for r in everything if not (r.method == "weight_average" and "portable" not in r.run_key)]
        table, markdown = write_leaderboard(aside, directory, "golden")
        carried = table[table.method == pick]
        assert len(carried) and f"`{pick}` 5w1s" in markdown.split("Carried over from the previous table")[1]
        assert carried["delta_vs_reference"].notna().all() == kept
        if kept:
            before = full[full.method == pick].set_index(["task", "test_steps"])["delta_vs_reference"]
            after = carried.set_index(["task", "test_steps"])["delta_vs_reference"]
            assert after.to_dict() == pytest.approx(before.to_dict(), abs=1e-4)  # the CSV keeps 4 decimals
        assert ("`random_init [numerics=native]` 5w1s · 1 step was re-made" in markdown) == (not kept)
        portable_row = table[table.method == "weight_average [numerics=portable]"]
        assert portable_row["delta_vs_reference"].notna().all()


def test_the_footer_names_the_zoo_build_of_carried_rows_and_flags_one_the_records_do_not_share(tmp_path):
    """A row moved aside and carried says which member weights it came from, beside re-made rows."""
    import copy

    def on_build(records, build):
        records = copy.deepcopy(records)
        for record in records:
            record.hashes["zoo_weights"] = build * 64
        return records

    records = fixture_records()
    for remade_on, flagged in (("a", False), ("b", True)):
        directory = tmp_path / remade_on
        write_leaderboard(on_build(records, "a"), directory, "golden")
        assert set(pd.read_csv(directory / "golden.csv").zoo_builds) == {"a" * 12}
        aside = [r for r in records if r.method != "weight_average"]
        _, markdown = write_leaderboard(on_build(aside, remade_on), directory, "golden")
        carried = markdown.split("Carried over from the previous table")[1].split("\n")[0]
        assert f"zoo builds `glyphs_ss_conv4` {'a' * 12}" in carried
        assert (f"{'a' * 12} is not a build of this table's records" in carried) == flagged


def test_the_first_collect_that_mixes_numerics_labels_carried_rows_and_keeps_their_differences(tmp_path):
    """An all-native table with bare names; random_init re-made portably (other run keys) and
    weight_average moved aside: the native rows are labelled, carried, and keep their differences."""
    records = fixture_records()
    full, _ = write_leaderboard(records, tmp_path, "golden")
    portable = [r for r in _portable_twins(records) if r.method == "random_init"]
    table, markdown = write_leaderboard(portable, tmp_path, "golden")
    assert set(table.method) == {
        f"{m} [numerics={k}]"
        for m, k in [("random_init", "native"), ("random_init", "portable")]
        + [("weight_average", "native"), ("maml_oracle", "native")]
    }
    before = full[full.method == "weight_average"].set_index(["task", "test_steps"])["delta_vs_reference"]
    after = table[table.method == "weight_average [numerics=native]"]
    assert after.set_index(["task", "test_steps"])["delta_vs_reference"].to_dict() == pytest.approx(
        before.to_dict(), abs=1e-4
    )  # paired with the native random_init, carried beside it
    assert set(table.loc[table.method.str.contains("portable"), "numerics"]) == {"portable"}
    assert "re-made" not in markdown


def test_a_carried_difference_survives_a_labelled_reference_row(tmp_path):
    """random_init also has a 5-episode smoke run, so its rows are labelled; moving weight_average aside
    must not blank its difference to the full random_init run (same numerics and episode count)."""
    from bench.evaluate import summarize

    records = fixture_records()
    first = next(r for r in records if r.method == "random_init" and r.setting["task"] == "5w1s")
    smoke = _variant(first, "random_init-smoke", **{"eval.limit": 5})
    smoke.per_episode = {k: v[:5] for k, v in smoke.per_episode.items()}
    smoke.metrics = {k: summarize(v) for k, v in smoke.per_episode.items()}
    full, _ = write_leaderboard(records + [smoke], tmp_path, "golden")
    assert any(m.startswith("random_init [") for m in full.method)
    aside = [r for r in records if r.method != "weight_average"] + [smoke]
    table, _ = write_leaderboard(aside, tmp_path, "golden")
    kept = table[table.method == "weight_average"]
    assert len(kept) == 4 and kept["delta_vs_reference"].notna().all()


def test_a_failed_re_run_leaves_no_label_behind(tmp_path):
    """A labelled sibling whose re-run failed is gone from the table, and so is its label."""
    records = fixture_records()
    variants = [
        _variant(r, r.run_key + "-avg", **{"method.init": "average"})
        for r in records
        if r.method == "weight_average"
    ]
    write_leaderboard(records + variants, tmp_path, "golden")
    failed = []
    for variant in variants:
        variant.status, variant.error = "failed", "FloatingPointError: boom"
        failed.append(variant)
    table, _ = write_leaderboard(records + failed, tmp_path, "golden")
    assert "weight_average" in set(table.method)
    assert not table.method.str.contains("method.init").any()


def test_an_all_digit_zoo_build_is_read_back_as_text(tmp_path):
    import copy

    records = copy.deepcopy(fixture_records())
    for record in records:
        record.hashes["zoo_weights"] = "0123456789e1" + "f" * 52  # parses as a float if read as a number
    write_leaderboard(records, tmp_path, "golden")
    _, markdown = write_leaderboard([r for r in records if r.method != "weight_average"], tmp_path, "golden")
    assert "zoo builds `glyphs_ss_conv4` 0123456789e1" in markdown
    assert set(pd.read_csv(tmp_path / "golden.csv", dtype=str).zoo_builds) == {"0123456789e1"}


def test_an_older_csv_without_the_newer_columns_is_carried_with_their_defaults(tmp_path):
    records = fixture_records()
    write_leaderboard(records, tmp_path, "golden")
    old = pd.read_csv(tmp_path / "golden.csv").drop(columns=["legacy", "external_model"])
    old.to_csv(tmp_path / "golden.csv", index=False)
    table, markdown = write_leaderboard(
        [r for r in records if r.method == "weight_average"], tmp_path, "golden"
    )
    assert not table.external_model.any() and set(table.legacy.fillna("")) == {""}
    assert "external model" not in markdown


def test_a_method_with_the_external_model_in_one_setting_only_keeps_each_cell_under_its_own_label(tmp_path):
    """The pivot looked cells up by method alone: both rows showed every cell, one under the wrong label."""
    records = [r for r in fixture_records() if r.method in ("random_init", "weight_average")]
    for r in records:
        if r.method == "weight_average" and r.setting["task"] == "5w1s":
            r.train_stats["uses_external_model"] = 1.0
    write_leaderboard(records, tmp_path, "golden")
    lines = (tmp_path / "golden.md").read_text().splitlines()
    labelled = next(line for line in lines if line.startswith("| weight_average (uses an external model)"))
    plain = next(line for line in lines if line.startswith("| weight_average ") and "external" not in line)
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")[1:]]  # noqa: E731
    headers = cells(next(line for line in lines if line.startswith("| method")))
    for header, mine, other in zip(headers, cells(labelled), cells(plain), strict=True):
        assert (mine == "X") != (other == "X"), f"{header}: each cell under exactly one of the two labels"
        assert (mine != "X") == header.startswith("5w1s")


def test_seeds_of_one_suite_with_different_episode_counts_are_refused_by_name():
    import copy

    from bench.errors import BenchError

    records = [r for r in fixture_records() if r.setting["task"] == "5w1s" and r.seeds["root"] == 0]
    short = [copy.deepcopy(r) for r in records if r.method == "weight_average"]
    for r in short:  # a second seed evaluated with eval.limit on the same suite
        r.run_key, r.seeds["root"], r.config["seed"] = r.run_key + "-s9", 9, 9
        r.per_episode = {k: v[:10] for k, v in r.per_episode.items()}
    reference = [copy.deepcopy(r) for r in records if r.method == "random_init"]
    for r in reference:
        r.run_key, r.seeds["root"], r.config["seed"] = r.run_key + "-s9", 9, 9
        r.per_episode = {k: v[:10] for k, v in r.per_episode.items()}
    with pytest.raises(BenchError, match=r"different episode counts \[10, 40\]"):
        tidy_table(records + short + reference)


def test_the_paper_comparison_never_sets_one_dataset_beside_a_published_average():
    from bench.leaderboard import paper_comparison

    records = _two_dataset_records()
    table = tidy_table(records)
    one_dataset = tidy_table(  # weight_average finished glyphs only: no average row for it
        [r for r in records if not (r.method == "weight_average" and r.setting["dataset"] == "omniglot")]
    )
    block = {
        "source": "test",
        "readout": 10,
        "profile": "cpu",
        "results": {"weight_average": {"5w1s": [50.0, 1.0]}},
    }
    assert "| weight_average | 5w1s | 50.00 ± 1.00 | X |" in paper_comparison(one_dataset, block)
    averaged = paper_comparison(table, block)
    assert "| weight_average | 5w1s | 50.00 ± 1.00 | X |" not in averaged  # both datasets: their average


def test_collect_accepts_a_reference_that_the_carried_table_labels(tmp_path):
    from bench.collect import check_reference

    csv = tmp_path / "table.csv"
    pd.DataFrame({"method": ["random_init [numerics=native]", "free [numerics=portable]"]}).to_csv(csv)
    check_reference("random_init", [], csv)  # a fresh checkout: only the labelled carried rows
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="unknown reference method 'random_inti'"):
        check_reference("random_inti", [], csv)


def test_the_paper_comparison_gives_each_labelled_row_of_a_method_its_line():
    from bench.leaderboard import paper_comparison

    table = tidy_table(fixture_records())
    table.loc[table.method == "weight_average", "method"] = "weight_average [numerics=portable]"
    block = {
        "source": "test",
        "readout": 10,
        "profile": "cpu",
        "results": {"weight_average": {"5w1s": [50.0, 1.0]}},
    }
    text = paper_comparison(table, block)
    assert "| weight_average [numerics=portable] | 5w1s | 50.00 ± 1.00 | " in text
    assert "| X |" not in text  # it was not run under the bare name: the labelled row is the number


def test_a_difference_over_fewer_seeds_than_its_row_says_so(tmp_path):
    # random_init keeps seed 0 only at 5w1s: weight_average's two seeds pair on one
    records = [
        r
        for r in fixture_records()
        if not (r.method == "random_init" and r.setting["task"] == "5w1s" and r.seeds["root"] == 1)
    ]
    table = tidy_table(records)
    row = table[(table.method == "weight_average") & (table.task == "5w1s")].iloc[0]
    assert row.n_seeds == 2 and row.delta_n_seeds == 1
    both = table[(table.method == "maml_oracle") & (table.task == "5w5s")].iloc[0]
    assert both.n_seeds == 2 and both.delta_n_seeds == 2
    _, markdown = write_leaderboard(records, tmp_path, "golden", carry=False)
    assert "†1/2" in markdown and "pools only the k of the row's n seeds" in markdown
    full, markdown = write_leaderboard(fixture_records(), tmp_path / "full", "golden", carry=False)
    paired = full.delta_n_seeds.notna()
    assert "†" not in markdown and (full.delta_n_seeds[paired] == full.n_seeds[paired]).all()


def test_a_record_with_another_ci_definition_is_refused_by_name():
    records = fixture_records()
    records[0].ci_method = "t-interval over seeds"
    with pytest.raises(
        BenchError, match=rf"record golden/{records[0].run_key} gives CIs as 't-interval over seeds'"
    ):
        tidy_table(records)


def test_a_record_is_paired_only_with_the_reference_run_of_its_own_suite():
    import dataclasses

    records = [r for r in fixture_records() if r.setting["task"] == "5w1s" and r.seeds["root"] == 0]
    moved = [
        dataclasses.replace(r, hashes={**r.hashes, "suite": "another-suite"})
        if r.method == "weight_average"
        else r
        for r in records
    ]
    table = tidy_table(moved)
    row = table[table.method == "weight_average"].iloc[0]
    assert pd.isna(row.delta_vs_reference) and pd.isna(row.delta_n_seeds)
    paired = tidy_table(records)
    assert paired[paired.method == "weight_average"].iloc[0].delta_vs_reference > 0
