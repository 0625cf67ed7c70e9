// XLA FFI handlers: the kernels called by XLA on the buffers it owns, with no copy
// and no Python (docs/spec.md#jax). fastxent.jax registers them with
// jax.ffi.register_ffi_target and calls them through jax.ffi.ffi_call.
//
// Each handler reads XLA's buffers into the same fastxent::Problem<T> record the
// Python binding fills, and checks what the kernels trust (shapes, dtypes, class
// indices in range) first: a bad call returns an error to XLA, never a bad read.
// The class axis is the last one; every leading dimension is a row.
//
// Built only when the XLA FFI headers (jaxlib's include directory) are found at
// build time; xla_ffi.hpp is all the rest of the extension sees.
#include "xla_ffi.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fastxent/fastxent.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Dims = ffi::AnyBuffer::Dimensions;

std::string shape_string(Dims d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

bool same_dims(Dims a, Dims b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// The logits' leading dimensions (the rows) and a buffer's dims equal to them plus `extra`.
bool dims_are_rows_plus(Dims logits, Dims d, int64_t extra) {
  const size_t lead = logits.size() - 1;
  if (d.size() != lead + (extra ? 1 : 0)) return false;
  for (size_t i = 0; i < lead; ++i)
    if (d[i] != logits[i]) return false;
  return !extra || d[lead] == extra;
}

struct Options {
  int64_t ignore_index;
  double label_smoothing, z_loss, softcap;
  // Vocabulary shards (docs/spec.md#vocabulary-shards): 0 = not a shard. The shard's
  // first global class comes as an operand (it is traced under shard_map).
  int64_t total_classes;
};

// The shard's first global class: a scalar int32/int64 operand (under vmap the same
// value repeated per batch element); an error message, or "".
std::string read_class_offset(ffi::AnyBuffer offset, const Options& o, int64_t k, int64_t* out) {
  const ffi::DataType t = offset.element_type();
  const int64_t count = int64_t(offset.element_count());
  if (count < 1 || (t != ffi::DataType::S32 && t != ffi::DataType::S64))
    return "vocab_start: expected one int32/int64 value";
  auto at = [&](int64_t i) {
    return t == ffi::DataType::S32 ? int64_t(static_cast<const int32_t*>(offset.untyped_data())[i])
                                   : static_cast<const int64_t*>(offset.untyped_data())[i];
  };
  *out = at(0);
  for (int64_t i = 1; i < count; ++i)
    if (at(i) != *out) return "vocab_start: expected one value for every row of the call";
  if (o.total_classes == 0 ? *out != 0 : (*out < 0 || *out + k > o.total_classes))
    return "vocab_start: " + std::to_string(*out) + " puts this shard's " + std::to_string(k) +
           " classes outside the " + std::to_string(o.total_classes) + " classes";
  return "";
}

// Fills the inputs of p from XLA's logits and targets; an error message, or "".
template <class T>
std::string read_inputs(ffi::AnyBuffer logits, ffi::AnyBuffer targets, ffi::AnyBuffer class_offset, const Options& o,
                        fastxent::Problem<T>& p) {
  const Dims xd = logits.dimensions();
  if (xd.size() < 1 || xd.back() < 1) return "logits: expected at least one dimension and one class, got shape " + shape_string(xd);
  const int64_t k = xd.back();
  int64_t n = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) n *= xd[i];
  p.rows = n;
  p.classes = k;
  p.logits = static_cast<const T*>(logits.untyped_data());
  p.logits_row_stride = k;
  p.ignore_index = o.ignore_index;
  p.label_smoothing = o.label_smoothing;
  p.z_loss = o.z_loss;
  p.softcap = o.softcap;
  p.reduction = fastxent::Reduction::none;
  p.total_classes = o.total_classes;
  if (std::string e = read_class_offset(class_offset, o, k, &p.class_offset); !e.empty()) return e;
  const int64_t label_range = o.total_classes > 0 ? o.total_classes : k;  // labels are global in a shard
  const ffi::DataType ty = targets.element_type();
  const bool f32_targets = fastxent::is_16bit_v<T> && ty == ffi::DataType::F32;  // 16-bit logits, float32 labels
  if (ty == logits.element_type() || f32_targets) {
    if (!same_dims(targets.dimensions(), xd))
      return "labels: expected the logits' shape " + shape_string(xd) + ", got " + shape_string(targets.dimensions());
    p.target_kind = fastxent::TargetKind::dense;
    if (f32_targets) p.dense_targets_f32 = static_cast<const float*>(targets.untyped_data());
    else p.dense_targets = static_cast<const T*>(targets.untyped_data());
    p.targets_row_stride = k;
    return "";
  }
  if (ty != ffi::DataType::S32 && ty != ffi::DataType::S64) return "labels: expected the logits' float dtype or int32/int64 class indices";
  if (!dims_are_rows_plus(xd, targets.dimensions(), 0))
    return "labels: expected class indices of shape " + shape_string(xd.first(xd.size() - 1)) + ", got " +
           shape_string(targets.dimensions());
  // The kernels trust class indices: check them here, where they are concrete.
  auto check = [&](const auto* idx) -> std::string {
    for (int64_t i = 0; i < n; ++i)
      if (idx[i] != o.ignore_index && (idx[i] < 0 || idx[i] >= label_range))
        return "labels: class index " + std::to_string(int64_t(idx[i])) + " is out of range for " +
               std::to_string(label_range) + " classes";
    return "";
  };
  if (ty == ffi::DataType::S32) {
    p.target_kind = fastxent::TargetKind::index32;
    p.index32 = static_cast<const int32_t*>(targets.untyped_data());
    return check(p.index32);
  }
  p.target_kind = fastxent::TargetKind::index64;
  p.index64 = static_cast<const int64_t*>(targets.untyped_data());
  return check(p.index64);
}

// XLA's CPU runtime maps a large result buffer fresh for every call, and the first
// write to each 4 KiB page then costs a page fault: for a 2048 x 32000 float32
// gradient that is 64000 faults, more time than the kernel itself on this project's
// machines (measured: XLA's own `x + 1` at that size takes 240 ms, fastxent's kernel
// 97 ms into a reused buffer). Asking for transparent huge pages on the untouched
// buffer, as NumPy does for its own large arrays, makes that 125 faults. A hint
// only: where the kernel refuses it, nothing changes.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// The dtype of the per-row results and inputs (losses, statistics, cotangent):
// float32 for 16-bit logits, the logits' own otherwise.
ffi::DataType compute_type(ffi::AnyBuffer logits) {
  const ffi::DataType t = logits.element_type();
  return t == ffi::DataType::BF16 || t == ffi::DataType::F16 ? ffi::DataType::F32 : t;
}

ffi::Error invalid(const std::string& what) { return ffi::Error::InvalidArgument("fastxent: " + what); }

// Forward: per-row losses and statistics (docs/spec.md#row-statistics); no N x K write.
template <class T>
ffi::Error loss_stats(ffi::AnyBuffer logits, ffi::AnyBuffer targets, ffi::AnyBuffer class_offset, const Options& o,
                      ffi::AnyBuffer row_loss, ffi::AnyBuffer stats) {
  fastxent::Problem<T> p;
  if (std::string e = read_inputs(logits, targets, class_offset, o, p); !e.empty()) return invalid(e);
  const Dims xd = logits.dimensions();
  using C = fastxent::compute_t<T>;
  if (row_loss.element_type() != compute_type(logits) || !dims_are_rows_plus(xd, row_loss.dimensions(), 0) ||
      stats.element_type() != compute_type(logits) || !dims_are_rows_plus(xd, stats.dimensions(), fastxent::kRowStatsWidth))
    return invalid("internal: unexpected result shapes");
  p.row_loss = static_cast<C*>(row_loss.untyped_data());
  p.row_stats = static_cast<C*>(stats.untyped_data());
  fastxent::softmax_cross_entropy(p);
  return ffi::Error::Success();
}

// Backward: cotangent_i x d loss_i / d logits, from the forward's statistics: one
// read of the logits, one write.
template <class T>
ffi::Error grad_from_stats(ffi::AnyBuffer logits, ffi::AnyBuffer targets, ffi::AnyBuffer class_offset,
                           ffi::AnyBuffer stats, ffi::AnyBuffer cotangent, const Options& o, ffi::AnyBuffer grad) {
  fastxent::Problem<T> p;
  if (std::string e = read_inputs(logits, targets, class_offset, o, p); !e.empty()) return invalid(e);
  const Dims xd = logits.dimensions();
  using C = fastxent::compute_t<T>;
  if (stats.element_type() != compute_type(logits) || !dims_are_rows_plus(xd, stats.dimensions(), fastxent::kRowStatsWidth) ||
      cotangent.element_type() != compute_type(logits) || !dims_are_rows_plus(xd, cotangent.dimensions(), 0) ||
      grad.element_type() != logits.element_type() || !same_dims(grad.dimensions(), xd))
    return invalid("internal: unexpected statistics, cotangent or gradient shapes");
  advise_huge_pages(grad.untyped_data(), grad.size_bytes());
  p.given_stats = static_cast<const C*>(stats.untyped_data());
  p.row_grad_scale = static_cast<const C*>(cotangent.untyped_data());
  p.grad = static_cast<T*>(grad.untyped_data());
  p.grad_row_stride = p.classes;
  fastxent::softmax_cross_entropy(p);
  return ffi::Error::Success();
}

// Runs f<S> by the logits' storage dtype (the 16-bit types compute in float32).
template <class F>
ffi::Error by_dtype(ffi::AnyBuffer logits, F&& f) {
  switch (logits.element_type()) {
    case ffi::DataType::F32: return f(float{});
    case ffi::DataType::F64: return f(double{});
    case ffi::DataType::BF16: return f(fastxent::bfloat16{});
    case ffi::DataType::F16: return f(fastxent::float16{});
    default: return invalid("logits: expected float32, float64, bfloat16 or float16");
  }
}

ffi::Error LossStatsImpl(ffi::AnyBuffer logits, ffi::AnyBuffer targets, ffi::AnyBuffer class_offset,
                         ffi::Result<ffi::AnyBuffer> row_loss, ffi::Result<ffi::AnyBuffer> stats, int64_t ignore_index,
                         double label_smoothing, double z_loss, double softcap, int64_t total_classes) {
  const Options o{ignore_index, label_smoothing, z_loss, softcap, total_classes};
  return by_dtype(logits, [&](auto t) {
    return loss_stats<decltype(t)>(logits, targets, class_offset, o, *row_loss, *stats);
  });
}

ffi::Error GradImpl(ffi::AnyBuffer logits, ffi::AnyBuffer targets, ffi::AnyBuffer class_offset, ffi::AnyBuffer stats,
                    ffi::AnyBuffer cotangent, ffi::Result<ffi::AnyBuffer> grad, int64_t ignore_index,
                    double label_smoothing, double z_loss, double softcap, int64_t total_classes) {
  const Options o{ignore_index, label_smoothing, z_loss, softcap, total_classes};
  return by_dtype(logits, [&](auto t) {
    return grad_from_stats<decltype(t)>(logits, targets, class_offset, stats, cotangent, o, *grad);
  });
}

}  // namespace

