"""The bad-input table of docs/bad_inputs.md, one test case per row, both backends.

Errors: the exact exception type, and a message that starts with the argument's
name. Documented values: compared with tests/reference.py row by row, with the
special rows checked for exactly the documented special value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse
from reference import cross_entropy

import fastxent as fx

f = fx.softmax_cross_entropy
N, K = 4, 5
_RNG = np.random.default_rng(7)
X = _RNG.standard_normal((N, K)).astype(np.float32)
Y = np.array([0, 1, 2, 3])
BF16 = np.dtype(ml_dtypes.bfloat16)
F8 = np.dtype(ml_dtypes.float8_e4m3fn)
lce = fx.linear_cross_entropy
H = _RNG.standard_normal((N, 3)).astype(np.float32)  # linear_cross_entropy's input: D = 3
WL = _RNG.standard_normal((K, 3)).astype(np.float32)  # its linear_weight: K = 5 classes


stats = fx.vocab_shard_statistics
vgrad = fx.vocab_shard_gradient
XS = X[:, 1:3]  # a vocabulary shard: the classes [1, 3) of the K = 5
RS = np.zeros((N, 4))  # row statistics [M, log S, Q, D] of the N rows


def x() -> np.ndarray:
    return X.copy()


def read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def misaligned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A C-contiguous, writable array whose data starts 1 byte off its alignment."""
    dt = np.dtype(dtype)
    buf = np.zeros(int(np.prod(shape)) * dt.itemsize + 1, np.uint8)
    a = buf[1:].view(dt).reshape(shape)
    assert not a.flags.aligned
    return a


def overlapping_rows() -> np.ndarray:
    a = np.lib.stride_tricks.as_strided(np.zeros(K, np.float32), (N, K), (0, 4))
    assert a.flags.writeable
    return a


def out_is_targets(b: str) -> Any:
    t = np.zeros((N, K), np.float32)
    return f(x(), t, out=t, backend=b)


def out_view_of_logits(b: str) -> Any:
    a = x()
    return f(a, Y, out=a[...], backend=b)


def inplace_aliased_targets(b: str) -> Any:
    a = x()
    return f(a, a, inplace=True, backend=b)


def out_in_converted_targets(b: str) -> Any:
    y = np.full((1, K), 0.2)  # float64 targets, converted for float32 logits
    return f(np.zeros((1, K), np.float32), y, out=y.view(np.float32)[:, :K], backend=b)


def out_in_converted_weight(b: str) -> Any:
    w = np.ones(N * K)  # float64 weight, converted for float32 logits
    return f(x(), Y, weight=w[:K], out=w.view(np.float32)[: N * K].reshape(N, K), backend=b)


def out_in_byteswapped_logits(b: str) -> Any:
    a = x().astype(">f4")  # converted to native order for the kernels
    return f(a, Y, out=a.view(np.float32), backend=b)


def inplace_int16_targets_in_logits(b: str) -> Any:
    a = x()
    labels = a.view(np.int16)[0, :N]  # int16 labels in the logits' own memory
    labels[:] = [0, 1, 2, 3]
    return f(a, labels, inplace=True, backend=b)


def vocab_out_in_row_stats(b: str) -> Any:
    rs = np.zeros((N, 4), np.float32)  # float32 rows: the gradient pass reads them in place
    return vgrad(XS, Y, rs, vocab_start=1, num_classes=K, out=rs[:, :2], backend=b)


def sparse_reassigned(b: str) -> Any:
    t = fx.SparseTargets([0, 1, 2, 3, 4], [1, 2, 3, 4])
    t.indptr = np.array([0, 1, 10**6, 10**6, 4])  # would send the kernel far past indices
    return f(x(), t, backend=b)


Call = Callable[[str], Any]

