"""bfloat16 and float16 logits (issue 13): computed in float32, rounded on store.

Against the float64 reference computed from the 16-bit values themselves:
- the loss (float32 for 16-bit logits) within float32-level relative error;
- every gradient / softmax / log_softmax / logsumexp element within 1 ULP of its
  own dtype of the float64 value rounded to that dtype (the float32 computation
  errs by a few float32 ulps, 2^16 (bfloat16) or 2^13 (float16) times smaller than
  a 16-bit ulp, so only a value within that distance of a rounding boundary can
  round to the neighbour). The one exception is a gradient element that is itself a
  cancellation, softmax_j * sum(q) - q_j with the two terms equal to float32
  precision: no float32 computation resolves it (nor the float32 kernel), so there
  the allowance is float32's error on the terms (`terms` in assert_ulp);
- the conventions (masked -inf classes with zero target, NaN / +inf / all -inf
  rows, ignored rows) in 16 bits;
on both backends and every SIMD variant (the `engine` fixture).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import reference as ref

import fastxent as fx

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
DTYPES = [BF16, F16]
IDS = ["bfloat16", "float16"]


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many representable 16-bit values apart a and b are (same dtype; NaN
    pairs 0, NaN against a number a huge distance)."""
    ia = a.view(np.uint16).astype(np.int64)
    ib = b.view(np.uint16).astype(np.int64)
    oa = np.where(ia & 0x8000, -(ia & 0x7FFF), ia)  # sign-magnitude to a monotone integer line
    ob = np.where(ib & 0x8000, -(ib & 0x7FFF), ib)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    d = np.abs(oa - ob)
    both_nan = np.isnan(fa) & np.isnan(fb)
    one_nan = np.isnan(fa) ^ np.isnan(fb)
    return np.where(both_nan, 0, np.where(one_nan, 1 << 20, d))


def assert_ulp(actual: np.ndarray, exact: np.ndarray, what: str, max_ulp: int = 1, terms: Any = None,
               k: int = 1) -> None:
    """Every element of `actual` (a 16-bit array) within max_ulp of `exact` (float64) rounded
    to its dtype; or, where `terms` (the size of what cancels into the element) is given,
    within one 16-bit ulp of exact plus float32's error on the terms (ref.rtol_for)."""
    assert actual.dtype in DTYPES, what
    exact = np.asarray(exact, np.float64)
    want = exact.astype(actual.dtype)
    d = ulp_distance(np.ascontiguousarray(actual), np.ascontiguousarray(want))
    bad = d > max_ulp
    if terms is not None:
        mant, sub = (7, 2.0**-133) if actual.dtype == BF16 else (10, 2.0**-24)
        a = actual.astype(np.float64)
        with np.errstate(invalid="ignore"):
            near = np.abs(a - exact) <= np.maximum(np.abs(exact) * 2.0**-mant, sub) + ref.rtol_for(np.float32, k) * terms
        bad &= ~near
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {d.size} elements more than {max_ulp} ulp off; worst {int(d.max())} ulp at "
        f"{np.argwhere(bad)[0].tolist()}: got {actual[bad][:3].astype(np.float64)}, want {want[bad][:3].astype(np.float64)}"
    )


def logits16(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, spread: float = 3.0) -> np.ndarray:
    return (rng.standard_normal(shape) * spread).astype(dtype)


def check_loss(loss: Any, want: Any, x: np.ndarray, dense_targets: np.ndarray, reduction: str) -> None:
    assert np.asarray(loss).dtype == np.float32
    k = x.shape[-1]
    scale = ref.loss_scale(x.astype(np.float64), dense_targets)
    if reduction == "sum":
        scale = scale.sum()
    elif reduction == "mean":
        scale = scale.mean()
    ref.assert_within(loss, want, rtol=ref.rtol_for(np.float32, k), scale=scale, what="loss")


