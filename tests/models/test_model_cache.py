"""The GGUF → safetensors cache: one metadata parse per conversion."""

from __future__ import annotations

import gguf

from featurescope.models import cache as model_cache


def test_one_gguf_parse_shares_a_reader_within_the_block_only():
    path = model_cache._smollm2_gguf()
    original = gguf.GGUFReader
    with model_cache._one_gguf_parse():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # transformers' later calls reuse the parsed file
        assert isinstance(first, original) and "tokenizer.ggml.tokens" in first.fields
    assert gguf.GGUFReader is original
