"""Sample metrics against hand computation, the reference code's definitions written as plain
slow loops (Holtzman et al. 2020's degen, SimCTG's evaluation.py), NLTK and mauve-text."""

import gzip
import math
import random
import zlib
from collections import Counter

import numpy as np
import pytest

from dropsample import metrics
from dropsample.metrics import literature as lit
from dropsample.metrics import registry, suite
from dropsample.metrics.bootstrap import Resampler
from dropsample.metrics.ngrams import Corpus, word_ids


# ---------------------------------------------------------------------------
# Reference definitions, written from the papers' code as plain loops


def holtzman_reference(gen, max_n=90):
    """degen/metrics/repetition.py: the phrase length with the most back-to-back repeats at the
    end (first on ties); repetitive if it repeats > 1 times and is >= 3 long or repeats > 50."""
    rev = list(reversed(gen))
    repeats = [0] * max_n
    for n in range(1, max_n + 1):
        r = 1
        while len(rev[n * r : n * (r + 1)]) == n and rev[n * r : n * (r + 1)] == rev[:n]:
            r += 1
        repeats[n - 1] = r
    best = max(range(max_n), key=lambda x: repeats[x])
    return repeats[best] > 1 and (best + 1 >= 3 or repeats[best] > 50)


def simctg_reference(texts, n, reach_last=False):
    """SimCTG's eval_text + measure_repetition_and_diversity (no rounding): per text, the set of
    whitespace n-grams and their count, pooled; its loop `while end_idx < len` skips the last n-gram."""
    unique = total = 0
    for text in texts:
        words = text.strip().split()
        start, end = 0, n
        seen = set()
        while end < len(words) or (reach_last and end == len(words)):
            seen.add(" ".join(words[start:end]))
            total += 1
            start, end = start + 1, end + 1
        unique += len(seen)
    return 1 - unique / total


def zipf_reference(samples, top=5000):
    counts = Counter(t for s in samples for t in s)
    ys = np.array(sorted(counts.values(), reverse=True)[:top], dtype=float)
    xs = np.arange(1, len(ys) + 1)
    return -np.polyfit(np.log(xs), np.log(ys), 1)[0]


# ---------------------------------------------------------------------------


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


def test_holtzman_repetition_matches_the_reference_code():
    hand = {
        (9, 1, 2, 3, 1, 2, 3): True,  # a 3-token phrase twice
        (9, 1, 2, 1, 2, 1, 2): False,  # a 2-token phrase, 3 times: too short and too few
        (5,) * 51: True,  # one token more than 50 times
        (5,) * 50: False,  # 50 times: the 1-token phrase wins the tie-break and is not enough
        (1, 2, 3): False,
        (): False,
    }
    for gen, expected in hand.items():
        assert holtzman_reference(list(gen)) == expected, gen
        assert lit.ends_in_repetition(list(gen)) == expected, gen
    rng = random.Random(0)
    samples = []
    for _ in range(300):  # random heads ending in loops of random phrase lengths and counts
        phrase = [rng.randint(0, 4) for _ in range(rng.randint(1, 6))]
        samples.append([rng.randint(0, 4) for _ in range(rng.randint(0, 12))] + phrase * rng.randint(1, 4))
    assert [lit.ends_in_repetition(s) for s in samples] == [holtzman_reference(s) for s in samples]
    flagged = sum(map(holtzman_reference, samples))
    assert 0 < flagged < 300 and metrics.repetition_rate(samples) == pytest.approx(flagged / 300)


def test_simctg_rep_n_and_diversity_match_the_reference_code():
    rng = random.Random(1)
    vocab = "the a cat sat on mat dog ran and".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 30))) for _ in range(40)]
    ids = word_ids(texts)
    for n in (2, 3, 4):
        # drop_last reproduces the reference loop exactly; the default also counts the last n-gram
        assert lit.rep_n(ids, n, drop_last=True) == pytest.approx(simctg_reference(texts, n))
        assert lit.rep_n(ids, n) == pytest.approx(simctg_reference(texts, n, reach_last=True))
    expected = math.prod(1 - simctg_reference(texts, n, reach_last=True) for n in (2, 3, 4))
    assert lit.diversity_score(ids) == pytest.approx(expected)
    # by hand: "a b a b" has bigrams ab ba ab -> 2 unique of 3; "c d" has 1 of 1 -> rep-2 = 1 - 3/4
    assert lit.rep_n(word_ids(["a b a b", "c d"]), 2) == pytest.approx(1 / 4)