OPTIONS = {
    "plain": {},
    "weight-smoothing": {"label_smoothing": 0.1},
    "softcap-zloss": {"softcap": 4.0, "z_loss": 1e-3},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("kind", ["index", "dense16", "dense32", "sparse"])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("k", [37, 5000])
def test_against_float64_reference(engine: str, dtype: np.dtype, kind: str, option: str, k: int,
                                   rng: np.random.Generator) -> None:
    n = 23
    x = logits16(rng, (n, k), dtype)
    opts: dict[str, Any] = dict(OPTIONS[option])
    if option == "weight-smoothing":
        opts["weight"] = (rng.random(k) + 0.5).astype(dtype)  # a 16-bit weight, read as float32
    if kind == "index":
        t: Any = rng.integers(0, k, n)
        t[3] = -100
        dense = ref.one_hot(np.where(t < 0, 0, t), k) * (t >= 0)[:, None]
        rt: Any = t
    elif kind == "sparse":
        indptr = np.arange(0, 2 * n + 1, 2)
        t = fx.SparseTargets(indptr=indptr, indices=rng.integers(0, k, 2 * n), values=rng.random(2 * n) + 0.1)
        dense = ref.sparse_to_dense(t, k)
        # the kernels read sparse values in float32: the reference takes the same values
        t = fx.SparseTargets(indptr=indptr, indices=t.indices, values=t.values.astype(np.float32))
        dense, rt = ref.sparse_to_dense(t, k), t
    else:
        y = rng.dirichlet(np.ones(k), n)
        t = y.astype(dtype if kind == "dense16" else np.float32)
        dense = rt = t.astype(np.float64)
    for reduction in ("mean", "none"):
        loss, grad = fx.softmax_cross_entropy(x, t, reduction=reduction, backend=engine, **opts)  # type: ignore[arg-type]
        w = opts.get("weight")
        want_loss, want_grad = ref.cross_entropy(
            x.astype(np.float64), rt, reduction=reduction, weight=None if w is None else w.astype(np.float64),
            **{key: v for key, v in opts.items() if key != "weight"},
        )
        check_loss(loss, want_loss, x, dense, reduction)
        assert grad is not None
        assert grad.dtype == dtype
        # the terms that cancel: scale * (softmax * Q' + |q|) <= |g| + 2 scale |q|
        scale = 1.0 / n if reduction == "mean" and kind != "index" else 1.0
        if reduction == "mean" and kind == "index":
            scale = 1.0 / float(np.sum((w.astype(np.float64) if w is not None else np.ones(k))[t[t >= 0]]))
        wmax = float(np.max(w.astype(np.float64))) if w is not None else 1.0
        qabs = (np.abs(dense) + opts.get("label_smoothing", 0.0) / k) * wmax
        terms = np.abs(want_grad) + 2 * scale * qabs
        assert_ulp(grad, want_grad, f"{kind} {option} {reduction} gradient", terms=terms, k=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_conventions(engine: str, dtype: np.dtype, rng: np.random.Generator) -> None:
    """Masked -inf classes with zero target add nothing and get gradient 0; NaN, +inf and
    all -inf rows are NaN rows only; ignored rows are 0."""
    n, k = 8, 40
    x = logits16(rng, (n, k), dtype)
    x[:, ::5] = -np.inf  # masked classes
    x[1, 7] = np.nan
    x[2, 3] = np.inf
    x[4, :] = -np.inf
    t = rng.integers(0, k, n)
    t[t % 5 == 0] += 1  # targets never on a masked class
    t[6] = -100
    loss, grad = fx.softmax_cross_entropy(x, t, reduction="none", backend=engine)
    assert grad is not None
    assert loss.dtype == np.float32
    assert grad.dtype == dtype
    g = grad.astype(np.float32)
    for i in (1, 2, 4):
        assert np.isnan(loss[i]), i
        assert np.isnan(g[i]).all(), i
    assert loss[6] == 0
    assert (g[6] == 0).all()
    ok = [0, 3, 5, 7]
    assert np.isfinite(loss[ok]).all()
    assert (g[ok][:, ::5] == 0).all()
    want_loss, want_grad = ref.cross_entropy(x.astype(np.float64), t, reduction="none")
    np.testing.assert_allclose(loss[ok], want_loss[ok], rtol=1e-5)
    assert_ulp(grad[ok], want_grad[ok], "conventions gradient")
    # dense targets: a zero target on a -inf logit adds nothing
    y = np.zeros((n, k), dtype)
    y[np.arange(n), t % k] = 1
    loss_d, grad_d = fx.softmax_cross_entropy(x[ok], y[ok], reduction="none", backend=engine)
    assert grad_d is not None
    np.testing.assert_allclose(loss_d, want_loss[ok], rtol=1e-5)
    assert_ulp(grad_d, want_grad[ok], "conventions gradient, dense")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("k", [19, 4099])
def test_rowwise(engine: str, dtype: np.dtype, k: int, rng: np.random.Generator) -> None:
    x = logits16(rng, (6, k), dtype)
    x[1, 4] = -np.inf
    x[2, :] = -np.inf  # no softmax: NaN
    x64 = x.astype(np.float64)
    for name, want in (("logsumexp", ref.logsumexp(x64)), ("softmax", ref.softmax(x64)),
                       ("log_softmax", ref.log_softmax(x64))):
        got = getattr(fx, name)(x, backend=engine)
        assert got.dtype == dtype
        assert_ulp(got, want, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("targets", ["index", "dense"])
def test_out_and_inplace(backend: str, dtype: np.dtype, targets: str, rng: np.random.Generator) -> None:
    """out= and inplace=True take the logits' dtype and give the very bits of the allocating call."""
    x = logits16(rng, (33, 300), dtype)
    t: Any = rng.integers(0, 300, 33) if targets == "index" else rng.dirichlet(np.ones(300), 33).astype(dtype)
    loss, grad = fx.softmax_cross_entropy(x, t, backend=backend)
    out = np.empty_like(x)
    loss_o, grad_o = fx.softmax_cross_entropy(x, t, out=out, backend=backend)
    assert grad_o is out
    xi = x.copy()
    loss_i, grad_i = fx.softmax_cross_entropy(xi, t, inplace=True, backend=backend)
    assert grad_i is xi
    for g in (grad_o, grad_i):
        assert g is not None
        assert g.dtype == dtype
        np.testing.assert_array_equal(g.view(np.uint16), grad.view(np.uint16))
    assert loss == loss_o == loss_i
    assert np.asarray(loss).dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(64, 5000), (1, 20000)])  # whole rows per thread; one row's blocks split
def test_bitwise_identical_for_any_thread_count(simd: str, dtype: np.dtype, shape: tuple[int, int],
                                                rng: np.random.Generator) -> None:
    n, k = shape
    x = logits16(rng, shape, dtype)
    cases: list[Any] = [rng.integers(0, k, n), rng.dirichlet(np.ones(k), n).astype(dtype),
                        rng.dirichlet(np.ones(k), n).astype(np.float32)]
    try:
        for t in cases:
            results = []
            for threads in (1, 2):
                fx.set_num_threads(threads)
                loss, grad = fx.softmax_cross_entropy(x, t, reduction="none", label_smoothing=0.05)
                assert grad is not None
                results.append((loss.copy(), grad.view(np.uint16).copy()))
            np.testing.assert_array_equal(results[0][0], results[1][0])
            np.testing.assert_array_equal(results[0][1], results[1][1])
    finally:
        fx.set_num_threads(None)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_input_dtypes_for_16bit_logits(backend: str, dtype: np.dtype, rng: np.random.Generator) -> None:
    """Dense targets in the logits' dtype or float32 are read as they are; others are
    converted to float32 (not down to 16 bits); weights of any real dtype are read
    as float32. The loss is float32 for every reduction."""
    x = logits16(rng, (9, 50), dtype)
    y = rng.dirichlet(np.ones(50), 9)
    loss32, grad32 = fx.softmax_cross_entropy(x, y.astype(np.float32), backend=backend)
    loss64, grad64 = fx.softmax_cross_entropy(x, y, backend=backend)  # float64 targets
    assert loss32 == loss64
    assert grad32 is not None
    assert grad64 is not None
    np.testing.assert_array_equal(grad32.view(np.uint16), grad64.view(np.uint16))
    w = (rng.random(50) + 0.5).astype(dtype)
    t = rng.integers(0, 50, 9)
    la, ga = fx.softmax_cross_entropy(x, t, weight=w, backend=backend)
    lb, gb = fx.softmax_cross_entropy(x, t, weight=w.astype(np.float32), backend=backend)
    assert la == lb
    assert ga is not None
    assert gb is not None
    np.testing.assert_array_equal(ga.view(np.uint16), gb.view(np.uint16))
    for reduction in ("mean", "sum", "none"):
        loss, _ = fx.softmax_cross_entropy(x, t, reduction=reduction, return_grad=False, backend=backend)
        assert np.asarray(loss).dtype == np.float32
        if reduction != "none":
            assert isinstance(loss, np.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_backends_agree(dtype: np.dtype, rng: np.random.Generator) -> None:
    """The twin computes in float32 and rounds on store too: the two backends' 16-bit
    gradients are within 1 ulp of each other (their float32 sums differ in order)."""
    x = logits16(rng, (40, 3000), dtype)
    t = rng.integers(0, 3000, 40)
    lc, gc = fx.softmax_cross_entropy(x, t, backend="cpp")
    ln, gn = fx.softmax_cross_entropy(x, t, backend="numpy")
    assert gc is not None
    assert gn is not None
    np.testing.assert_allclose(lc, ln, rtol=1e-6)
    assert ulp_distance(gc, gn).max() <= 1


def test_rounding_on_store_is_to_nearest_even(engine: str) -> None:
    """log_softmax of a row whose logsumexp is exactly representable: the stored value is
    x - lse rounded once. With x = (0, -inf) lse = 0: the logits come back exactly; a
    NaN stays NaN and inf stays inf in both 16-bit dtypes."""
    for dtype in DTYPES:
        vals = np.array([0.0, -np.inf, -np.inf], dtype)
        np.testing.assert_array_equal(fx.log_softmax(vals, backend=engine).astype(np.float32), [0, -np.inf, -np.inf])
        s = fx.softmax(np.array([[1.0, 1.0, 1.0]], dtype), backend=engine)
        assert s[0, 0] == np.asarray(1 / 3, np.float64).astype(dtype)  # 1/3 rounded to nearest (not truncated)
        nan = fx.softmax(np.array([np.nan, 1.0], dtype), backend=engine).astype(np.float32)
        assert np.isnan(nan).all()


def test_import_does_not_import_ml_dtypes() -> None:
    code = (
        "import sys, numpy as np, fastxent as fx\n"
        "fx.softmax_cross_entropy(np.zeros((2, 3), np.float16), np.array([0, 1]))\n"
        "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


# ---- fastxent.torch: bfloat16 / float16 tensors, natively ------------------------------

TORCH_DTYPES = ["bfloat16", "float16"]


def _torch_setup(dtype_name: str, shape: tuple[int, ...], kind: str, seed: int) -> tuple[Any, Any, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=g)).to(dtype)
    k = shape[1] if len(shape) > 1 else shape[0]
    lead = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if kind == "index":
        t = torch.randint(0, k, lead, generator=g)
    else:
        t = torch.softmax(torch.randn(shape, generator=g), dim=1 if len(shape) > 1 else 0).to(dtype)
    return torch, x, t


@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(64, 1000), (4, 300, 3), (257,)])
def test_torch_parity_16bit(dtype_name: str, kind: str, reduction: str, shape: tuple[int, ...],
                            api_calls: list[int]) -> None:
    """fastxent.torch.cross_entropy on 16-bit tensors: the kernel runs (no fallback), loss
    and gradient in the input's dtype; against the float64 loss of the same 16-bit values
    the gradient is within 1 ulp and the loss is the float32 loss rounded once (1 ulp);
    against F.cross_entropy in the same dtype within PyTorch's own 16-bit error, bounded
    from the dtype: PyTorch rounds log_softmax to the dtype before exp() in its backward,
    so its gradient carries a relative error of up to (|log p_j| + 2) eps at class j
    (eps = 2^-8 for bfloat16, 2^-11 for float16), plus one rounding of the result each."""
    torch, x, t = _torch_setup(dtype_name, shape, kind, seed=len(shape) * 7 + len(kind))
    import torch.nn.functional as F

    import fastxent.torch as fxt

    cdim = 1 if len(shape) > 1 else 0
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    x64 = x.double().requires_grad_()
    loss = fxt.cross_entropy(xa, t, reduction=reduction)
    assert api_calls == [1]
    ref_loss = F.cross_entropy(x64, t.double() if kind == "prob" else t, reduction=reduction)
    torch_loss = F.cross_entropy(xb, t, reduction=reduction)
    gen = torch.Generator().manual_seed(len(shape) * 13 + len(kind))  # the same upstream weights every run
    weights = (torch.rand(loss.shape, dtype=torch.float64, generator=gen) if reduction == "none"
               else torch.tensor(1.0, dtype=torch.float64))
    (loss * weights.to(loss.dtype)).sum().backward()
    (ref_loss * weights).sum().backward()
    (torch_loss * weights.to(torch_loss.dtype)).sum().backward()
    assert loss.dtype == x.dtype
    assert xa.grad is not None
    assert xa.grad.dtype == x.dtype
    np16 = BF16 if dtype_name == "bfloat16" else F16

    def as16(a: Any) -> np.ndarray:
        return a.detach().contiguous().view(torch.int16).numpy().view(np16)

    assert_ulp(as16(loss), ref_loss.detach().numpy(), "loss")
    # with "none", the upstream weights are rounded to the dtype before they scale the gradient
    w16 = weights.to(x.dtype).double()
    _, want = torch.autograd.functional.vjp(
        lambda a: F.cross_entropy(a, t.double() if kind == "prob" else t, reduction=reduction), x.double(), w16)
    assert_ulp(as16(xa.grad), want.numpy(), "gradient")
    # parity with PyTorch's own 16-bit computation
    eps = 2.0**-8 if dtype_name == "bfloat16" else 2.0**-11
    p = torch.softmax(x.double(), dim=cdim)
    w16_b = w16.unsqueeze(cdim) if reduction == "none" and w16.dim() else w16
    n_pos = x.numel() // x.shape[cdim]
    scale = (1.0 / n_pos if reduction == "mean" else 1.0) * w16_b.abs()
    ysum = 1.0 if kind == "index" else t.double().sum(dim=cdim, keepdim=True)
    sub = 2.0**-133 if dtype_name == "bfloat16" else 2.0**-24  # the subnormal spacing: a rounding's floor
    # (+ the roundings of the result: one on each side, two with an upstream gradient
    # other than 1, which both multiply into the 16-bit saved gradient; in the subnormal
    # range each of PyTorch's roundings costs up to one spacing, not a relative eps)
    bound = scale * ysum * p * (p.log().abs() + 2) * eps + 4 * eps * want.abs() + 4 * sub
    diff = (xa.grad.double() - xb.grad.double()).abs()
    assert (diff <= bound).all(), f"worst excess {float((diff - bound).max()):.3g}"
    lb = 4 * eps * ref_loss.detach().abs() + 1e-6
    assert ((loss.double() - torch_loss.double()).abs() <= lb).all()


@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
def test_torch_16bit_without_a_copy(dtype_name: str) -> None:
    """A 16-bit tensor reaches the kernel as a view of its own memory, and the gradient
    tensor is a view of the kernel's output (no conversion on either side)."""
    _torch, x, t = _torch_setup(dtype_name, (8, 50), "index", seed=3)
    import fastxent.torch as fxt

    view = fxt._numpy(x)
    assert view.ctypes.data == x.data_ptr()
    assert view.dtype.itemsize == 2
    assert view.dtype == (BF16 if dtype_name == "bfloat16" else F16)
    loss, grad = fxt._loss_and_grad(x, t, None, -100, "mean", 0.0, True)
    back = fxt._numpy(grad)
    assert back.ctypes.data == grad.data_ptr()
    loss2, grad2 = fx.softmax_cross_entropy(view, t.numpy())
    assert grad2 is not None
    np.testing.assert_array_equal(back.view(np.uint16), grad2.view(np.uint16))
    assert loss.dtype == x.dtype
    assert float(loss) == float(np.float32(loss2).astype(view.dtype))
