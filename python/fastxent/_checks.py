"""Every argument parsed into a typed value, in one place for both backends, both
validation paths (the fast path and the general one) and the adapters.

A bad argument raises TypeError (wrong type), ValueError (wrong value) or
IndexError (a class index out of range), with a message that starts with the
argument's name (the whole table: docs/bad_inputs.md).
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np

REDUCTIONS = ("none", "sum", "mean")
BACKENDS = ("auto", "cpp", "numpy")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT16 = np.dtype(np.float16)
FLOAT32 = FLOAT_DTYPES[0]
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_FLOAT64_MAX = float(np.finfo(np.float64).max)
_PLAIN_NUMBERS = (float, int)


def describe(a: Any) -> str:
    """A short description of an argument for an error message."""
    if isinstance(a, np.ndarray):
        return f"an array of shape {a.shape} and dtype {a.dtype}"
    return f"{type(a).__name__} {a!r}"[:120]


def as_array(obj: Any, name: str) -> np.ndarray:
    """A plain ndarray over obj's memory when NumPy can view it without copying
    (arrays, buffers, __array__, __dlpack__ such as CPU tensors), else NumPy's copy.

    ndarray subclasses (np.matrix, MaskedArray, memmap) are viewed as plain ndarrays:
    the same memory, and a MaskedArray's mask is ignored (docs/spec.md#inputs), so
    both backends see the same array whatever methods the subclass overrides."""
    if isinstance(obj, np.ndarray):
        return obj if type(obj) is np.ndarray else obj.view(np.ndarray)
    if hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
        try:
            return np.from_dlpack(obj)
        except (TypeError, BufferError, RuntimeError):
            pass  # e.g. a tensor that requires grad: fall through to __array__
    try:
        arr = np.asarray(obj)
    except Exception as exc:  # re-raised with the argument's name
        raise TypeError(f"{name}: expected an array, got {type(obj).__name__} ({exc})") from exc
    return arr if type(arr) is np.ndarray else arr.view(np.ndarray)


def as_writable_array(obj: Any, name: str) -> np.ndarray:
    """A writable plain ndarray over obj's own memory, for out= and inplace=True: an
    ndarray, a writable buffer (memoryview, array.array, bytearray), a __dlpack__
    object (a CPU tensor), or an __array__ object that can give its memory without a
    copy. Anything NumPy could only copy is refused, so writes never get lost."""
    if isinstance(obj, np.ndarray):
        arr = obj
    elif hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
        try:
            arr = np.from_dlpack(obj)
        except (TypeError, BufferError, RuntimeError) as exc:
            raise TypeError(f"{name}: {type(obj).__name__} cannot be viewed as a NumPy array without a copy ({exc})") from exc
    else:
        try:
            arr = np.asarray(obj, copy=False)  # NumPy >= 2: raises instead of copying
        except ValueError:
            raise TypeError(
                f"{name}: expected an array whose memory can be written in place (ndarray, writable buffer, "
                f"CPU tensor), got {type(obj).__name__}, which NumPy could only copy"
            ) from None
    if type(arr) is not np.ndarray:
        arr = arr.view(np.ndarray)
    if not arr.flags.writeable:
        raise ValueError(f"{name}: is read-only; the gradient is written into it")
    return arr


def is_bfloat16(dtype: np.dtype) -> bool:
    """ml_dtypes' bfloat16 (JAX's too), recognised without importing ml_dtypes: whoever
    holds such an array has the package loaded already."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16" and dtype.fields is None


def is_16bit(dtype: np.dtype) -> bool:
    """bfloat16 or native float16: stored in 16 bits, computed in float32."""
    return dtype is FLOAT16 or dtype == FLOAT16 or is_bfloat16(dtype)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """What the kernels compute a dtype's logits in, and the dtype of the loss, the
    weights and sparse values they read: float32 for the 16-bit dtypes."""
    return FLOAT32 if is_16bit(dtype) else dtype


def is_float_like(dtype: np.dtype) -> bool:
    """A real floating dtype, bfloat16 included (NumPy gives it kind 'V')."""
    return dtype.kind == "f" or is_bfloat16(dtype)


def builtin_dtype(a: np.ndarray) -> np.ndarray:
    """The same memory under NumPy's own dtype object for its kind and size. The
    binding matches dtypes by identity, and an equal descriptor (one with metadata,
    made by newbyteorder, or C's long long where int64 is long) is a different
    object. Only for native-order dtypes."""
    canon = _BUILTIN.get(a.dtype)  # equal dtypes hash alike: one lookup, no parsing
    if canon is None:
        # longlong -> int64; bfloat16 is ml_dtypes' one object already (NumPy calls it 'V2')
        builtin = a.dtype if is_bfloat16(a.dtype) else np.dtype(f"{a.dtype.kind}{a.dtype.itemsize}")
        canon = _BUILTIN.setdefault(a.dtype, builtin)
    return a if a.dtype is canon else a.view(canon)


