"""The public API takes anything NumPy can view without copying: __dlpack__ (PyTorch
CPU tensors), the buffer protocol (memoryview, array.array, bytearray), __array__
and __array_interface__ objects. As inputs they give the numbers their NumPy twins
give. As out= or inplace=True destinations, the gradient lands in their own memory,
and anything that NumPy could only copy is refused with an error naming the argument.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np
import pytest
import torch

import fastxent as fx

N, K = 5, 11


@pytest.fixture
def data(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x": (rng.standard_normal((N, K)) * 2).astype(np.float32),
        "y": rng.integers(0, K, N),
        "dense": (rng.random((N, K)) < 0.3).astype(np.float32),
        "w": (rng.random(K) + 0.5).astype(np.float32),
    }


def same(a: Any, b: Any) -> None:
    for u, v in zip(a, b):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), strict=True)


class ArrayOnly:
    """Exposes an ndarray only through __array__, honouring NumPy 2's copy argument."""

    def __init__(self, a: np.ndarray, must_copy: bool = False) -> None:
        self._a = a
        self._must_copy = must_copy

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if self._must_copy:
            if copy is False:
                raise ValueError("this object can only give a copy")
            return self._a.copy()
        return self._a if dtype is None else self._a.astype(dtype)


class InterfaceOnly:
    """Exposes an ndarray only through __array_interface__."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a
        self.__array_interface__ = a.__array_interface__


# ---- torch tensors (__dlpack__) ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_tensors_as_inputs(dtype: torch.dtype, data: dict[str, np.ndarray], backend: str) -> None:
    npd = np.float32 if dtype == torch.float32 else np.float64
    x, y, dense, w = data["x"].astype(npd), data["y"], data["dense"].astype(npd), data["w"]
    tx, ty, td, tw = torch.from_numpy(x.copy()), torch.from_numpy(y), torch.from_numpy(dense), torch.from_numpy(w)
    same(fx.softmax_cross_entropy(tx, ty, weight=tw, backend=backend), fx.softmax_cross_entropy(x, y, weight=w, backend=backend))
    same(fx.softmax_cross_entropy(tx, td, backend=backend), fx.softmax_cross_entropy(x, dense, backend=backend))
    # a transposed (non-contiguous) tensor with the class axis first
    same(
        fx.softmax_cross_entropy(tx.T, ty, axis=0, backend=backend),
        fx.softmax_cross_entropy(x.T, y, axis=0, backend=backend),
    )
    np.testing.assert_array_equal(fx.softmax(tx, backend=backend), fx.softmax(x, backend=backend))
    np.testing.assert_array_equal(tx.numpy(), x)  # inputs are read, never written


def test_torch_tensor_is_viewed_not_copied(data: dict[str, np.ndarray], backend: str) -> None:
    tx = torch.from_numpy(data["x"].copy())
    expected = fx.softmax_cross_entropy(data["x"], data["y"], backend=backend)
    loss, grad = fx.softmax_cross_entropy(tx, data["y"], inplace=True, backend=backend)
    assert grad is not None
    assert grad.__array_interface__["data"][0] == tx.data_ptr()  # the tensor's own memory
    same((loss, tx.numpy()), expected)


def test_torch_tensor_as_out(data: dict[str, np.ndarray], backend: str) -> None:
    out = torch.full((N, K), 7.0)
    expected = fx.softmax_cross_entropy(data["x"], data["dense"], backend=backend)
    loss, grad = fx.softmax_cross_entropy(data["x"], data["dense"], out=out, backend=backend)
    assert grad is not None
    assert grad.__array_interface__["data"][0] == out.data_ptr()
    same((loss, out.numpy()), expected)


def test_torch_tensors_that_cannot_be_viewed_or_written(data: dict[str, np.ndarray], backend: str) -> None:
    x, y = data["x"], data["y"]
    with pytest.raises(TypeError, match=r"^logits: expected an array, got Tensor.*requires grad"):
        fx.softmax_cross_entropy(torch.from_numpy(x.copy()).requires_grad_(), y, backend=backend)
    with pytest.raises(TypeError, match=r"^logits: "):
        fx.softmax_cross_entropy(torch.from_numpy(x).to(torch.bfloat16), y, backend=backend)
    with pytest.raises(TypeError, match=r"^out: Tensor cannot be viewed as a NumPy array without a copy"):
        fx.softmax_cross_entropy(x, y, out=torch.zeros(N, K, requires_grad=True), backend=backend)
    with pytest.raises(TypeError, match=r"^logits \(inplace=True\): Tensor cannot be viewed"):
        fx.softmax_cross_entropy(torch.from_numpy(x.copy()).requires_grad_(), y, inplace=True, backend=backend)
    with pytest.raises(ValueError, match=r"^out: must be contiguous along the class axis"):
        fx.softmax_cross_entropy(x, y, out=torch.zeros(K, N).T, backend=backend)  # never a silent copy
    with pytest.raises(ValueError, match=r"^out: expected shape \(5, 11\) and dtype float32"):
        fx.softmax_cross_entropy(x, y, out=torch.zeros(N, K, dtype=torch.float64), backend=backend)


# ---- buffer protocol -------------------------------------------------------------------


def test_memoryview_and_bytearray(data: dict[str, np.ndarray], backend: str) -> None:
    x, y = data["x"], data["y"]
    expected = fx.softmax_cross_entropy(x, y, backend=backend)
    mv = memoryview(bytearray(x.tobytes())).cast("B").cast("f", (N, K))
    same(fx.softmax_cross_entropy(mv, y, backend=backend), expected)
    # out= a writable memoryview: the bytes behind it receive the gradient
    buf = bytearray(x.nbytes)
    loss, _ = fx.softmax_cross_entropy(x, y, out=memoryview(buf).cast("f", (N, K)), backend=backend)
    same((loss, np.frombuffer(buf, np.float32).reshape(N, K)), expected)
    # in place into a memoryview
    buf2 = bytearray(x.tobytes())
    fx.softmax_cross_entropy(memoryview(buf2).cast("f", (N, K)), y, inplace=True, backend=backend)
    np.testing.assert_array_equal(np.frombuffer(buf2, np.float32).reshape(N, K), expected[1])


def test_read_only_buffers_are_inputs_only(data: dict[str, np.ndarray], backend: str) -> None:
    x, y = data["x"], data["y"]
    ro = memoryview(x.tobytes()).cast("f", (N, K))  # bytes: read-only
    same(fx.softmax_cross_entropy(ro, y, backend=backend), fx.softmax_cross_entropy(x, y, backend=backend))
    with pytest.raises(ValueError, match=r"^out: is read-only"):
        fx.softmax_cross_entropy(x, y, out=memoryview(bytes(x.nbytes)).cast("f", (N, K)), backend=backend)
    with pytest.raises(ValueError, match=r"^logits \(inplace=True\): is read-only"):
        fx.softmax_cross_entropy(ro, y, inplace=True, backend=backend)


def test_array_array(rng: np.random.Generator, backend: str) -> None:
    x = rng.standard_normal(K)  # one row: 1-D logits, 0-d or (K,) targets
    y = (rng.random(K) < 0.4).astype(np.float64)
    expected = fx.softmax_cross_entropy(x, y, backend=backend)
    ax, ay = array.array("d", x), array.array("d", y)
    same(fx.softmax_cross_entropy(ax, ay, backend=backend), expected)
    out = array.array("d", [0.0] * K)
    loss, _ = fx.softmax_cross_entropy(ax, ay, out=out, backend=backend)
    same((loss, np.array(out)), expected)
    fx.softmax_cross_entropy(ax, ay, inplace=True, backend=backend)
    np.testing.assert_array_equal(np.array(ax), expected[1])
    # integer class indices and float32 weights from array.array too
    x2 = rng.standard_normal((3, K)).astype(np.float32)
    w = array.array("f", rng.random(K) + 0.5)
    idx = array.array("q", [1, 4, K - 1])
    same(
        fx.softmax_cross_entropy(x2, idx, weight=w, backend=backend),
        fx.softmax_cross_entropy(x2, np.array(idx), weight=np.array(w), backend=backend),
    )


# ---- __array__ / __array_interface__ ---------------------------------------------------


def test_array_and_array_interface_objects(data: dict[str, np.ndarray], backend: str) -> None:
    x, y = data["x"], data["y"]
    expected = fx.softmax_cross_entropy(x, y, backend=backend)
    for wrap in (ArrayOnly, InterfaceOnly):
        same(fx.softmax_cross_entropy(wrap(x.copy()), wrap(y), backend=backend), expected)
        target = np.zeros((N, K), np.float32)
        fx.softmax_cross_entropy(x, y, out=wrap(target), backend=backend)
        np.testing.assert_array_equal(target, expected[1])
        inner = x.copy()
        fx.softmax_cross_entropy(wrap(inner), y, inplace=True, backend=backend)
        np.testing.assert_array_equal(inner, expected[1])


def test_objects_numpy_could_only_copy_are_refused_as_destinations(data: dict[str, np.ndarray], backend: str) -> None:
    x, y = data["x"], data["y"]
    copy_only = ArrayOnly(np.zeros((N, K), np.float32), must_copy=True)
    # as an input a copy is fine
    same(
        fx.softmax_cross_entropy(ArrayOnly(x, must_copy=True), y, backend=backend),
        fx.softmax_cross_entropy(x, y, backend=backend),
    )
    with pytest.raises(TypeError, match=r"^out: expected an array whose memory can be written in place"):
        fx.softmax_cross_entropy(x, y, out=copy_only, backend=backend)
    with pytest.raises(TypeError, match=r"^logits \(inplace=True\): expected an array whose memory"):
        fx.softmax_cross_entropy(ArrayOnly(x, must_copy=True), y, inplace=True, backend=backend)
    with pytest.raises(TypeError, match=r"^out: expected an array whose memory"):
        fx.softmax_cross_entropy(x.astype(np.float64), y, out=x.astype(np.float64).tolist(), backend=backend)