def test_zipf_matches_a_least_squares_fit_over_the_top_5000_ranks():
    samples = [[0] * 12 + [1] * 6 + [2] * 4 + [3] * 3]  # 12 / rank: s = 1 exactly
    assert metrics.zipf_coefficient(samples) == pytest.approx(1.0, abs=1e-9)
    assert metrics.zipf_coefficient([[1, 1, 1]]) is None
    rng = np.random.default_rng(0)
    big = [rng.zipf(1.4, 300).clip(max=40000).tolist() for _ in range(100)]  # more than 5000 types
    assert metrics.zipf_coefficient(big) == pytest.approx(zipf_reference(big), rel=1e-9)
    many = [list(range(k * 60, k * 60 + 60)) + [k] * (k % 7) for k in range(100)]  # 6,000 types
    assert metrics.zipf_coefficient(many) == pytest.approx(zipf_reference(many), rel=1e-9)


def test_compression_ratio_is_bytes_over_gzip_bytes():
    texts = ["to be or not to be"] * 20 + ["that is the question"]
    data = " ".join(texts).encode()
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = deflate.compress(data) + deflate.flush()
    assert metrics.compression_ratio(texts) == pytest.approx(len(data) / (len(raw) + 18))  # gzip: 10 + 8 bytes
    assert len(gzip.compress(data, 9, mtime=0)) == len(raw) + 18
    assert metrics.compression_ratio([""]) is None


def test_self_bleu_by_hand():
    assert metrics.self_bleu([[1, 2, 3, 4, 5]] * 3) == pytest.approx(1.0)
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


def test_large_vocab_ids_and_long_ngrams():
    samples = [[50000, 50001, 50002, 50003, 50000, 50001, 50002, 50003]]
    assert metrics.distinct_n(samples, 4) == pytest.approx(4 / 5)
    wide = [[10**12 + i for i in range(8)] * 2]  # ids far beyond 16 bits: 4-grams still exact
    assert metrics.distinct_n(wide, 4) == pytest.approx(8 / 13)


def test_word_level_metrics_by_hand():
    texts = ["the cat sat on the mat", "the dog  sat\n"]
    ts = suite.TextSet(texts, [[ord(c) for c in t] for t in texts],
                       own=np.array([[2.0, 1.0, 2.0], [6.0, 3.0, 2.0]]))
    out = suite.measure(ts, Resampler(2, 0, 0))
    assert set(out) == set(registry.BY_NAME)
    assert all(set(e) == {"value", "low", "high"} for e in out.values())
    v = {k: e["value"] for k, e in out.items()}
    # words: the cat sat on the mat | the dog sat -> 9 words, 6 distinct; bigrams 5 + 2, all distinct
    assert v["distinct_1"] == pytest.approx(6 / 9) and v["distinct_2"] == pytest.approx(1.0)
    assert v["mean_length"] == pytest.approx(4.5) and v["rep_2"] == pytest.approx(0.0)
    chars = "".join(texts)
    assert v["distinct_1_token"] == pytest.approx(len(set(chars)) / len(chars))
    assert v["mean_length_token"] == pytest.approx(len(chars) / 2)
    assert v["gen_ppl"] == pytest.approx(math.exp(8 / 4)) and v["mean_entropy"] == pytest.approx(1.0)
    assert v["mauve"] is None and out["distinct_1"]["low"] is None  # no judge; no bootstrap asked
    # Holtzman's repetition on words leaves out a last word the length limit may have cut
    loops = ["so it goes on so it goes on so it go", "so it goes on so it goes on so it goes ", "a b c d e"]
    out = suite.measure(suite.TextSet(loops, [[1]] * 3), Resampler(3, 0, 0))
    assert out["repetition"]["value"] == pytest.approx(2 / 3)


def _texts(n, seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)]
    return [" ".join(rng.choice(vocab[: rng.randint(20, 300)]) for _ in range(30)) for _ in range(n)]


