"""fastxent: fused softmax cross-entropy (loss and gradient in one sweep) for the CPU.

    import fastxent as fx
    loss, grad = fx.softmax_cross_entropy(logits, targets)   # grad = softmax * sum(y) - y
"""

from ._backend import backend_info, set_num_threads, set_simd
from ._version import __version__
from .api import log_softmax, logsumexp, softmax, softmax_cross_entropy
from .linear import linear_cross_entropy
from .sparse import SparseTargets
from .vocab_shards import (
    combine_vocab_shard_statistics,
    loss_from_row_statistics,
    row_statistics_from_sums,
    vocab_shard_gradient,
    vocab_shard_partial_sums,
    vocab_shard_statistics,
)

__all__ = [
    "SparseTargets",
    "__version__",
    "backend_info",
    "combine_vocab_shard_statistics",
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "loss_from_row_statistics",
    "row_statistics_from_sums",
    "set_num_threads",
    "set_simd",
    "softmax",
    "softmax_cross_entropy",
    "vocab_shard_gradient",
    "vocab_shard_partial_sums",
    "vocab_shard_statistics",
]
