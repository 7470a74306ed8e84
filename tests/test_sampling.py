"""Processors against transformers' own logits processors, on random and edge-case logits."""

import pytest
import torch

from dropsample import config
from dropsample.decoding import processors as sampling
from dropsample.errors import ConfigError

tlp = pytest.importorskip("transformers.generation.logits_process")

INF = float("-inf")


def cases():
    torch.manual_seed(0)
    yield "random", torch.randn(6, 50) * 3
    yield "ties", torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5, 0.5], [3.0, 3.0, 1.0, 1.0, 1.0, -1.0]])
    yield "all_equal", torch.zeros(3, 10)
    yield "one_dominant", torch.tensor([[30.0] + [0.0] * 19, [0.0] * 19 + [50.0]])
    yield "with_inf", torch.tensor([[1.0, INF, 0.5, 2.0, INF, -1.0]])


IDS = torch.tensor([[1, 2, 3, 1, 2], [0, 0, 4, 5, 0], [2, 2, 2, 2, 2], [1, 1, 1, 1, 1], [0, 1, 2, 3, 4], [5, 4, 3, 2, 1]])

PAIRS = [
    (sampling.TopK(1), tlp.TopKLogitsWarper(1)),
    (sampling.TopK(3), tlp.TopKLogitsWarper(3)),
    (sampling.TopK(1000), tlp.TopKLogitsWarper(1000)),  # k at or above the vocabulary
    (sampling.TopP(0.9), tlp.TopPLogitsWarper(0.9)),
    (sampling.TopP(0.3), tlp.TopPLogitsWarper(0.3)),
    (sampling.TopP(1.0), tlp.TopPLogitsWarper(1.0)),
    (sampling.MinP(0.1), tlp.MinPLogitsWarper(0.1)),
    (sampling.MinP(1.0), tlp.MinPLogitsWarper(1.0)),
    (sampling.Typical(0.95), tlp.TypicalLogitsWarper(0.95)),
    (sampling.Typical(0.2), tlp.TypicalLogitsWarper(0.2)),
    (sampling.Epsilon(0.03), tlp.EpsilonLogitsWarper(0.03)),
    (sampling.Eta(0.0009), tlp.EtaLogitsWarper(0.0009)),
    (sampling.Eta(0.2), tlp.EtaLogitsWarper(0.2)),
    (sampling.Temperature(0.7), tlp.TemperatureLogitsWarper(0.7)),
    (sampling.RepetitionPenalty(1.3), tlp.RepetitionPenaltyLogitsProcessor(1.3)),
    (sampling.RepetitionPenalty(0.8), tlp.RepetitionPenaltyLogitsProcessor(0.8)),
    (sampling.NoRepeatNGram(2), tlp.NoRepeatNGramLogitsProcessor(2)),
    (sampling.NoRepeatNGram(1), tlp.NoRepeatNGramLogitsProcessor(1)),
    (sampling.NoRepeatNGram(3), tlp.NoRepeatNGramLogitsProcessor(3)),
]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=lambda p: type(p).__name__ + str(vars(p).get("k", "")))
@pytest.mark.parametrize("name,logits", list(cases()), ids=[c[0] for c in cases()])
def test_processor_matches_transformers(ours, theirs, name, logits):
    ids = IDS[: logits.shape[0]] % logits.shape[1]
    expected = theirs(ids.clone(), logits.clone())
    got = ours(ids.clone(), logits.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(expected)), f"{name}: different tokens removed"
    finite = ~torch.isinf(expected)
    torch.testing.assert_close(got[finite], expected[finite])
    assert (~torch.isinf(got)).sum(-1).min() >= 1, "at least one token always survives"


