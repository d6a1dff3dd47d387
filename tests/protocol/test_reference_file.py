"""The stored top-K reference: exact quantities equal the in-memory pass bit for bit, the KLD estimate is
a lower bound that becomes exact at K = vocabulary, the file format (id dtypes, streamed per-window reads) and
every bad input as a one-line error."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from support import LogitFnLM, random_ids, synthetic_dataset, synthetic_tokens, tiny_llama

from pplgate.errors import ProtocolError
from pplgate.protocol.compare import evaluate_comparison
from pplgate.protocol.reference_file import ReferenceWriter, StoredReference, ids_dtype
from pplgate.protocol.stored_compare import compare_to_reference, save_reference

VOCAB, SEQLEN, N_WIN = 101, 48, 3
EXACT_FIELDS = (
    "top1_agreement",
    "mean_delta_p",
    "rms_delta_p",
    "ppl_reference",
    "ppl_model",
    "ln_ppl_ratio",
    "window_top1",
    "window_delta_p",
    "window_rms_delta_p",
    "window_nlls_reference",
    "window_nlls_model",
    "n_windows",
    "n_positions",
    "dataset_sha256",
    "tokenizer_sha256",
)


@pytest.fixture(scope="module")
def pair():
    """A tiny Llama and a perturbed copy (a 'quantized' model) on synthetic tokens."""
    ref = tiny_llama(vocab=VOCAB, seed=0)
    model = tiny_llama(vocab=VOCAB, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    tokens = synthetic_tokens(random_ids(N_WIN * SEQLEN + 5, VOCAB))
    return ref, model, tokens, synthetic_dataset()


def _save(pair, path, k, **kw):
    """One tail bucket unless ``tail_samples`` is given."""
    kw.setdefault("tail_samples", 0)
    ref, _, tokens, ds = pair
    return save_reference(ref, tokens, ds, path, top_k=k, seqlen=SEQLEN, batch_size=2, progress=False, **kw)


def _compare(pair, path, **kw):
    _, model, tokens, ds = pair
    return compare_to_reference(StoredReference(path), model, tokens, ds, batch_size=2, progress=False, **kw)


@pytest.fixture(scope="module")
def exact(pair):
    ref, model, tokens, ds = pair
    return evaluate_comparison(ref, model, tokens, ds, seqlen=SEQLEN, batch_size=2, progress=False)


@pytest.mark.parametrize("lp_dtype", ["float32", "float16"])
def test_top1_delta_p_and_ppls_are_the_in_memory_pass_bit_for_bit(pair, exact, tmp_path, lp_dtype) -> None:
    path = tmp_path / "ref.safetensors"
    info = _save(pair, path, 8, logprob_dtype=lp_dtype)
    assert info["ppl_reference"] == exact.ppl_reference
    got = _compare(pair, path)
    for name in EXACT_FIELDS:
        assert getattr(got, name) == getattr(exact, name), name
    assert 0 < exact.top1_agreement < 1 and exact.mean_delta_p != 0  # the check can fail
    # the KLD: a lower bound per window (merging the tail ids never raises it), and not the exact one at K=8
    assert all(a <= b * (1 + 1e-5) for a, b in zip(got.window_klds, exact.window_klds, strict=True))
    assert got.mean_kld < 0.99 * exact.mean_kld
    assert got.max_kld <= exact.max_kld * (1 + 1e-5)
    assert got.extra["reference_file"]["top_k"] == 8 and got.forward_time_s_reference == 0.0


def test_the_estimate_is_exact_at_k_equal_to_the_vocabulary(pair, exact, tmp_path) -> None:
    path = tmp_path / "full.safetensors"
    _save(pair, path, VOCAB)
    got = _compare(pair, path)
    assert got.mean_kld == pytest.approx(exact.mean_kld, rel=1e-5)
    assert got.window_klds == pytest.approx(exact.window_klds, rel=1e-5)
    assert got.max_kld == pytest.approx(exact.max_kld, rel=1e-5)
    for key, value in exact.kld_percentiles.items():
        assert got.kld_percentiles[key] == pytest.approx(value, rel=2e-3), key  # the sketch's 0.1% each side


def test_error_shrinks_as_k_grows(pair, exact, tmp_path) -> None:
    errors = []
    for k in (2, 8, 32):
        _save(pair, tmp_path / f"k{k}.st", k)
        errors.append(exact.mean_kld - _compare(pair, tmp_path / f"k{k}.st").mean_kld)
    assert errors[0] > errors[1] > errors[2] > 0


def test_top1_is_the_argmax_of_the_logits_when_they_tie(tmp_path) -> None:
    """All logits equal: the in-memory pass's top-1 is id 0 (argmax's first); the stored column 0 must be too."""
    ref = LogitFnLM(lambda ids: torch.zeros(*ids.shape, VOCAB), max_pos=SEQLEN, vocab_size=VOCAB)
    tokens, ds = synthetic_tokens(random_ids(2 * SEQLEN, VOCAB)), synthetic_dataset()
    model = tiny_llama(vocab=VOCAB, seed=4, max_pos=SEQLEN)
    save_reference(ref, tokens, ds, tmp_path / "u.st", top_k=4, seqlen=SEQLEN, progress=False, tail_samples=0)
    stored = StoredReference(tmp_path / "u.st")
    first = next(stored.windows(0, 1))
    assert (first["ids"][:, 0] == 0).all()
    assert first["tail"].tolist() == pytest.approx([(VOCAB - 4) / VOCAB] * (SEQLEN - 1), rel=1e-6)
    got = compare_to_reference(stored, model, tokens, ds, progress=False)
    want = evaluate_comparison(ref, model, tokens, ds, seqlen=SEQLEN, progress=False)
    assert got.window_top1 == want.window_top1 and got.window_delta_p == want.window_delta_p


@pytest.mark.parametrize(
    ("vocab", "dtype"),
    [(256, torch.uint8), (257, torch.int16), (32768, torch.int16), (32769, torch.uint16), (65536, torch.uint16),
     (65537, torch.int32), (151936, torch.int32)],
)  # fmt: skip
def test_ids_take_the_smallest_dtype_that_holds_the_vocabulary(vocab, dtype) -> None:
    assert ids_dtype(vocab) == dtype


def _write(path, vocab: int, k: int = 3, rows: int = 5, n: int = 2, seed: int = 0) -> list[dict]:
    meta = {"n_windows": n, "seqlen": rows + 1, "top_k": k, "vocab_size": vocab, "dataset_sha256": "d"}
    w = ReferenceWriter(path, meta)
    g = torch.Generator().manual_seed(seed)
    written = []
    for _ in range(n):
        win = {
            "nll": torch.rand(rows, generator=g),
            "ids": torch.randint(0, vocab, (rows, k), generator=g),
            "logprobs": -torch.rand(rows, k, generator=g),
            "tail": torch.rand(rows, generator=g),
        }
        w.add(**win)
        written.append(win)
    w.close([0.5] * n)
    return written


def test_ids_above_int16_round_trip_and_windows_are_read_one_at_a_time(tmp_path) -> None:
    path = tmp_path / "u16.st"
    written = _write(path, vocab=65536, n=3)
    stored = StoredReference(path)
    assert stored.meta["ids_dtype"] == "uint16" and stored.window_nlls == [0.5] * 3
    assert int(torch.cat([w["ids"] for w in written]).max()) > 32767
    got = list(stored.windows(1, 3))  # a slice of the file: windows 1 and 2 only
    assert len(got) == 2
    for w, g in zip(written[1:], got, strict=True):
        assert torch.equal(g["ids"], w["ids"]) and g["ids"].dtype == torch.int64
        assert torch.equal(g["nll"], w["nll"]) and torch.equal(g["logprobs"], w["logprobs"])
    assert not list(tmp_path.glob(".*partial"))  # the temporary file was renamed into place


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_a_truncated_file_is_a_one_line_error_naming_the_fix(tmp_path) -> None:
    path = tmp_path / "t.st"
    _write(path, vocab=VOCAB)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(ProtocolError) as exc:
        StoredReference(path)
    assert "truncated" in _one_line(exc) and "pplgate reference save" in str(exc.value)
    path.write_bytes(data[:5])
    with pytest.raises(ProtocolError, match="shorter than a safetensors header"):
        StoredReference(path)


def test_a_flipped_byte_in_the_data_or_the_metadata_is_caught_by_the_content_hash(tmp_path) -> None:
    path = tmp_path / "c.st"
    _write(path, vocab=VOCAB)
    data = bytearray(path.read_bytes())
    flipped = bytearray(data)
    flipped[-20] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(ProtocolError) as exc:
        StoredReference(path)
    assert "content sha256" in _one_line(exc) and "corrupted" in str(exc.value)
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n].decode()
    assert '"dataset_sha256":"d"' in header
    path.write_bytes(bytes(data[:8]) + header.replace('"dataset_sha256":"d"', '"dataset_sha256":"e"').encode()
                     + bytes(data[8 + n :]))  # fmt: skip
    with pytest.raises(ProtocolError, match="content sha256 .* differs"):
        StoredReference(path)


def test_other_files_are_refused_with_what_they_are(tmp_path) -> None:
    weights = tmp_path / "model.safetensors"
    save_file({"lm_head.weight": torch.zeros(3, 2)}, str(weights))
    with pytest.raises(ProtocolError) as exc:
        StoredReference(weights)
    assert "not a pplgate top-K reference" in _one_line(exc)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ProtocolError, match="not a safetensors file"):
        StoredReference(junk)
    with pytest.raises(ProtocolError, match="no such file"):
        StoredReference(tmp_path / "absent.st")
    newer = tmp_path / "v2.st"
    _write(newer, vocab=VOCAB)
    data = newer.read_bytes()
    newer.write_bytes(data.replace(b'"format_version":"1"', b'"format_version":"9"'))
    with pytest.raises(ProtocolError, match="format version '9'"):
        StoredReference(newer)


def test_another_protocol_is_an_error_never_a_number(pair, tmp_path) -> None:
    path = tmp_path / "ref.st"
    _save(pair, path, 4)
    ref, model, tokens, ds = pair
    stored = StoredReference(path)
    cases = [
        (tokens, synthetic_dataset("another text"), "dataset (sha256)"),
        (synthetic_tokens(random_ids(N_WIN * SEQLEN + 5, VOCAB, seed=9)), ds, "scored token ids"),
        (synthetic_tokens(tokens.ids, bos_added=True), ds, "BOS"),
        (synthetic_tokens(tokens.ids[: 2 * SEQLEN]), ds, "number of windows"),
    ]
    for toks, dataset, words in cases:
        with pytest.raises(ProtocolError) as exc:
            compare_to_reference(stored, model, toks, dataset, progress=False)
        assert words in _one_line(exc) and "another protocol" in str(exc.value)
    with pytest.raises(ProtocolError, match="holds 3 windows; drop --max-windows"):
        compare_to_reference(stored, model, tokens, ds, max_windows=2, progress=False)


def test_a_vocabulary_mismatch_and_impossible_k_are_errors(pair, tmp_path) -> None:
    path = tmp_path / "ref.st"
    _save(pair, path, 4)
    _, _, tokens, ds = pair
    bigger = tiny_llama(vocab=VOCAB + 3, seed=0)
    with pytest.raises(ProtocolError) as exc:
        compare_to_reference(StoredReference(path), bigger, tokens, ds, progress=False)
    assert f"{VOCAB + 3} logits per position" in _one_line(exc) and f"vocabulary of {VOCAB}" in str(exc.value)
    for k in (0, VOCAB + 1):
        with pytest.raises(ProtocolError, match="K must be between 1 and the vocabulary size"):
            _save(pair, tmp_path / f"bad{k}.st", k)
        assert not list(tmp_path.glob(f"*bad{k}*"))


def test_the_metadata_describes_the_protocol_and_the_reference(pair, tmp_path) -> None:
    path = tmp_path / "ref.st"
    info = _save(pair, path, 4, identity={"reference": "tiny", "reference_variant": json.dumps({"kind": "fp32"})})
    meta = StoredReference(path).meta
    assert meta["format"] == "pplgate-topk-reference" and meta["top_k"] == "4" and meta["vocab_size"] == str(VOCAB)
    assert meta["seqlen"] == str(SEQLEN) and meta["n_windows"] == str(N_WIN) and meta["bos_added"] == "False"
    assert meta["dtype_reference"] == "float32" and meta["reference"] == "tiny"
    assert meta["content_sha256"] == info["content_sha256"] and len(info["content_sha256"]) == 64
    assert meta["ids_dtype"] == "uint8" and meta["logprob_dtype"] == "float32"


def test_a_sampled_tail_is_an_unbiased_estimate_where_one_bucket_is_far_below(pair, exact, tmp_path) -> None:
    _save(pair, tmp_path / "bucket.st", 4)
    _save(pair, tmp_path / "sampled.st", 4, tail_samples=64)
    bucket, sampled = _compare(pair, tmp_path / "bucket.st"), _compare(pair, tmp_path / "sampled.st")
    assert bucket.mean_kld < 0.5 * exact.mean_kld  # top-4 of 101 ids: the bucket misses most of the divergence
    assert sampled.mean_kld == pytest.approx(exact.mean_kld, rel=0.08)  # 141 positions of sampling noise
    for name in EXACT_FIELDS:  # the samples change nothing exact
        assert getattr(sampled, name) == getattr(exact, name), name
    assert (
        sampled.extra["reference_file"]["tail_samples"] == 64 and "unbiased" in sampled.extra["reference_file"]["kld"]
    )
    stored = StoredReference(tmp_path / "sampled.st")
    first = next(stored.windows(0, 1))
    assert first["tail_ids"].shape == (SEQLEN - 1, 64) and first["tail_logprobs"].dtype == torch.float32
    top = first["ids"]
    assert not any(set(t.tolist()) & set(s.tolist()) for t, s in zip(top, first["tail_ids"], strict=True))  # tail only
    again = tmp_path / "again.st"
    _save(pair, again, 4, tail_samples=64)  # seeded: the same file
    assert StoredReference(again).meta["content_sha256"] == stored.meta["content_sha256"]


def test_samples_at_k_equal_to_the_vocabulary_weigh_nothing(pair, exact, tmp_path) -> None:
    _save(pair, tmp_path / "full.st", VOCAB, tail_samples=4)
    got = _compare(pair, tmp_path / "full.st")
    assert got.mean_kld == pytest.approx(exact.mean_kld, rel=1e-5)


def test_a_negative_sample_count_is_an_error(pair, tmp_path) -> None:
    with pytest.raises(ProtocolError, match="--tail-samples -1"):
        _save(pair, tmp_path / "neg.st", 4, tail_samples=-1)
