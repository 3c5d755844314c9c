"""Incremental detokenizing and stop sequences, without a model."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from openft.serving.text import IncrementalDecoder, StopMatcher


def stream_through(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    released = []
    for piece in pieces:
        text, hit = matcher.push(piece)
        released.append(text)
        if hit:
            return "".join(released), True
    return "".join(released) + matcher.flush(), False


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hello", " wor", "ld", "!"], ("world",), ("Hello ", True)),
        (["ab", "c", "d"], ("cd",), ("ab", True)),
        (["a", "b", "c"], ("x",), ("abc", False)),
        # A false start of the stop is released once the next piece rules it out.
        (["wo", "w! wor", "m"], ("world",), ("wow! worm", False)),
        (["one END", " two"], ("END", "one"), ("", True)),
        (["xx<", "|st", "op|>yy"], ("<|stop|>",), ("xx", True)),
    ],
)
def test_stop_matcher_cuts_before_first_stop(pieces, stops, expected):
    assert stream_through(StopMatcher(stops), pieces) == expected


def test_stop_matcher_holds_back_possible_stop_prefix():
    matcher = StopMatcher(("STOP",))

    assert matcher.push("abcST") == ("abc", False)
    assert matcher.push("x") == ("STx", False)


def test_incremental_decoder_releases_multibyte_characters_whole(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Zürich 東京 🙂 naïve"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split()), "the tokenizer splits characters across tokens"

    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids] + [decoder.flush()]

    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
