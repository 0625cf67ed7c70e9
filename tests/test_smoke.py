"""The package imports with its compiled backend, and both backends run."""

import numpy as np

import fastxent as fx


def test_compiled_backend_is_active() -> None:
    info = fx.backend_info()
    assert info["backend"] == "cpp", info
    assert info["simd"] in info["supported_simd"]
    assert info["version"] == fx.__version__


def test_both_backends_agree_on_a_multilabel_batch(rng: np.random.Generator, backend: str) -> None:
    x = rng.standard_normal((8, 11)).astype(np.float32)
    y = (rng.random((8, 11)) < 0.3).astype(np.float32)
    loss, grad = fx.softmax_cross_entropy(x, y, backend=backend)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    lse = np.log(np.exp(x64).sum(1, keepdims=True))
    s = np.exp(x64 - lse)
    ref_loss = np.mean(lse[:, 0] * y64.sum(1) - (y64 * x64).sum(1))
    ref_grad = (s * y64.sum(1, keepdims=True) - y64) / 8
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
