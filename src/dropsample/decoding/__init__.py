"""Decoding: how a trained model turns prompts into text.

    processors.py   the logits-processor contract and every filter/penalty (top-k, top-p, ...)
    search.py       the engine: greedy, sampling, beam and contrastive search on a KV cache

Sampler settings (their keys, defaults and checks) are `schema.SamplerSettings`; presets
in conf/sampler/ resolve through `config.resolve_samplers`.
"""
