"""Export: StableHLO reloaded in a fresh process that imports only jax gives apply's logits; ONNX too."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv import export
from jaxconv.models import get_model

SHAPE = (-1, 8, 8, 1)
IMAGES = np.random.default_rng(0).random((17, 8, 8, 1), dtype=np.float32)


def bn_model():
    """Conv, BatchNorm (running statistics in inference), pooling, dropout (off in inference), dense."""
    return jc.serial(jc.Conv(6, 3, impl="lax"), jc.BatchNorm(), jc.Relu(), jc.MaxPool(2), jc.Dropout(0.5),
                     jc.Flatten(), jc.Dense(10))


@pytest.fixture(scope="module")
def trained():
    """A model with non-trivial BatchNorm statistics (a few training steps)."""
    model = bn_model()
    digits = jc.load_dataset("digits")
    ts, _ = jc.fit(model, optax.adam(1e-2), digits.train, epochs=1, batch_size=256,
                   progress=False, log=None)
    assert float(jnp.abs(ts.state["batch_norm0"]["mean"]).max()) > 0
    return model, ts.params, ts.state


CHILD = r"""
import sys
import jax
import jax.numpy as jnp

exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
images = jnp.load(sys.argv[2])
for n in (3, 17):
    logits = exported.call(images[:n])
    open(f"{sys.argv[3]}.{n}", "wb").write(logits.tobytes())
print(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("jaxconv", "numpy", "jax")))
"""


def test_stablehlo_reloaded_in_a_fresh_process_gives_the_logits_of_apply(trained, tmp_path):
    model, params, state = trained
    exported = export.stablehlo(model, params, state, SHAPE)
    assert str(exported.in_avals[0].shape[0]) == "batch" and exported.in_avals[0].shape[1:] == (8, 8, 1)
    path = tmp_path / "model.stablehlo"
    export.save(exported, path)
    np.save(tmp_path / "images.npy", IMAGES)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tmp_path / "images.npy"),
                           str(tmp_path / "logits")], capture_output=True, text=True, env=env, timeout=120,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jaxconv" not in proc.stdout  # the child never imported jaxconv
    for n in (3, 17):
        got = np.frombuffer((tmp_path / f"logits.{n}").read_bytes(), np.float32).reshape(n, 10)
        want = np.asarray(model.apply(params, state, IMAGES[:n])[0])
        assert np.abs(got - want).max() <= 1e-6
    # The file reads back here too, and load gives the same module.
    assert export.load(path).mlir_module() == exported.mlir_module()


def test_fixed_batch_and_platforms(trained):
    model, params, state = trained
    fixed = export.stablehlo(model, params, state, (5, 8, 8, 1), batch=4, platforms=("cpu", "cuda"))
    assert fixed.in_avals[0].shape == (4, 8, 8, 1) and fixed.platforms == ("cpu", "cuda")
    np.testing.assert_allclose(fixed.call(IMAGES[:4]), model.apply(params, state, IMAGES[:4])[0], atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        fixed.call(IMAGES[:5])


def test_export_arguments(trained):
    model, params, state = trained
    for kwargs, message in ((dict(input_shape=(-1,)), "input_shape must include the batch dimension"),
                            (dict(input_shape=(-1, 0, 8, 1)), "input_shape must be >= 1 beyond the batch"),
                            (dict(batch="any"), "batch must be 'dynamic' or an int >= 1, got 'any'"),
                            (dict(batch=0), "batch must be an int >= 1, got 0"),
                            (dict(platforms="cpu"), "platforms must be a non-empty sequence")):
        kwargs = dict(dict(input_shape=SHAPE), **kwargs)
        with pytest.raises(ValueError, match=f"export.stablehlo: {message}"):
            export.stablehlo(model, params, state, **kwargs)
    with pytest.raises(TypeError, match="export.save: expected a jax.export.Exported, got dict"):
        export.save({}, "x")


@pytest.mark.parametrize("name", ["digits_cnn", "batch_norm"])
def test_onnx_export_runs_in_onnxruntime_with_any_batch(tmp_path, name, trained):
    import onnxruntime

    if name == "batch_norm":  # BatchNorm on running statistics, as every zoo network has
        model, params, state = trained
    else:
        model = get_model(name, impl="lax")
        _, params, state = model.init(jax.random.PRNGKey(1), SHAPE)
    path = tmp_path / "model.onnx"
    export.save_onnx(export.onnx(model, params, state, SHAPE), path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for n in (3, 17):
        got = session.run(None, {input_name: IMAGES[:n]})[0]
        np.testing.assert_allclose(got, model.apply(params, state, IMAGES[:n])[0], rtol=1e-5, atol=1e-5)