# id -> (call with backend b, exception type, regex the message must match)
ERRORS: dict[str, tuple[Call, type[Exception], str]] = {
    "logits-0d": (lambda b: f(np.float32(1), np.int64(0), backend=b), ValueError, r"^logits: expected at least 1 dim"),
    "logits-int": (lambda b: f(x().astype(int), Y, backend=b), TypeError, r"^logits: .*got dtype int64"),
    "logits-complex": (lambda b: f(x().astype(complex), Y, backend=b), TypeError, r"^logits: .*got dtype complex128"),
    "logits-string": (lambda b: f(np.array([["a", "b"]]), [0], backend=b), TypeError, r"^logits: .*got dtype <U1"),
    "logits-object": (lambda b: f(x().astype(object), Y, backend=b), TypeError, r"^logits: .*got dtype object"),
    "logits-float8": (
        lambda b: f(x().astype(F8), Y, backend=b), TypeError,
        r"^logits: expected float32, float64, float16 or bfloat16, got dtype float8_e4m3fn",
    ),
    "logits-k0": (lambda b: f(np.zeros((N, 0), np.float32), Y, backend=b), ValueError, r"^logits: the class axis \(1\) has length 0"),
    "rowwise-0d": (lambda b: fx.logsumexp(np.float64(1), backend=b), ValueError, r"^x: expected at least 1 dim"),
    "rowwise-int": (
        lambda b: fx.softmax(np.arange(3), backend=b), TypeError, r"^x: expected float32, float64, float16 or bfloat16"
    ),
    "rowwise-k0": (lambda b: fx.log_softmax(np.zeros((2, 0)), backend=b), ValueError, r"^x: axis 1 has length 0"),
    "targets-float-labels": (
        lambda b: f(x(), Y.astype(np.float32), backend=b),
        ValueError,
        r"^targets: dense .*got \(4,\); class indices must have an integer dtype",
    ),
    "targets-label-too-big": (
        lambda b: f(x(), np.array([0, 1, 2, 5]), backend=b), IndexError, r"^targets: class index 5 is out of range for 5"
    ),
    "targets-label-negative": (
        lambda b: f(x(), np.array([0, 1, 2, -1]), backend=b), IndexError, r"^targets: class index -1 is out of range"
    ),
    "targets-label-uint64": (
        lambda b: f(x(), np.array([0, 1, 2, 2**63], np.uint64), backend=b),
        IndexError,
        r"^targets: class index 9223372036854775808 is out of range",
    ),
    "targets-index-shape": (
        lambda b: f(x(), Y[:3], backend=b), ValueError, r"^targets: integer class indices must have shape \(4,\)"
    ),
    "targets-int-multihot": (
        lambda b: f(x(), (X > 0).astype(int), backend=b), ValueError, r"^targets: .*multi-hot .* must be float or bool"
    ),
    "targets-dense-shape": (
        lambda b: f(x(), np.zeros((N, 4), np.float32), backend=b),
        ValueError,
        r"^targets: dense .* shape \(4, 5\), got \(4, 4\)$",
    ),
    "targets-string": (
        lambda b: f(x(), np.array(["a"] * N), backend=b), TypeError, r"^targets: expected integer class indices"
    ),
    "targets-none": (lambda b: f(x(), None, backend=b), TypeError, r"^targets: expected .*NoneType"),
    "weight-shape": (
        lambda b: f(x(), Y, weight=np.ones(4), backend=b), ValueError, r"^weight: expected a real array of shape \(5,\)"
    ),
    "weight-complex": (
        lambda b: f(x(), Y, weight=np.ones(K, complex), backend=b), ValueError, r"^weight: expected a real array"
    ),
    "weight-nan": (
        lambda b: f(x(), Y, weight=[1, 1, np.nan, 1, 1], backend=b), ValueError, r"^weight: must be finite, got nan for class 2"
    ),
    "weight-inf": (
        lambda b: f(x(), Y, weight=[1, 1, 1, np.inf, 1], backend=b), ValueError, r"^weight: must be finite, got inf for class 3"
    ),
    "out-shape": (
        lambda b: f(x(), Y, out=np.empty((N, 4), np.float32), backend=b), ValueError, r"^out: expected shape \(4, 5\)"
    ),
    "out-dtype": (
        lambda b: f(x(), Y, out=np.empty((N, K)), backend=b), ValueError, r"^out: expected .*dtype float32.*float64"
    ),
    "out-byteorder": (
        lambda b: f(x(), Y, out=np.empty((N, K), ">f4"), backend=b), ValueError, r"^out: .*native byte order.*>f4"
    ),
    "out-layout": (
        lambda b: f(x(), Y, out=np.empty((N, K), np.float32, order="F"), backend=b),
        ValueError,
        r"^out: must be contiguous along the class axis",
    ),
    "out-misaligned": (
        lambda b: f(x(), Y, out=misaligned((N, K), np.float32), backend=b), ValueError, r"^out: .*it is not aligned"
    ),
    "out-rows-overlap": (
        lambda b: f(x(), Y, out=overlapping_rows(), backend=b), ValueError, r"^out: its rows overlap in memory"
    ),
    "out-is-targets": (
        out_is_targets,
        ValueError,
        r"^out: shares memory with an input",
    ),
    "out-view-of-logits": (
        out_view_of_logits,
        ValueError,
        r"^out: shares memory with an input.*inplace=True",
    ),
    "out-read-only": (
        lambda b: f(x(), Y, out=read_only(np.empty((N, K), np.float32)), backend=b), ValueError, r"^out: is read-only"
    ),
    "out-copy-only": (
        lambda b: f(x().astype(np.float64), Y, out=[[0.0] * K] * N, backend=b),
        TypeError,
        r"^out: expected an array whose memory can be written in place",
    ),
    "out-with-inplace": (
        lambda b: f(x(), Y, out=np.empty((N, K), np.float32), inplace=True, backend=b),
        ValueError,
        r"^out: cannot be combined with inplace=True",
    ),
    "out-without-grad": (
        lambda b: f(x(), Y, out=np.empty((N, K), np.float32), return_grad=False, backend=b),
        ValueError,
        r"^out: requires return_grad=True",
    ),
    "inplace-read-only": (
        lambda b: f(read_only(x()), Y, inplace=True, backend=b), ValueError, r"^logits \(inplace=True\): is read-only"
    ),
    "inplace-non-contiguous": (
        lambda b: f(np.asfortranarray(x()), Y, inplace=True, backend=b),
        ValueError,
        r"^logits \(inplace=True\): must be contiguous along the class axis",
    ),
    "inplace-unviewable": (
        lambda b: f(np.zeros((2, 6, K), np.float32)[:, :3, :], np.zeros((2, 3), int), inplace=True, backend=b),
        ValueError,
        r"^logits \(inplace=True\): its layout .* cannot be viewed as rows of classes without a copy",
    ),
    "inplace-int": (
        lambda b: f(x().astype(int), Y, inplace=True, backend=b), TypeError, r"^logits: expected float32, float64, float16"
    ),
    "inplace-float16-byteorder": (
        lambda b: f(x().astype(">f2"), Y, inplace=True, backend=b),
        ValueError,
        r"^inplace: logits of dtype >f2 \(non-native byte order\) would need a converting copy",
    ),
    "out-dtype-16bit": (
        lambda b: f(x().astype(BF16), Y, out=np.empty((N, K), np.float32), backend=b),
        ValueError,
        r"^out: expected shape \(4, 5\) and dtype bfloat16 \(native byte order\), got shape \(4, 5\) and dtype float32",
    ),
    "out-float16-for-bfloat16": (
        lambda b: f(x().astype(BF16), Y, out=np.empty((N, K), np.float16), backend=b),
        ValueError,
        r"^out: expected shape \(4, 5\) and dtype bfloat16",
    ),
    "weight-nan-bfloat16": (
        lambda b: f(x().astype(BF16), Y, weight=np.array([1, 1, np.nan, 1, 1], BF16), backend=b),
        ValueError,
        r"^weight: must be finite, got nan for class 2",
    ),
    "targets-bfloat16-labels": (
        lambda b: f(x().astype(BF16), Y.astype(BF16), backend=b),
        ValueError,
        r"^targets: dense .*got \(4,\); class indices must have an integer dtype",
    ),
    "softcap-beyond-float32-16bit": (
        lambda b: f(x().astype(np.float16), Y, softcap=1e39, backend=b),
        ValueError,
        r"^softcap: 1e\+39 is not a positive finite float32 value \(the dtype the loss is computed in\)",
    ),
    "inplace-byteorder": (
        lambda b: f(x().astype(">f4"), Y, inplace=True, backend=b),
        ValueError,
        r"^inplace: logits of dtype >f4 \(non-native byte order\) would need a converting copy",
    ),
    "inplace-copy-only": (
        lambda b: f(X.tolist(), Y, inplace=True, backend=b),
        TypeError,
        r"^logits \(inplace=True\): expected an array whose memory can be written in place",
    ),
    "inplace-aliased-targets": (
        inplace_aliased_targets,
        ValueError,
        r"^inplace: logits shares memory with targets or weight",
    ),
    "out-in-converted-targets": (out_in_converted_targets, ValueError, r"^out: shares memory with an input"),
    "out-in-converted-weight": (out_in_converted_weight, ValueError, r"^out: shares memory with an input"),
    "out-in-byteswapped-logits": (out_in_byteswapped_logits, ValueError, r"^out: shares memory with an input"),
    "inplace-int16-targets-in-logits": (
        inplace_int16_targets_in_logits, ValueError, r"^inplace: logits shares memory with targets or weight"
    ),
    "inplace-without-grad": (
        lambda b: f(x(), Y, inplace=True, return_grad=False, backend=b), ValueError, r"^inplace: requires return_grad=True"
    ),
    "inplace-not-bool": (lambda b: f(x(), Y, inplace="yes", backend=b), TypeError, r"^inplace: expected True or False"),
    "return-grad-not-bool": (
        lambda b: f(x(), Y, return_grad="no", backend=b), TypeError, r"^return_grad: expected True or False"
    ),
    "reduction-bad": (
        lambda b: f(x(), Y, reduction="avg", backend=b), ValueError, r"^reduction: expected one of .*got 'avg'"
    ),
    "reduction-array": (
        lambda b: f(x(), Y, reduction=np.array(["mean"]), backend=b), TypeError, r"^reduction: expected a str"
    ),
    "reduction-0d-array": (
        lambda b: f(x(), Y, reduction=np.array("mean"), backend=b), TypeError, r"^reduction: expected a str"
    ),
    "backend-bad": (lambda b: f(x(), Y, backend="gpu"), ValueError, r"^backend: expected None, 'auto', 'cpp' or 'numpy', got 'gpu'"),
    "axis-out-of-range": (
        lambda b: f(x(), Y, axis=2, backend=b), ValueError, r"^axis: 2 is out of bounds for logits with 2 dimensions"
    ),
    "axis-not-int": (lambda b: f(x(), Y, axis=1.0, backend=b), TypeError, r"^axis: expected an int, got float 1.0"),
    "label-smoothing-negative": (
        lambda b: f(x(), Y, label_smoothing=-0.1, backend=b), ValueError, r"^label_smoothing: expected a value in \[0.0, 1.0\]"
    ),
    "label-smoothing-above-1": (
        lambda b: f(x(), Y, label_smoothing=1.1, backend=b), ValueError, r"^label_smoothing: expected a value in \[0.0, 1.0\]"
    ),
    "label-smoothing-nan": (
        lambda b: f(x(), Y, label_smoothing=float("nan"), backend=b), ValueError, r"^label_smoothing: .*got nan"
    ),
    "z-loss-negative": (lambda b: f(x(), Y, z_loss=-1.0, backend=b), ValueError, r"^z_loss: expected a value in \[0.0,"),
    "z-loss-inf": (lambda b: f(x(), Y, z_loss=float("inf"), backend=b), ValueError, r"^z_loss: .*got inf"),
    "softcap-zero": (lambda b: f(x(), Y, softcap=0, backend=b), ValueError, r"^softcap: expected a value in \(0.0,"),
    "softcap-negative": (lambda b: f(x(), Y, softcap=-1.0, backend=b), ValueError, r"^softcap: expected a value in \(0.0,"),
    "softcap-inf": (lambda b: f(x(), Y, softcap=float("inf"), backend=b), ValueError, r"^softcap: .*got inf"),
    "ignore-index-float": (
        lambda b: f(x(), Y, ignore_index=1.0, backend=b), TypeError, r"^ignore_index: expected an int"
    ),
    "ignore-index-bool": (lambda b: f(x(), Y, ignore_index=True, backend=b), TypeError, r"^ignore_index: expected an int"),
    "ignore-index-beyond-int64": (
        lambda b: f(x(), Y, ignore_index=2**64 - 1, backend=b), ValueError, r"^ignore_index: expected a value in the int64"
    ),
    "ignore-index-uint64": (
        lambda b: f(x(), Y, ignore_index=np.uint64(2**63), backend=b), ValueError, r"^ignore_index: .*int64 range"
    ),
    "z-loss-huge-int": (lambda b: f(x(), Y, z_loss=10**400, backend=b), ValueError, r"^z_loss: expected a value in \[0.0,"),
    "label-smoothing-huge-int": (
        lambda b: f(x(), Y, label_smoothing=10**400, backend=b), ValueError, r"^label_smoothing: expected a value in"
    ),
    "softcap-huge-int": (lambda b: f(x(), Y, softcap=10**400, backend=b), ValueError, r"^softcap: expected a value in"),
    "softcap-string": (lambda b: f(x(), Y, softcap="1", backend=b), TypeError, r"^softcap: expected a float"),
    "softcap-beyond-dtype": (
        lambda b: f(x(), Y, softcap=1e39, backend=b), ValueError, r"^softcap: 1e\+39 is not a positive finite float32"
    ),
    "softcap-below-dtype": (
        lambda b: f(x(), Y, softcap=1e-46, backend=b), ValueError, r"^softcap: 1e-46 is not a positive finite float32"
    ),
    "ignore-index-dense": (
        lambda b: f(x(), np.zeros((N, K), np.float32), ignore_index=0, backend=b),
        ValueError,
        r"^ignore_index: is not supported with dense",
    ),
    "sparse-index-too-big": (
        lambda b: f(x(), fx.SparseTargets([0, 1, 1, 1, 1], [7]), backend=b),
        IndexError,
        r"^targets: sparse class index 7 is out of range for 5 classes",
    ),
    "sparse-index-negative": (
        lambda b: f(x(), fx.SparseTargets([0, 1, 1, 1, 1], [-1]), backend=b),
        IndexError,
        r"^targets: sparse class index -1 is out of range",
    ),
    "sparse-rows": (
        lambda b: f(x(), fx.SparseTargets([0, 1, 1], [0]), backend=b),
        ValueError,
        r"^targets: SparseTargets has 2 rows, logits have 4",
    ),
    "sparse-scipy-shape": (
        lambda b: f(x(), scipy.sparse.csr_matrix((N, K + 1)), backend=b),
        ValueError,
        r"^targets: sparse matrix of shape \(4, 6\), expected \(4, 5\)",
    ),
    "sparse-scipy-broken": (
        lambda b: f(x(), scipy.sparse.csc_matrix((np.ones(2), [0, 7], [0, 1, 2, 2, 2, 2]), shape=(N, K)), backend=b),
        ValueError,
        r"^targets: the scipy.sparse csc structure is invalid",
    ),
    "sparse-indptr": (lambda b: fx.SparseTargets([1, 1], [0]), ValueError, r"^indptr: must start at 0"),
    "sparse-indptr-decreasing": (
        lambda b: fx.SparseTargets([0, 2, 1, 2, 2], [0, 1]), ValueError, r"^indptr: must be non-decreasing"
    ),
    "sparse-float-indices": (
        lambda b: fx.SparseTargets([0, 1], [0.5]), ValueError, r"^indices: expected a 1-D integer array"
    ),
    "set-num-threads-zero": (lambda b: fx.set_num_threads(0), ValueError, r"^n: expected a thread count in \[1, 1024\]"),
    "set-num-threads-huge": (lambda b: fx.set_num_threads(2**31), ValueError, r"^n: expected a thread count in"),
    "set-num-threads-bool": (lambda b: fx.set_num_threads(True), TypeError, r"^n: expected an int"),
    "set-simd-not-str": (lambda b: fx.set_simd(1), TypeError, r"^name: expected a SIMD variant's name"),
    "set-simd-unknown": (lambda b: fx.set_simd("avx9"), ValueError, r"^name: SIMD variant 'avx9' is not supported here"),
    "sparse-reassigned": (sparse_reassigned, AttributeError, r"^SparseTargets is immutable"),
    "sparse-values-length": (
        lambda b: fx.SparseTargets([0, 1], [0], values=[1.0, 2.0]),
        ValueError,
        r"^values: expected a 1-D real array of length len\(indices\) = 1",
    ),
    "sparse-ignore-index": (
        lambda b: f(x(), fx.SparseTargets([0, 1, 1, 1, 1], [0]), ignore_index=0, backend=b),
        ValueError,
        r"^ignore_index: is only supported with integer class-index targets",
    ),
    # fx.linear_cross_entropy: h (4, 3) input, W (5, 3) linear_weight
    "linear-input-int": (lambda b: lce(H.astype(int), WL, Y, backend=b), TypeError, r"^input: expected float32 or float64"),
    "linear-input-0d": (lambda b: lce(np.float32(1), WL, Y, backend=b), ValueError, r"^input: expected at least 1 dimension"),
    "linear-weight-dtype": (
        lambda b: lce(H, WL.astype(np.float64), Y, backend=b),
        TypeError,
        r"^linear_weight: dtype float64 does not match input's dtype float32",
    ),
    "linear-weight-int": (lambda b: lce(H, WL.astype(int), Y, backend=b), TypeError, r"^linear_weight: expected float32 or float64"),
    "linear-weight-d": (
        lambda b: lce(H, np.zeros((K, 4), np.float32), Y, backend=b),
        ValueError,
        r"^linear_weight: expected shape \(K, 3\) \(K classes, D = input.shape\[-1\]\), got \(5, 4\)",
    ),
    "linear-weight-1d": (lambda b: lce(H, WL[0], Y, backend=b), ValueError, r"^linear_weight: expected shape \(K, 3\)"),
    "linear-weight-k0": (lambda b: lce(H, WL[:0], Y, backend=b), ValueError, r"^linear_weight: has 0 rows"),
    "linear-bias-shape": (
        lambda b: lce(H, WL, Y, linear_bias=np.zeros(4, np.float32), backend=b),
        ValueError,
        r"^linear_bias: expected shape \(5,\)",
    ),
    "linear-bias-dtype": (
        lambda b: lce(H, WL, Y, linear_bias=np.zeros(K), backend=b), TypeError, r"^linear_bias: dtype float64 does not match"
    ),
    "linear-targets-shape": (
        lambda b: lce(H, WL, Y[:3], backend=b), ValueError, r"^targets: integer class indices must have shape \(4,\)"
    ),
    "linear-targets-dense-shape": (
        lambda b: lce(H, WL, np.zeros((N, 4), np.float32), backend=b),
        ValueError,
        r"^targets: dense .* shape \(4, 5\) \(input's leading shape \+ \(K,\)\), got \(4, 4\)",
    ),
    "linear-targets-label-too-big": (
        lambda b: lce(H, WL, np.array([0, 1, 2, 5]), backend=b), IndexError, r"^targets: class index 5 is out of range for 5"
    ),
    "linear-sparse-rows": (
        lambda b: lce(H, WL, fx.SparseTargets([0, 1, 1], [0]), backend=b), ValueError, r"^targets: SparseTargets has 2 rows"
    ),
    "linear-chunk-size-zero": (
        lambda b: lce(H, WL, Y, chunk_size=0, backend=b), ValueError, r"^chunk_size: expected a positive int"
    ),
    "linear-chunk-size-float": (
        lambda b: lce(H, WL, Y, chunk_size=2.0, backend=b), TypeError, r"^chunk_size: expected a positive int or None"
    ),
    "linear-chunk-size-bool": (
        lambda b: lce(H, WL, Y, chunk_size=True, backend=b), TypeError, r"^chunk_size: expected a positive int or None"
    ),
    "linear-weight-shape": (lambda b: lce(H, WL, Y, weight=np.ones(4), backend=b), ValueError, r"^weight: expected a real array of shape \(5,\)"),
    "linear-reduction-bad": (lambda b: lce(H, WL, Y, reduction="avg", backend=b), ValueError, r"^reduction: expected one of"),
    "linear-return-grad-not-bool": (
        lambda b: lce(H, WL, Y, return_grad=1, backend=b), TypeError, r"^return_grad: expected True or False"
    ),
    "linear-backend-bad": (lambda b: lce(H, WL, Y, backend="gpu"), ValueError, r"^backend: expected None"),
    # fastxent.vocab_shards: XS the classes [1, 3) of X (vocab_start=1, num_classes=5), RS zero row statistics
    "vocab-start-negative": (
        lambda b: stats(XS, Y, vocab_start=-1, num_classes=K, backend=b),
        ValueError,
        r"^vocab_start: this shard's 2 classes from -1 must lie within the 5 classes \(expected 0 <= vocab_start <= 3\)",
    ),
    "vocab-start-beyond": (
        lambda b: stats(XS, Y, vocab_start=4, num_classes=K, backend=b), ValueError, r"^vocab_start: this shard's 2 classes from 4"
    ),
    "vocab-start-float": (
        lambda b: stats(XS, Y, vocab_start=1.0, num_classes=K, backend=b), TypeError, r"^vocab_start: expected an int, got float"
    ),
    "vocab-start-bool": (
        lambda b: stats(XS, Y, vocab_start=True, num_classes=K, backend=b), TypeError, r"^vocab_start: expected an int, got bool"
    ),
    "vocab-num-classes-zero": (
        lambda b: stats(XS, Y, vocab_start=1, num_classes=0, backend=b),
        ValueError,
        r"^num_classes: expected the number of classes of the whole vocabulary \(>= 1\), got 0",
    ),
    "vocab-num-classes-smaller": (
        lambda b: vgrad(XS, Y, RS, vocab_start=0, num_classes=1, backend=b),
        ValueError,
        r"^num_classes: the whole vocabulary's 1 classes cannot hold this shard's 2 classes",
    ),
    "vocab-num-classes-float": (
        lambda b: stats(XS, Y, vocab_start=1, num_classes=5.0, backend=b), TypeError, r"^num_classes: expected an int, got float"
    ),
    "vocab-label-beyond": (
        lambda b: stats(XS, np.array([0, 1, 2, 5]), vocab_start=1, num_classes=K, backend=b),
        IndexError,
        r"^targets: class index 5 is out of range for 5 classes",
    ),
    "vocab-dense-targets-whole": (
        lambda b: stats(XS, np.zeros((N, K), np.float32), vocab_start=1, num_classes=K, backend=b),
        ValueError,
        r"^targets: dense .* must have the logits' shape \(4, 2\), got \(4, 5\)",
    ),
    "vocab-weight-whole": (
        lambda b: stats(XS, Y, vocab_start=1, num_classes=K, weight=np.ones(K), backend=b),
        ValueError,
        r"^weight: expected a real array of shape \(2,\)",
    ),
    "vocab-row-stats-rows": (
        lambda b: vgrad(XS, Y, np.zeros((3, 4)), vocab_start=1, num_classes=K, backend=b),
        ValueError,
        r"^row_stats: expected shape \(4, 4\), got \(3, 4\)",
    ),
    "vocab-row-stats-width": (
        lambda b: vgrad(XS, Y, np.zeros((N, 3)), vocab_start=1, num_classes=K, backend=b),
        ValueError,
        r"^row_stats: expected float row statistics of shape \(\.\.\., 4\), got \(4, 3\)",
    ),
    "vocab-row-stats-int": (
        lambda b: vgrad(XS, Y, np.zeros((N, 4), np.int64), vocab_start=1, num_classes=K, backend=b),
        ValueError,
        r"^row_stats: expected float row statistics of shape \(\.\.\., 4\), got \(4, 4\) int64",
    ),
    "vocab-grad-scale-shape": (
        lambda b: vgrad(XS, Y, RS, vocab_start=1, num_classes=K, grad_scale=np.ones(3), backend=b),
        ValueError,
        r"^grad_scale: expected a real scalar or shape \(4,\), got \(3,\)",
    ),
    "vocab-grad-scale-complex": (
        lambda b: vgrad(XS, Y, RS, vocab_start=1, num_classes=K, grad_scale=1j, backend=b),
        ValueError,
        r"^grad_scale: expected a real scalar or shape \(4,\), got \(\) complex128",
    ),
    "vocab-out-in-row-stats": (vocab_out_in_row_stats, ValueError, r"^out: shares memory with an input \(row_stats or grad_scale\)"),
    "vocab-ignored-shape": (
        lambda b: fx.loss_from_row_statistics(RS, ignored=np.zeros(3, bool)),
        ValueError,
        r"^ignored: expected a bool mask of shape \(4,\), got \(3,\)",
    ),
    "vocab-ignored-int": (
        lambda b: fx.loss_from_row_statistics(RS, ignored=np.zeros(N, np.int64)),
        ValueError,
        r"^ignored: expected a bool mask of shape \(4,\), got \(4,\) int64",
    ),
    "vocab-loss-stats-width": (
        lambda b: fx.loss_from_row_statistics(np.zeros((N, 3))), ValueError, r"^row_stats: expected float row statistics"
    ),
    "vocab-loss-z-loss-negative": (
        lambda b: fx.loss_from_row_statistics(RS, z_loss=-1.0), ValueError, r"^z_loss: expected a value in \[0\.0, inf\]"
    ),
    "vocab-row-max-shape": (
        lambda b: fx.vocab_shard_partial_sums(RS, np.zeros(3)),
        ValueError,
        r"^row_max: expected shape \(4,\) \(one per row\), got \(3,\)",
    ),
    "vocab-row-max-complex": (
        lambda b: fx.vocab_shard_partial_sums(RS, np.zeros(N, complex)),
        ValueError,
        r"^row_max: expected a real \(integer or float\) array, got dtype complex128",
    ),
    "vocab-shard-stats-width": (
        lambda b: fx.vocab_shard_partial_sums(np.zeros((N, 5)), np.zeros(N)),
        ValueError,
        r"^shard_stats: expected float row statistics of shape \(\.\.\., 4\), got \(4, 5\)",
    ),
    "vocab-sums-shape": (
        lambda b: fx.row_statistics_from_sums(np.zeros(N), np.zeros((N, 4))),
        ValueError,
        r"^sums: expected shape \(4, 3\) \(three per row\), got \(4, 4\)",
    ),
    "vocab-sums-string": (
        lambda b: fx.row_statistics_from_sums(np.zeros(N), "abc"),
        ValueError,
        r"^sums: expected a real \(integer or float\) array, got dtype <U3",
    ),
    "vocab-dtype-int": (
        lambda b: fx.row_statistics_from_sums(np.zeros(N), np.zeros((N, 3)), dtype=np.int64),
        TypeError,
        r"^dtype: expected the logits' float dtype \(float16, bfloat16, float32 or float64\), got int64",
    ),
    "vocab-combine-empty": (
        lambda b: fx.combine_vocab_shard_statistics([]), ValueError, r"^shard_stats: expected the statistics of at least one shard"
    ),
    "vocab-combine-rows-differ": (
        lambda b: fx.combine_vocab_shard_statistics([RS, RS[:3]]),
        ValueError,
        r"^shard_stats: every shard's statistics must have the same shape \(the same rows\), got \(3, 4\), \(4, 4\)",
    ),
    "vocab-combine-none": (
        lambda b: fx.combine_vocab_shard_statistics(None), TypeError, r"^shard_stats: expected a sequence of the shards' statistics"
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_raises_naming_the_argument(case: str, backend: str) -> None:
    call, exc, match = ERRORS[case]
    with pytest.raises(exc, match=match):
        call(backend)


# ---- documented values -----------------------------------------------------------


def _rows(backend: str, logits: np.ndarray, targets: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    loss, grad = f(logits, targets, reduction="none", backend=backend, **kw)
    assert grad is not None
    return np.asarray(loss, np.float64), np.asarray(grad, np.float64)


def _check_other_rows(loss: np.ndarray, grad: np.ndarray, logits: np.ndarray, targets: Any, bad: int) -> None:
    """Every row but `bad` equals the float64 reference of that row alone."""
    keep = [i for i in range(logits.shape[0]) if i != bad]
    t = targets.to_dense(logits.shape[1]) if isinstance(targets, fx.SparseTargets) else np.asarray(targets)
    ref_loss, ref_grad = cross_entropy(logits[keep].astype(np.float64), t[keep], reduction="none")
    # float32 kernels vs float64 reference: ~10 eps for K = 5 (exp, log, sums)
    np.testing.assert_allclose(loss[keep], ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad[keep], ref_grad, rtol=1e-5, atol=1e-6)


def _dense_y() -> np.ndarray:
    y = np.zeros((N, K), np.float32)
    y[np.arange(N), Y] = 1.0
    y[:, 4] += 0.5  # multi-label rows, sum(y) = 1.5
    return y


def _with(a: np.ndarray, at: Any, value: float) -> np.ndarray:
    a[at] = value
    return a


# ---- rows that have no value: NaN in that row alone -------------------------------

# id -> (logits, targets) whose row 1 has no value (docs/spec.md#conventions)
NAN_ROWS: dict[str, Callable[[], tuple[np.ndarray, Any]]] = {
    "nan-logit": lambda: (_with(x(), (1, 3), np.nan), Y),
    "posinf-logit": lambda: (_with(x(), (1, 0), np.inf), Y),
    "all-neginf-row": lambda: (_with(x(), 1, -np.inf), Y),
    "nan-dense-target": lambda: (x(), _with(_dense_y(), (1, 2), np.nan)),
    "inf-dense-target": lambda: (x(), _with(_dense_y(), (1, 2), np.inf)),
    "neg-inf-dense-target": lambda: (x(), _with(_dense_y(), (1, 2), -np.inf)),
    "inf-sparse-value": lambda: (x(), fx.SparseTargets([0, 1, 2, 3, 4], [0, 1, 2, 3], values=[1.0, np.inf, 1.0, 2.0])),
    "nan-sparse-value": lambda: (x(), fx.SparseTargets([0, 1, 2, 3, 4], [0, 1, 2, 3], values=[1.0, np.nan, 1.0, 2.0])),
}


@pytest.mark.parametrize("case", list(NAN_ROWS))
def test_row_without_a_value_is_nan_and_leaves_the_others(case: str, backend: str) -> None:
    logits, targets = NAN_ROWS[case]()
    loss, grad = _rows(backend, logits, targets)
    assert np.isnan(loss[1])
    assert np.isnan(grad[1]).all()
    _check_other_rows(loss, grad, logits, targets, bad=1)
    assert np.isnan(f(logits, targets, backend=backend)[0])  # a reduced loss is NaN too


# ---- empty batches (N = 0): every target kind, as PyTorch ---------------------------

# id -> (reduction, what each target kind's loss must satisfy)
EMPTY_BATCHES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "n0-none": ("none", lambda loss: loss.shape == (0,) and loss.dtype == np.float32),
    "n0-sum": ("sum", lambda loss: loss == 0.0),
    "n0-mean": ("mean", lambda loss: bool(np.isnan(loss))),  # 0 / 0
}


@pytest.mark.parametrize("case", list(EMPTY_BATCHES))
def test_empty_batch_gives_documented_loss(case: str, backend: str) -> None:
    reduction, expected = EMPTY_BATCHES[case]
    for t in (np.zeros(0, np.int64), np.zeros((0, K), np.float32), fx.SparseTargets([0], [])):
        loss, grad = f(np.zeros((0, K), np.float32), t, reduction=reduction, backend=backend)
        assert grad is not None
        assert grad.shape == (0, K)
        assert grad.dtype == np.float32
        assert expected(loss), (type(t).__name__, loss)


# ---- the other documented values, one check each ------------------------------------


def _value_neginf_logit_no_target(b: str) -> None:
    a = x()
    a[1, 4] = -np.inf  # Y[1] == 1: no mass on class 4
    for t in (Y, _dense_y() * (np.arange(K) != 4)):
        loss, grad = _rows(b, a, t)
        assert np.isfinite(loss).all()
        assert np.isfinite(grad).all()
        assert grad[1, 4] == 0.0
        _check_other_rows(loss, grad, a, t, bad=-1)


def _value_neginf_logit_on_target(b: str) -> None:
    a = x()
    a[1, Y[1]] = -np.inf
    loss, grad = _rows(b, a, Y)
    assert loss[1] == np.inf
    assert np.isfinite(grad).all()
    _check_other_rows(loss, grad, a, Y, bad=1)
    ref = cross_entropy(a.astype(np.float64), Y, reduction="none")[1]
    np.testing.assert_allclose(grad[1], ref[1], rtol=1e-5, atol=1e-6)


def _value_negative_weight(b: str) -> None:
    w = np.array([-1.0, 1, 1, 1, 1])
    for red in ("none", "sum", "mean"):
        loss, grad = f(x(), Y, weight=w, reduction=red, backend=b)
        ref_loss, ref_grad = cross_entropy(X.astype(np.float64), Y, weight=w, reduction=red)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


def _value_k1(b: str) -> None:
    a = X[:, :1].copy()
    for t in (np.zeros(N, np.int64), np.array([[0.5], [1.0], [2.0], [0.0]], np.float32)):
        for red in ("none", "sum", "mean"):
            loss, grad = f(a, t, reduction=red, backend=b)
            assert np.all(np.asarray(loss) == 0.0)
            assert grad is not None
            assert grad.shape == (N, 1)
            assert np.all(grad == 0.0)


def _value_all_ignored_mean(b: str) -> None:
    loss, grad = f(x(), np.full(N, -100), backend=b)
    assert np.isnan(loss)
    assert grad is not None
    assert np.all(grad == 0.0)


def _value_zero_weight_mean(b: str) -> None:
    y = np.array([0, 1, -100, 3])
    for w, z_loss in ((np.zeros(K), 0.0), (np.zeros(K), 1.0), (np.array([1e-320, 0, 0, 0, 0]), 1.0)):
        loss, grad = f(X.astype(np.float64), y, weight=w, z_loss=z_loss, backend=b)
        assert grad is not None
        assert np.isnan(grad[[0, 1, 3]]).all()
        assert np.all(grad[2] == 0.0)  # the ignored row
        assert np.isnan(loss) if z_loss == 0.0 else loss == np.inf
    # float32 weights near 1e-40: the sum's reciprocal (~2e39) overflows float32
    loss, grad = f(X, y, weight=np.full(K, 1e-40), backend=b)
    assert grad is not None
    assert np.isnan(grad[[0, 1, 3]]).all()
    assert np.isfinite(loss)


def _value_16bit_special_rows(b: str) -> None:
    """The NaN rows above, and a masked class, with bfloat16 / float16 logits (16-bit
    dense targets too): the same special values in the same places, the other rows
    as the float64 reference of the 16-bit values (loss float32-close, gradient within
    a 16-bit rounding)."""
    for dtype in (BF16, np.dtype(np.float16)):
        cases = [(1, *make()) for make in NAN_ROWS.values()]
        masked = _with(x(), (1, 4), -np.inf)  # Y[1] == 1: no mass on class 4
        cases += [(-1, masked, Y), (-1, masked, _dense_y() * (np.arange(K) != 4))]
        for bad, logits, targets in cases:
            lx = logits.astype(dtype)
            t = targets.astype(dtype) if isinstance(targets, np.ndarray) and targets.dtype.kind == "f" else targets
            loss, grad = f(lx, t, reduction="none", backend=b)
            assert loss.dtype == np.float32
            assert grad is not None
            assert grad.dtype == dtype
            g = grad.astype(np.float64)
            keep = [i for i in range(N) if i != bad]
            if bad >= 0:
                assert np.isnan(loss[bad])
                assert np.isnan(g[bad]).all()
            else:
                assert g[1, 4] == 0.0
                assert np.isfinite(g).all()
            dense_t = t.to_dense(K) if isinstance(t, fx.SparseTargets) else np.asarray(t)
            dense_t = dense_t if dense_t.dtype.kind in "iu" else dense_t.astype(np.float64)
            ref_loss, ref_grad = cross_entropy(lx[keep].astype(np.float64), dense_t[keep], reduction="none")
            np.testing.assert_allclose(loss[keep], ref_loss, rtol=1e-5, atol=1e-6)
            eps = float(ml_dtypes.finfo(dtype).eps)  # one 16-bit rounding of each element
            np.testing.assert_allclose(g[keep], ref_grad, rtol=eps, atol=1e-7)


def _value_float16_gradient_overflow(b: str) -> None:
    """A gradient element beyond float16's range rounds to -inf like any float16 value;
    the loss (float32) stays finite."""
    w = np.full(K, 1e6, np.float32)
    a = np.zeros((N, K), np.float16)  # softmax 1/5: gradient at the target -0.8e6, elsewhere 0.2e6
    loss, grad = f(a, Y, weight=w, reduction="sum", backend=b)
    assert grad is not None
    assert np.isfinite(loss)
    assert np.asarray(loss).dtype == np.float32
    assert np.all(grad[np.arange(N), Y] == -np.inf)
    other = grad.astype(np.float64)[np.arange(K)[None, :] != Y[:, None]]
    assert np.all(other == np.inf)  # 2e5 > 65504 too
    loss, grad = f(a, Y, weight=w / 20, reduction="sum", backend=b)  # 0.8e6/20 = 40000: finite
    assert grad is not None
    assert np.isfinite(grad.astype(np.float32)).all()


VALUES: dict[str, Callable[[str], None]] = {
    "16bit-special-rows": _value_16bit_special_rows,
    "float16-gradient-overflow": _value_float16_gradient_overflow,
    "neginf-logit-no-target": _value_neginf_logit_no_target,
    "neginf-logit-on-target": _value_neginf_logit_on_target,
    "negative-weight": _value_negative_weight,
    "k1": _value_k1,
    "all-ignored-mean": _value_all_ignored_mean,
    "zero-weight-mean": _value_zero_weight_mean,
}


@pytest.mark.parametrize("case", list(VALUES))
def test_unusual_input_gives_documented_value(case: str, backend: str) -> None:
    VALUES[case](backend)


def test_rowwise_functions_on_empty_and_special_rows(backend: str) -> None:
    a = np.zeros((0, 3))
    assert fx.logsumexp(a, backend=backend).shape == (0,)
    assert fx.softmax(a, backend=backend).shape == (0, 3)
    assert fx.log_softmax(a, backend=backend).shape == (0, 3)
    b = np.array([[0.0, np.nan], [np.inf, 0.0], [-np.inf, -np.inf], [0.0, -np.inf]])
    lse = fx.logsumexp(b, backend=backend)
    assert np.isnan(lse[:3]).all()
    assert lse[3] == 0.0
    np.testing.assert_array_equal(fx.log_softmax(b, backend=backend)[3], [0.0, -np.inf])


def test_the_docs_table_lists_exactly_the_tested_cases() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md").read_text()
    ids = re.findall(r"^\| `([a-z0-9-]+)` \|", doc, flags=re.MULTILINE)
    assert len(ids) == len(set(ids)), "a case id appears twice in docs/bad_inputs.md"
    assert set(ids) == set(ERRORS) | set(NAN_ROWS) | set(EMPTY_BATCHES) | set(VALUES)
