"""Indexing is 64-bit throughout: element offsets, row strides and class indices past
2^31 give the right numbers.

The arrays are large in address space but cheap in memory: np.zeros maps untouched
pages to the kernel's shared zero page, so reading them costs no RSS, and only the
few pages a test writes become resident. Each test therefore reaches offsets beyond
2^31 elements (8 GiB of float32) while using a few MiB. Each buffer is one 8 GiB
allocation, which Linux grants only with that much RAM + swap. Measured on the
2-core dev machine: about 6 s, and resident memory grows by < 50 MiB.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import fastxent as fx

BIG = 2**31 + 16  # elements: past the int32 range, and past it in bytes x 4 as well


def as_rows(buf: np.ndarray, n: int, k: int, row_stride: int) -> np.ndarray:
    """(n, k) view of buf with a row stride in elements (within buf's bounds)."""
    assert (n - 1) * row_stride + k <= buf.size
    return np.lib.stride_tricks.as_strided(buf, (n, k), (row_stride * buf.itemsize, buf.itemsize))


def rss_mib() -> float:
    """Resident memory now (not the peak: under ASan, allocating the big buffer
    briefly writes 1/8 of its size in shadow memory, and the peak keeps that)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# Resident growth allowed while the big arrays are alive. Touching them would cost
# 8 GiB; the measured growth is < 50 MiB (< 100 MiB under ASan).
MAX_GROWTH_MIB = 512


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32])
def test_row_stride_beyond_2_31_elements(dtype: type) -> None:
    """Two rows 2^31 + 16 elements apart, for logits, dense targets and out=.
    float32 only: the offset arithmetic is the same template code for float64, and
    a 16 GiB float64 buffer could exceed a smaller CI machine's overcommit limit
    (Linux refuses one allocation larger than RAM + swap)."""
    start = rss_mib()
    k = 1000
    rng = np.random.default_rng(0)
    small = (rng.standard_normal((2, k)) * 3).astype(dtype)
    y_small = rng.random((2, k)).astype(dtype)
    expected = fx.softmax_cross_entropy(small, y_small, reduction="none", backend="cpp")

    x = as_rows(np.zeros(BIG + k, dtype), 2, k, BIG)
    y = as_rows(np.zeros(BIG + k, dtype), 2, k, BIG)
    out_buf = np.zeros(BIG + k + 1, dtype)
    out = as_rows(out_buf[1:], 2, k, BIG)
    x[...] = small
    y[...] = y_small
    loss, grad = fx.softmax_cross_entropy(x, y, reduction="none", out=out, backend="cpp")
    assert grad is out
    np.testing.assert_array_equal(loss, expected[0], strict=True)
    np.testing.assert_array_equal(out, expected[1], strict=True)
    # nothing written around the two rows: a wrapped 32-bit offset would land elsewhere
    assert out_buf[0] == 0
    assert out_buf[1 + k] == 0
    assert out_buf[BIG] == 0

    # in place, with index targets
    x[...] = small
    y_idx = np.array([3, k - 1])
    exp_idx = fx.softmax_cross_entropy(small, y_idx, reduction="sum", backend="cpp")
    loss, grad = fx.softmax_cross_entropy(x, y_idx, reduction="sum", inplace=True, backend="cpp")
    assert grad is x
    assert loss == exp_idx[0]
    np.testing.assert_array_equal(x, exp_idx[1], strict=True)
    assert rss_mib() - start < MAX_GROWTH_MIB


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["index", "dense"])
def test_one_row_with_more_than_2_31_classes(kind: str) -> None:
    """K = 2^31 + 16 in one float32 row (split across threads): the class loop, the
    target index and the row sum all go past 2^31. Loss only: the row is read, and
    it is all zero pages but for the target class."""
    start = rss_mib()
    k = BIG
    x = np.zeros((1, k), np.float32)
    c = k - 3  # a class index that does not fit in int32
    x[0, c] = 5.0
    x[0, 7] = 2.0
    if kind == "index":
        targets: np.ndarray = np.array([c])
    else:
        targets = np.zeros((1, k), np.float32)
        targets[0, c] = 1.0
    loss, grad = fx.softmax_cross_entropy(x, targets, return_grad=False, backend="cpp")
    assert grad is None
    # lse = log((K - 2) e^0 + e^2 + e^5); loss = lse - 5
    expected = math.log((k - 2) + math.exp(2.0) + math.exp(5.0)) - 5.0
    # float32 result of a float32 row of 2^31 terms: the kernel's row sum must not
    # saturate (a plain float32 accumulator stops growing at 2^24): ~1e-6 relative.
    assert abs(float(loss) - expected) <= 4e-6 * expected, (float(loss), expected)
    lse = fx.logsumexp(x, backend="cpp")
    assert abs(float(lse[0]) - (expected + 5.0)) <= 4e-6 * (expected + 5.0)
    assert rss_mib() - start < MAX_GROWTH_MIB


@pytest.mark.slow
def test_more_than_2_31_elements_in_many_rows() -> None:
    """N x K = (2^15 + 1) x 2^16 > 2^31 elements: every row the same memory (row
    stride 0, read-only), so the reduction over 2^31+ elements costs no memory."""
    start = rss_mib()
    k = 2**16
    n = 2**15 + 1
    rng = np.random.default_rng(1)
    row = rng.standard_normal(k).astype(np.float32)
    x = np.broadcast_to(row, (n, k))
    y = np.full(n, 123)
    y[::2] = k - 1
    loss_a = float(fx.softmax_cross_entropy(row[None, :], np.array([123]), reduction="sum")[0])
    loss_b = float(fx.softmax_cross_entropy(row[None, :], np.array([k - 1]), reduction="sum")[0])
    losses, grad = fx.softmax_cross_entropy(x, y, reduction="none", return_grad=False, backend="cpp")
    assert grad is None
    assert losses.shape == (n,)
    np.testing.assert_array_equal(losses[::2], np.float32(loss_b))
    np.testing.assert_array_equal(losses[1::2], np.float32(loss_a))
    total = float(fx.softmax_cross_entropy(x, y, reduction="sum", return_grad=False, backend="cpp")[0])
    n_b = (n + 1) // 2
    expected = n_b * loss_b + (n - n_b) * loss_a
    # float32 per-row losses summed in double: rounding of the per-row values only
    assert abs(total - expected) <= 1e-6 * abs(expected)
    assert rss_mib() - start < MAX_GROWTH_MIB
