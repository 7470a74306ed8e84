"""Each metric against a hand-computed example (and self-BLEU against NLTK)."""

import math
import random

import pytest

from dropsample import metrics


def test_distinct_n_by_hand():
    samples = [[1, 2, 3, 1], [1, 2, 4]]
    # unigrams: 7 total, distinct {1,2,3,4} = 4; bigrams: (1,2)(2,3)(3,1)(1,2)(2,4) -> 4 distinct of 5
    assert metrics.distinct_n(samples, 1) == pytest.approx(4 / 7)
    assert metrics.distinct_n(samples, 2) == pytest.approx(4 / 5)
    assert metrics.distinct_n(samples, 4) == pytest.approx(1 / 1)
    assert metrics.distinct_n([[1, 2]], 3) is None


def test_seq_rep_by_hand():
    # 1 2 1 2 1 2: 4-grams (1212)(2121)(1212) -> 2 unique of 3 -> 1/3; 1 2 3 4 5 -> 0
    assert metrics.seq_rep_n([[1, 2, 1, 2, 1, 2], [1, 2, 3, 4, 5], [1, 2]], 4) == pytest.approx((1 / 3 + 0) / 2)


def test_repetition_loop_detection():
    assert metrics.ends_in_loop([9, 1, 2, 1, 2, 1, 2])  # "1 2" three times at the end
    assert not metrics.ends_in_loop([9, 1, 2, 1, 2])  # only twice
    assert not metrics.ends_in_loop([5, 5, 5, 5])  # single-token phrases do not count (min 2)
    assert metrics.ends_in_loop([7, 8, 9, 7, 8, 9, 7, 8, 9])
    assert metrics.repetition_rate([[1, 2, 1, 2, 1, 2], [1, 2, 3]]) == 0.5


def test_zipf_on_an_exact_power_law():
    # counts 8, 4, 2, 1 at ranks 1..4 is not a power law; 12, 6, 4, 3 = 12 / rank is, with s = 1
    samples = [[0] * 12 + [1] * 6 + [2] * 4 + [3] * 3]
    assert metrics.zipf_coefficient(samples) == pytest.approx(1.0, abs=1e-9)
    assert metrics.zipf_coefficient([[1, 1, 1]]) is None


def test_self_bleu_by_hand():
    # identical samples: every precision 1, lengths equal -> BLEU 1
    assert metrics.self_bleu([[1, 2, 3, 4, 5]] * 3) == pytest.approx(1.0)
    # no shared unigram -> 0
    assert metrics.self_bleu([[1, 2, 3, 4], [5, 6, 7, 8]]) == 0.0
    # hyp 1 2 3 4 vs ref 1 2 3 5: p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> smoothed 0.1/1; same length, BP 1
    expected = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(0.1)) / 4)
    assert metrics.self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]]) == pytest.approx(expected)


def test_self_bleu_matches_nltk():
    bleu = pytest.importorskip("nltk.translate.bleu_score")
    rng = random.Random(0)
    samples = [[rng.randint(0, 6) for _ in range(rng.randint(2, 25))] for _ in range(15)]
    smooth = bleu.SmoothingFunction().method1
    expected = sum(
        bleu.sentence_bleu([s for j, s in enumerate(samples) if j != i], samples[i], smoothing_function=smooth)
        for i in range(len(samples))
    ) / len(samples)
    assert metrics.self_bleu(samples) == pytest.approx(expected, rel=1e-9)


def test_quality_is_token_weighted():
    q = metrics.quality([(2.0, 1.0, 2), (6.0, 3.0, 2)])
    assert q["gen_ppl"] == pytest.approx(math.exp(8 / 4))
    assert q["mean_entropy"] == pytest.approx(1.0)
    assert metrics.quality([(0.0, 0.0, 0)])["gen_ppl"] is None


def test_large_vocab_ids_pack_into_codes():
    samples = [[50000, 50001, 50002, 50003, 50000, 50001, 50002, 50003]]
    assert metrics.distinct_n(samples, 4) == pytest.approx(4 / 5)