def bpe_sized_logits(rows: int = 12, vocab: int = 50257) -> torch.Tensor:
    """Next-token logits at GPT-2's vocabulary: peaked rows (nucleus among the best 256 or
    4,096), a near-flat row (nucleus of tens of thousands: the sort), a row after top-k."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(rows, vocab, generator=g) * torch.tensor([8.0, 6.0, 5.0, 4.0] * (rows // 4))[:, None]
    logits[-1] = torch.randn(vocab, generator=g) * 0.1
    logits[0, 1000:] = INF
    return logits


@pytest.mark.parametrize("p", [0.3, 0.9, 0.95, 0.999])
def test_top_p_on_candidate_sets_equals_transformers_at_a_bpe_vocabulary(p):
    logits = bpe_sized_logits()
    expected = tlp.TopPLogitsWarper(p)(None, logits.clone())
    got = sampling.TopP(p)(None, logits.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.equal(got[~torch.isinf(got)], logits[~torch.isinf(got)])


def test_top_p_sorts_only_rows_whose_nucleus_is_not_among_the_candidates(monkeypatch):
    sorted_rows = []
    full = sampling.TopP._sorted
    monkeypatch.setattr(sampling.TopP, "_sorted", lambda self, x: sorted_rows.append(len(x)) or full(self, x))
    sampling.TopP(0.9)(None, bpe_sized_logits())
    assert sorted_rows == [1]  # the near-flat row alone


@pytest.mark.parametrize("mass", [0.2, 0.9, 0.95])
def test_typical_on_candidate_sets_equals_transformers_at_a_bpe_vocabulary(mass, monkeypatch):
    logits = bpe_sized_logits()
    expected = tlp.TypicalLogitsWarper(mass)(None, logits.clone())
    sorted_rows = []
    full = sampling.Typical._sorted
    monkeypatch.setattr(sampling.Typical, "_sorted", lambda self, x, d: sorted_rows.append(len(x)) or full(self, x, d))
    got = sampling.Typical(mass)(None, logits.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.equal(got[~torch.isinf(got)], logits[~torch.isinf(got)])
    assert sum(sorted_rows) < len(logits) // 2  # most rows were decided on candidates


def test_top_k_keeps_ties_at_the_kth_value():
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    kept = ~torch.isinf(sampling.TopK(2)(None, logits))
    assert kept.tolist() == [[False, True, True, True, False]]


def test_chain_order_and_neutral_settings():
    chain = sampling.build_processors(
        {"top_p": 0.9, "temperature": 0.7, "repetition_penalty": 1.2, "top_k": 5, "typical_p": 0.9, "min_p": 0.05,
         "eta": 0.001, "epsilon": 0.001, "no_repeat_ngram_size": 3}
    )
    assert [type(p).__name__ for p in chain] == [
        "RepetitionPenalty", "NoRepeatNGram", "Temperature", "TopK", "TopP", "MinP", "Typical", "Epsilon", "Eta",
    ]
    assert sampling.build_processors({"top_k": 0, "top_p": 1.0, "temperature": 1.0, "typical_p": 1.0}) == []


def test_chain_matches_transformers_list():
    torch.manual_seed(1)
    logits = torch.randn(4, 64) * 2
    ids = torch.randint(0, 64, (4, 9))
    settings = {"repetition_penalty": 1.3, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.02}
    theirs = tlp.LogitsProcessorList([
        tlp.RepetitionPenaltyLogitsProcessor(1.3), tlp.TemperatureLogitsWarper(0.8), tlp.TopKLogitsWarper(20),
        tlp.TopPLogitsWarper(0.9), tlp.MinPLogitsWarper(0.02),
    ])
    got = sampling.apply_processors(sampling.build_processors(settings), ids, logits.clone())
    expected = theirs(ids, logits.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got[~torch.isinf(got)], expected[~torch.isinf(expected)])


@pytest.mark.parametrize(
    "settings,key",
    [
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"temperature": -0.5}, "temperature"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"eta": 1.0}, "eta"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_invalid_settings_name_the_setting(settings, key):
    with pytest.raises(ConfigError) as err:
        sampling.build_processors(settings)
    assert err.value.key == key


@pytest.mark.parametrize("make", [lambda: sampling.TopK(0), lambda: sampling.TopP(1.5), lambda: sampling.MinP(-1),
                                  lambda: sampling.Temperature(0), lambda: sampling.Typical(0.0),
                                  lambda: sampling.Epsilon(1.0), lambda: sampling.Eta(0.0),
                                  lambda: sampling.RepetitionPenalty(-1), lambda: sampling.NoRepeatNGram(0)])
def test_processor_constructors_check_their_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_every_processor_honours_the_contract():
    assert all(issubclass(type(p), sampling.LogitsProcessor) for p, _ in PAIRS)


def test_resolve_presets_dicts_and_errors():
    samplers = config.resolve_samplers(["greedy", {"base": "top_p_0.9", "temperature": 0.7}, {"name": "cold", "temperature": 0}])
    assert [s.name for s in samplers] == ["greedy", "top_p_0.9+temperature=0.7", "cold"]
    assert samplers[1].settings.changed() == {"top_p": 0.9, "temperature": 0.7}  # strategy sample is the default
    assert samplers[2].strategy == "greedy"  # temperature 0 means greedy
    with pytest.raises(ConfigError, match=r"samplers\[1\].num_beams"):
        config.resolve_samplers(["greedy", {"base": "beam_4", "num_beams": 0}])
    with pytest.raises(ConfigError, match="unknown sampler preset"):
        config.resolve_samplers(["nucleus"])
    with pytest.raises(ConfigError, match="names repeat"):
        config.resolve_samplers(["greedy", "greedy"])


def test_every_preset_is_valid():
    from dropsample.config import conf_dir

    names = [p.stem for p in (conf_dir() / "sampler").glob("*.yaml")]
    assert {"greedy", "pure", "temp_0.7", "top_k_40", "top_k_640", "top_p_0.9", "top_p_0.95", "min_p_0.1",
            "typical_0.95", "eta", "beam_4"} <= set(names)
    assert len(config.resolve_samplers(names)) == len(names)