def _measure(texts, seed=0, replicates=300):
    own = np.column_stack([np.arange(len(texts)) % 5 + 1.0, np.ones(len(texts)), np.full(len(texts), 3.0)])
    ts = suite.TextSet(texts, word_ids(texts), own=own)
    return suite.measure(ts, Resampler(len(texts), replicates, seed))


def test_bootstrap_intervals_are_seeded_and_shrink_with_more_samples():
    small, large = _texts(40, 0), _texts(640, 0)
    a, b, c = _measure(small), _measure(small), _measure(small, seed=1)
    assert a == b and a != c
    wide, narrow = a, _measure(large)
    for name in ("gen_ppl", "distinct_1", "distinct_4", "self_bleu_4", "rep_2", "diversity", "zipf",
                 "compression_ratio"):
        lo, hi = wide[name]["low"], wide[name]["high"]
        assert lo <= wide[name]["value"] <= hi, name
        assert narrow[name]["high"] - narrow[name]["low"] < (hi - lo) / 1.5, name  # 16x the samples


def test_weighted_statistics_equal_recomputing_on_the_resampled_samples():
    rng = random.Random(3)
    samples = [[rng.randint(0, 30) for _ in range(rng.randint(0, 20))] for _ in range(30)]
    R = Resampler(len(samples), 6, 5)
    c = Corpus(samples)
    for b in range(6):
        drawn = [samples[i] for i in R.idx[b]]
        W = R.W[b : b + 1]
        for n in (1, 2, 4):
            assert lit.distinct(c, n, W)[0] == pytest.approx(metrics.distinct_n(drawn, n))
        assert lit.rep(c, 3, W)[0] == pytest.approx(metrics.rep_n(drawn, 3))
        assert lit.seq_rep(c, 4, W)[0] == pytest.approx(metrics.seq_rep_n(drawn, 4))
        assert lit.zipf(c, W)[0] == pytest.approx(metrics.zipf_coefficient(drawn))


def test_mauve_keeps_faiss_native_warnings_off_the_terminal(capfd):
    pytest.importorskip("mauve")
    import sys

    from dropsample.metrics import mauve

    rng = np.random.default_rng(0)
    mauve.compute(rng.normal(size=(50, 16)), rng.normal(size=(50, 16)))  # 100 points, 5 centroids
    print("after", file=sys.stderr)
    err = capfd.readouterr().err
    assert "clustering" not in err and "after" in err  # silenced inside, file descriptor 2 restored


def test_mauve_is_near_one_for_one_distribution_and_low_for_disjoint_ones():
    pytest.importorskip("mauve")
    from dropsample.metrics import mauve

    rng = np.random.default_rng(0)
    p = rng.normal(size=(300, 16))
    same = mauve.compute(p, rng.normal(size=(300, 16)))
    apart = mauve.compute(p, rng.normal(size=(300, 16)) + 4.0)
    assert same["num_buckets"] == 30 and same["mauve"] > 0.9
    assert apart["mauve"] < 0.2 and apart["frontier_integral"] > same["frontier_integral"]
    q = rng.normal(size=(300, 16))
    assert mauve.compute(p, q) == mauve.compute(p, q)  # the k-means seed is fixed
    assert mauve.warning(300) and mauve.warning(5000) is None


def test_a_fractions_normal_interval_stays_within_zero_and_one():
    from dropsample.metrics.bootstrap import normal_interval

    # distinct-1 of 0.98 with a bootstrap SE of 0.05: 0.98 + 1.96 * 0.05 would pass 1
    reps = [0.93, 1.0, 0.98, 0.90, 1.0, 1.0, 0.95, 1.0]
    low, high = normal_interval(0.98, reps, (0.0, 1.0))
    assert high == 1.0 and low == pytest.approx(0.98 - 1.959964 * np.std(reps, ddof=1))
    assert normal_interval(0.98, reps)[1] > 1.0  # unbounded by default


def test_registry_names_are_unique_and_families_known():
    names = [m.name for m in registry.METRICS]
    assert len(names) == len(set(names))
    assert all(m.family in registry.FAMILIES and m.unit in ("word", "token", "text", "judge") for m in registry.METRICS)
    with pytest.raises(ValueError, match="unknown sample metric"):
        registry.metric("nope")