_BUILTIN: dict[np.dtype, np.dtype] = {}


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """Logits as a native-order float32/float64/float16/bfloat16 array (one converting
    copy for a non-native byte order), at least 1-D."""
    x = as_array(logits, name)
    if x.dtype.kind == "f" and x.dtype.itemsize in (2, 4, 8) and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype not in FLOAT_DTYPES and not is_16bit(x.dtype):
        raise TypeError(f"{name}: expected float32, float64, float16 or bfloat16, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected at least 1 dimension (the class axis), got a 0-d array")
    return builtin_dtype(x)


def _is_integer(value: Any) -> bool:
    if type(value) is int:
        return True
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iu"
    return isinstance(value, (int, np.integer))


def _is_real(value: Any) -> bool:
    if type(value) is float:
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iuf"
    return _is_integer(value) or isinstance(value, (float, np.floating))


def check_int(value: Any, name: str) -> int:
    """An int, NumPy integer or 0-d integer array, within int64 (what the kernels compare)."""
    if not _is_integer(value):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    v = operator.index(value)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"{name}: expected a value in the int64 range [{_INT64_MIN}, {_INT64_MAX}], got {v}")
    return v


def normalize_axis(axis: Any, ndim: int) -> int:
    if not _is_integer(axis):
        raise TypeError(f"axis: expected an int, got {describe(axis)}")
    ax = operator.index(axis)
    if not -ndim <= ax < ndim:
        raise ValueError(f"axis: {ax} is out of bounds for logits with {ndim} dimensions")
    return ax % ndim


def check_float(value: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """A real number (Python or NumPy, or a 0-d array) in [lo, hi] (or (lo, hi])."""
    if not _is_real(value):
        raise TypeError(f"{name}: expected a float, got {describe(value)}")
    lo_s = f"({lo}" if lo_open else f"[{lo}"
    try:
        v = float(value)
    except OverflowError:  # a Python int beyond any float
        raise ValueError(f"{name}: expected a value in {lo_s}, {hi}], got an int of {value.bit_length()} bits") from None
    if not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise ValueError(f"{name}: expected a value in {lo_s}, {hi}], got {value!r}")
    return v


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {describe(value)}")
    return bool(value)


def check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str):
        raise TypeError(f"reduction: expected a str ('none', 'sum' or 'mean'), got {describe(reduction)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of 'none', 'sum', 'mean', got {reduction!r}")
    return str(reduction)


def check_backend(backend: Any) -> str | None:
    """None for the default (compiled kernels when importable), else 'cpp' or 'numpy'."""
    if backend is None:
        return None
    if not isinstance(backend, str) or backend not in BACKENDS:
        got = repr(backend) if isinstance(backend, str) else describe(backend)
        raise ValueError(f"backend: expected None, 'auto', 'cpp' or 'numpy', got {got}")
    return None if backend == "auto" else str(backend)


def check_softcap(softcap: Any, dtype: np.dtype) -> float:
    """0.0 for None (off); else a cap that is a positive finite value of the dtype the
    kernels compute in (the logits', float32 for 16-bit logits: they compute
    cap * tanh(x / cap) in it: a cap that rounds to 0 or to inf there would make every
    row NaN)."""
    if softcap is None:
        return 0.0
    dtype = compute_dtype(dtype)
    v = check_float(softcap, "softcap", 0.0, _FLOAT64_MAX, lo_open=True)
    with np.errstate(over="ignore", under="ignore"):  # judged just below
        in_dtype = float(dtype.type(v))
    if not 0.0 < in_dtype < np.inf:
        info = np.finfo(dtype)
        raise ValueError(
            f"softcap: {softcap!r} is not a positive finite {dtype} value (the dtype the loss is computed in); "
            f"expected a value in [{info.smallest_subnormal}, {info.max}]"
        )
    return v


class LossOptions(NamedTuple):
    """The loss options as typed values (see docs/spec.md#options)."""

    reduction: str
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float  # 0.0 = off


def check_options(
    dtype: np.dtype, reduction: Any, ignore_index: Any, label_smoothing: Any, z_loss: Any, softcap: Any
) -> LossOptions:
    if (  # the defaults, as Python values: the same result as the checks below, sooner
        softcap is None and type(reduction) is str and reduction in REDUCTIONS
        and type(ignore_index) is int and _INT64_MIN <= ignore_index <= _INT64_MAX
        and type(label_smoothing) in _PLAIN_NUMBERS and label_smoothing == 0
        and type(z_loss) in _PLAIN_NUMBERS and z_loss == 0
    ):
        return LossOptions(reduction, ignore_index, 0.0, 0.0, 0.0)
    return LossOptions(
        check_reduction(reduction),
        check_int(ignore_index, "ignore_index"),
        check_float(label_smoothing, "label_smoothing", 0.0, 1.0),
        check_float(z_loss, "z_loss", 0.0, _FLOAT64_MAX),
        check_softcap(softcap, dtype),
    )
