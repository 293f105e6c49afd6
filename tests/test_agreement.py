"""Label agreement of synthetic images (purer.agreement): counted right, everywhere, and harmless."""

from __future__ import annotations

import pytest
import torch

import baselines._bank as bank_module
from baselines._bank import ClassBank
from bench.tasks import TaskShape, TaskSuite
from purer.agreement import AGREED, CHECKED, PERCENT, agreement_stats, count_agreement, zero_counts
from purer.dynamic_data import DynamicDataset
from purer.inversion import InversionWeights
from tests.test_methods import _train


def test_counts_and_percent_by_hand():
    counts = zero_counts()
    scores = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [-1.0, -2.0]])  # argmax 0, 1, 0, 0
    count_agreement(counts, scores, torch.tensor([0, 0, 1, 0]))
    assert counts == {CHECKED: 4.0, AGREED: 2.0}
    count_agreement(counts, scores[:2], torch.tensor([0, 1]))
    assert agreement_stats(counts) == {CHECKED: 6.0, AGREED: 4.0, PERCENT: pytest.approx(400 / 6)}
    assert PERCENT not in agreement_stats(zero_counts())  # nothing checked: no 0 % (or NaN) reported


def test_bank_agreement_is_the_members_argmax_on_the_banked_images(tiny_zoo):
    member = tiny_zoo.members[1]
    bank = ClassBank()
    weights = InversionWeights()
    bank.add_member(member, 3, 4, 5, 0.25, weights, torch.Generator().manual_seed(0), torch.device("cpu"))
    agreed = 0
    with torch.no_grad():
        for local, key in enumerate(member.class_keys):
            for images in (bank.support[key], bank.query[key]):
                agreed += int((member.model(images).argmax(1) == local).sum())
    assert bank.agreement == {CHECKED: 5 * (3 + 4), AGREED: float(agreed)}
    restored = ClassBank()
    restored.load_state_dict(bank.state_dict())
    assert restored.agreement == bank.agreement
    old = bank.state_dict()
    del old["agreement"]  # a checkpoint written before the counters: loads, counters from zero
    restored.load_state_dict(old)
    assert restored.agreement == zero_counts()


def test_purer_agreement_matches_the_members_own_forward(tiny_zoo, small_glyphs):
    """Folded conv4 teachers give the members' own argmax; each row is checked by its owner."""
    data = DynamicDataset(tiny_zoo, 4, 0.25, torch.device("cpu"), torch.Generator().manual_seed(0))
    with torch.no_grad():  # each class's rows: 3 real images of the class and one of noise
        for c, key in enumerate(data.class_names):
            rows = small_glyphs.class_rows(small_glyphs.class_names.index(key.split("/", 1)[1]))[:3]
            data.X[4 * c : 4 * c + 3] = small_glyphs.normalize(small_glyphs.images[rows])
        counts = data.label_agreement()
        agreed = 0
        for member, slot in zip(tiny_zoo.members, data.teachers, strict=True):
            agreed += int((member.model(data.X[slot.rows]).argmax(1) == slot.targets).sum())
    assert counts == {CHECKED: float(len(data.X)), AGREED: float(agreed)}
    assert 0.5 * len(data.X) < agreed < len(data.X)  # informative: neither none nor all


def _expected_checked(name: str, stats: dict) -> float:
    """Images each method's inversions made for training, from its own counters (tiny zoo: 5 classes)."""
    if name in ("dfmaml", "dfprotonet", "bidfmkd", "bidfmkd_zo"):  # smoke knobs: 4 support + 15 query
        return stats["member_inversions"] * 5 * (4 + 15)
    if name == "tds":  # k_shot + n_query per class, the train bank's images
        return stats["member_inversions"] * 5 * (1 + 15)
    if name == "free":
        return stats["member_recoveries"] * 5 * 16
    if name == "tgr":  # epoch inversions only: the similarity's are not replayed
        return (stats["member_inversions"] - stats["embedding_inversions"]) * 5 * 16
    return stats["synth_images"]  # PURER: every row of X, once (disjoint zoo)


@pytest.mark.parametrize(
    "name", ["dfmaml", "dfprotonet", "bidfmkd", "bidfmkd_zo", "tds", "free", "tgr", "purer_ei"]
)
def test_every_inversion_method_records_the_agreement_of_all_its_images(name, tiny_zoo, small_glyphs):
    stats: dict = {}
    _train(name, tiny_zoo, real_data=small_glyphs, stats=stats)
    assert stats[CHECKED] == _expected_checked(name, stats) > 0
    assert 0 <= stats[AGREED] <= stats[CHECKED]
    assert stats[PERCENT] == pytest.approx(100 * stats[AGREED] / stats[CHECKED])


def test_the_check_changes_nothing_the_method_learns(tiny_zoo, small_glyphs, monkeypatch):
    """The extra eval-mode forward draws no random number and moves no statistic: same learner."""
    episode = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 1, seed=0).episode(0)

    def logits() -> torch.Tensor:
        learner = _train("dfmaml", tiny_zoo, iterations=3, extra={"generate_interval": 1})
        return learner.adapt(episode.support_x, episode.support_y)(episode.query_x)

    checked = logits()
    monkeypatch.setattr(bank_module, "check_images", lambda *args: None)
    assert torch.equal(checked, logits())