#define FASTXENT_OPTION_ATTRS_                                                                    \
  .Attr<int64_t>("ignore_index").Attr<double>("label_smoothing").Attr<double>("z_loss").Attr<double>("softcap") \
  .Attr<int64_t>("total_classes")

XLA_FFI_DEFINE_HANDLER_SYMBOL(fastxent_xla_loss_stats, LossStatsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // logits
                                  .Arg<ffi::AnyBuffer>()  // labels
                                  .Arg<ffi::AnyBuffer>()  // class_offset (vocab_start)
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() FASTXENT_OPTION_ATTRS_);

XLA_FFI_DEFINE_HANDLER_SYMBOL(fastxent_xla_grad_from_stats, GradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // logits
                                  .Arg<ffi::AnyBuffer>()  // labels
                                  .Arg<ffi::AnyBuffer>()  // class_offset (vocab_start)
                                  .Arg<ffi::AnyBuffer>()  // statistics
                                  .Arg<ffi::AnyBuffer>()  // cotangent
                                  .Ret<ffi::AnyBuffer>() FASTXENT_OPTION_ATTRS_);

namespace fastxent_xla {

const std::vector<Target>& targets() {
  static const std::vector<Target> all = {
      {"fastxent_loss_stats", reinterpret_cast<void*>(&fastxent_xla_loss_stats)},
      {"fastxent_grad_from_stats", reinterpret_cast<void*>(&fastxent_xla_grad_from_stats)},
  };
  return all;
}

}  // namespace fastxent_xla
