"""Edges of the generation API and the byte stream: sampling values torch cannot represent, seeds,
numpy scalars, prompts that end inside a UTF-8 character."""
import numpy as np
import pytest

import fastblt
from fastblt.config import OFFSET
from fastblt.generation import api
from fastblt.generation.text import ContinuationDecoder, decode_continuation, utf8_tail

from helpers import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("t", [1e-40, 1e-5, -1.0, float("nan"), float("inf"), 1e7, "0.5", True])
def test_unrepresentable_temperature_is_refused(model, t):
    with pytest.raises(ValueError, match="temperature"):
        fastblt.generate(model, "ab", max_new_bytes=4, temperature=t, seed=0)


def test_smallest_allowed_temperature_samples(model):
    r = fastblt.generate(model, "ab", max_new_bytes=8, temperature=1e-4, seed=0)
    assert r.bytes == fastblt.generate(model, "ab", max_new_bytes=8).bytes  # ~greedy, and no torch error


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, "3", True])
def test_bad_seeds_are_refused_clearly(model, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64 - 1\]"):
        fastblt.generate(model, "ab", max_new_bytes=4, temperature=1.0, seed=seed)


def test_largest_seed_works(model):
    a = fastblt.generate(model, "ab", max_new_bytes=8, temperature=1.0, seed=2**64 - 1)
    b = fastblt.generate(model, "ab", max_new_bytes=8, temperature=1.0, seed=np.uint64(2**64 - 1))
    assert a.bytes == b.bytes and a.stats["seed"] == 2**64 - 1


def test_numpy_scalars_are_accepted(model):
    kw = dict(max_new_bytes=12, temperature=0.7, top_k=50, top_p=0.9, seed=3, draft_length=4)
    want = fastblt.generate(model, "abc", method="blt-s", **kw)
    got = fastblt.generate(model, "abc", method="blt-s", max_new_bytes=np.int64(12), temperature=np.float32(0.7),
                           top_k=np.int32(50), top_p=np.float64(0.9), seed=np.int64(3), draft_length=np.int16(4))
    assert got.bytes == want.bytes
    bltd = tiny_model(diffusion_block_size=4)
    a = fastblt.generate(bltd, "abc", method="blt-d", max_new_bytes=8, alpha=0.5, block_size=4)
    b = fastblt.generate(bltd, "abc", method="blt-d", max_new_bytes=8, alpha=np.float32(0.5), block_size=np.int64(4))
    assert a.bytes == b.bytes


# ---------------------------------------------------------------------------- UTF-8 prompt tails
@pytest.mark.parametrize("data,tail", [
    (b"C'est \xc3", b"\xc3"), (b"x\xe2\x82", b"\xe2\x82"), (b"\xf0\x9f\x98", b"\xf0\x9f\x98"),
    (b"abc", b""), (b"\xc3\xa9", b""), (b"\xe2\x82\xac", b""), (b"a\x80", b""), (b"\xc0", b""),  # \xc0 is never valid
    (b"\xe0\x80", b""), (b"", b""),
])
def test_utf8_tail(data, tail):
    assert utf8_tail(data) == tail


@pytest.mark.parametrize("tail,cont,text", [
    (b"\xc3", b"\xa9 la vie", "é la vie"),            # completed: the character appears whole
    (b"\xe2\x82", b"\xac5", "€5"),
    (b"\xf0\x9f", b"\x98\x80!", "😀!"),
    (b"\xc3", b"a", "a"),                              # not completed: the prompt's broken byte is dropped
    (b"\xe2\x82", b"\xff", "\ufffd"),
    (b"\xe2", b"\x82", "\ufffd"),                      # ends before completing
    (b"", b"\xa9x", "\ufffdx"),
])
def test_continuation_text_and_stream_agree(tail, cont, text):
    assert decode_continuation(tail, cont) == text
    for split in range(len(cont) + 1):  # any chunking of the stream gives the same text
        d = ContinuationDecoder(tail)
        assert d.decode(cont[:split]) + d.decode(cont[split:]) + d.decode(b"", final=True) == text


def test_prompt_ending_in_a_lead_byte(model):
    """The issue's example: prompt "… C'est \\xc3", the model completes "\\xa9": .text and stream_text
    start with "é", not U+FFFD."""
    def completes(model, ids, ctx):
        ctx.out.emit([b + OFFSET for b in b"\xa9 vrai"])

    api.register_method("test-fixed", completes)
    try:
        prompt = b"C'est \xc3"
        r = fastblt.generate(model, prompt, method="test-fixed", max_new_bytes=16)
        assert r.bytes == b"\xa9 vrai" and r.text == "é vrai"
        assert "".join(fastblt.stream_text(model, prompt, method="test-fixed", max_new_bytes=16)) == "é vrai"
        assert fastblt.generate(model, "C'est ", method="test-fixed", max_new_bytes=16).text == "\ufffd vrai"
    finally:
        api.METHODS.pop("test-fixed")


# ---------------------------------------------------------------------------- the command line
def test_broken_pipe_exits_quietly_141(tmp_path):
    """`fastblt generate ... | head -c 0`: the reader is gone before the first byte."""
    import os
    import subprocess
    import sys

    fastblt.save(tiny_model(), tmp_path)
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "fastblt.cli", "generate", "--model", str(tmp_path), "--stream",
                            "--max-new-bytes", "32", "--ignore-eos", "ab"], stdout=w, stderr=subprocess.PIPE)
    finally:
        os.close(w)
    assert p.returncode == 141 and p.stderr == b"", p.stderr.decode()


def test_ctrl_c_while_starting_exits_quietly_130(monkeypatch, capsys):
    from fastblt import cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)  # Ctrl-C while the sub-commands import
    assert cli.main(["presets"]) == 130
    assert capsys.readouterr().err == "fastblt: interrupted\n"


def test_importing_the_cli_does_not_import_torch():
    """What shrinks the window in which Ctrl-C could hit Python's own import traceback."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, fastblt.cli; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_refuses_unrepresentable_sampling_values(tmp_path, capsys):
    from fastblt.cli import main

    fastblt.save(tiny_model(), tmp_path)
    for flags, word in ((["--temperature", "1e-40"], "temperature"), (["--seed", str(2**64)], "seed")):
        assert main(["generate", "--model", str(tmp_path), "--max-new-bytes", "4", *flags, "ab"]) == 1
        assert word in capsys.readouterr().err
