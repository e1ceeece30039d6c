"""jaxconv.verify and the ``jaxconv verify`` subcommand."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from jaxconv import cli
from jaxconv import verify as verify_mod
from jaxconv.ops import conv


def test_cli_verify_passes_and_prints_the_table(capsys):
    assert cli.main(["verify", "--cases", "4", "--seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| option | value | cases | worst value rel. err | worst grad rel. err |" in out
    assert "| **all** | | 4 |" in out and "PASS: tolerance 1e-05" in out


def test_cli_verify_exits_nonzero_on_mismatch(monkeypatch, capsys):
    original = verify_mod.default_candidate

    def broken(op):
        good = original(op)
        return lambda x, k, **kw: good(x, k, **kw) * 1.001

    monkeypatch.setattr(verify_mod, "default_candidate", broken)
    assert cli.main(["verify", "--cases", "2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAIL (2 mismatches)" in out and "mismatch:" in out


def test_verify_float64_and_a_user_candidate():
    report = verify_mod.verify(2, dtype="float64", seed=5, ops=("conv",), dims=(1,))
    assert report.ok and report.worst_value <= 1e-12 and report.worst_grad <= 1e-12
    user = functools.partial(conv, impl="patches")
    report = verify_mod.verify(2, candidate=lambda op: user, ops=("conv",), dims=(2,))
    assert report.ok and [r[0] for r in report.rows][0] == "op"


def test_draw_case_is_valid_and_covers_options():
    rng = np.random.default_rng(0)
    cases = [verify_mod.draw_case(verify_mod.numpy_chooser(rng)) for _ in range(200)]
    seen = {(o, c.tags[o]) for c in cases for o in verify_mod.OPTIONS}
    for option, label in [("padding", "SAME"), ("padding", "SAME_LOWER"), ("padding", "VALID"),
                          ("padding", "int"), ("padding", "per-dim"), ("padding", "pairs"),
                          ("padding_mode", "reflect"), ("padding_mode", "replicate"),
                          ("padding_mode", "circular"), ("groups", "depthwise"),
                          ("groups", "grouped"), ("output_padding", ">0"), ("dims", "3-D"),
                          ("op", "conv_transpose"), ("stride", ">1"), ("dilation", ">1")]:
        assert (option, label) in seen, (option, label)


def test_verify_rejects_unknown_dtype_and_no_cases():
    with pytest.raises(ValueError, match=r"verify: unknown dtype 'float16'; expected one of \('float32'"):
        verify_mod.verify(1, dtype="float16")
    for bad in (0, -3):  # nothing would be checked: not a pass
        with pytest.raises(ValueError, match=f"verify: cases must be an int >= 1, got {bad}"):
            verify_mod.verify(bad)
