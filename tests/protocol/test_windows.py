"""Windowing of the canonical protocol: n // seqlen non-overlapping windows in order, tail dropped."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pplgate.errors import ProtocolError
from pplgate.protocol.windows import make_windows, tail_tokens, window_count, window_spans


@pytest.mark.parametrize(
    ("n", "seqlen", "count", "tail"),
    [
        (0, 2048, 0, 0),
        (1, 2048, 0, 1),
        (2047, 2048, 0, 2047),
        (2048, 2048, 1, 0),
        (2049, 2048, 1, 1),
        (3 * 2048, 2048, 3, 0),
        (3 * 2048 + 1, 2048, 3, 1),
        (4 * 2048 - 1, 2048, 3, 2047),
        (287_644, 2048, 140, 924),  # GPT-2 on the canonical text
        (341_469, 2048, 166, 1_501),  # Llama-2 (with BOS)
        (304_986, 2048, 148, 1_882),  # SmolLM2
        (10, 2, 5, 0),
        (11, 2, 5, 1),
    ],
)
def test_counts_and_tails(n: int, seqlen: int, count: int, tail: int) -> None:
    assert window_count(n, seqlen) == count
    assert tail_tokens(n, seqlen) == tail
    assert len(window_spans(n, seqlen)) == count


def test_spans_exact_small_case() -> None:
    assert window_spans(7, 3) == [(0, 3), (3, 6)]
    assert window_spans(2, 3) == []


@pytest.mark.parametrize("seqlen", [1, 0, -5])
def test_seqlen_below_two_is_a_protocol_error(seqlen: int) -> None:
    with pytest.raises(ProtocolError, match="seqlen must be >= 2"):
        window_count(100, seqlen)


def test_negative_token_count_rejected() -> None:
    with pytest.raises(ValueError):
        window_count(-1, 2048)


@settings(deadline=None)  # up to ~1000 spans per example: a loaded 2-core CI box exceeded the 200 ms default
@given(n=st.integers(min_value=0, max_value=2_000_000), seqlen=st.integers(min_value=2, max_value=9000))
def test_spans_partition_the_prefix(n: int, seqlen: int) -> None:
    spans = window_spans(n, seqlen)
    assert len(spans) == n // seqlen == window_count(n, seqlen)
    pos = 0
    for start, end in spans:  # in order, contiguous, never overlapping, all full length
        assert start == pos
        assert end - start == seqlen
        pos = end
    tail = tail_tokens(n, seqlen)
    assert pos + tail == n  # covers exactly the prefix; the rest is the dropped tail
    assert 0 <= tail < seqlen


@settings(deadline=None)
@given(n=st.integers(min_value=0, max_value=3000), seqlen=st.integers(min_value=2, max_value=700))
def test_make_windows_is_the_prefix_reshaped(n: int, seqlen: int) -> None:
    ids = torch.arange(n, dtype=torch.long) * 7 + 3
    w = make_windows(ids, seqlen)
    k = n // seqlen
    assert tuple(w.shape) == (k, seqlen)
    for i, (start, end) in enumerate(window_spans(n, seqlen)):
        assert torch.equal(w[i], ids[start:end])
    if k:
        assert w.flatten().tolist() == ids[: k * seqlen].tolist()
        assert w.data_ptr() == ids.data_ptr()  # a view, no copy of the token stream


def test_make_windows_rejects_2d() -> None:
    with pytest.raises(ValueError, match="1-D"):
        make_windows(torch.zeros(2, 8, dtype=torch.long), 4)


def test_perplexity_overflow_names_the_worst_window_and_running_perplexity_shows_inf() -> None:
    import math

    from pplgate.errors import PerplexityOverflowError
    from pplgate.protocol.windows import perplexity, running_perplexity

    with pytest.raises(PerplexityOverflowError, match=r"Worst window: 2 \(mean NLL 900 nats") as info:
        perplexity([710.0, 720.0, 900.0])
    assert (info.value.window_index, info.value.value, info.value.n_windows) == (2, 900.0, 3)
    assert running_perplexity([710.0, 720.0, 900.0]) == math.inf
    assert perplexity([709.0]) == pytest.approx(math.exp(709.0))  # just below the limit: a number
    assert perplexity([1000.0] + [1.0] * 99) == pytest.approx(math.exp(10.99))  # one bad window, finite mean
