// The one binding file: reads the validated LossProblem record (python/fastxent/
// _problem.py) into fastxent::Problem<T> and turns arrays into pointers and strides.
// Argument checking (shapes, dtypes, ranges) happens in Python before a call
// reaches here; this file re-checks only what it needs to avoid undefined behaviour
// (dtype, dimensions, unit column stride, lengths), and releases the GIL around
// every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#include <sys/mman.h>
#endif

#include "fastxent/fastxent.hpp"
#if defined(FASTXENT_HAVE_XLA_FFI)
#include "xla_ffi.hpp"
#endif

namespace py = pybind11;
using fastxent::Problem;

namespace {

// The 16-bit storage types: NumPy's float16, and ml_dtypes' bfloat16 (JAX's too),
// recognised by name and size: this module never imports ml_dtypes.
bool is_bfloat16_dtype(const py::dtype& d) {
  return d.itemsize() == 2 && d.kind() == 'V' && py::str(d.attr("name")).cast<std::string>() == "bfloat16";
}

template <class T>
bool is_dtype(const py::array& a) {
  if constexpr (std::is_same_v<T, fastxent::bfloat16>) return is_bfloat16_dtype(a.dtype());
  else if constexpr (std::is_same_v<T, fastxent::float16>) return a.dtype().itemsize() == 2 && a.dtype().kind() == 'f';
  else return a.dtype().is(py::dtype::of<T>());
}

// A 2-D array whose rows are contiguous: returns its row stride in elements.
template <class T>
int64_t row_stride(const py::array& a, const char* name) {
  if (a.ndim() != 2 || !is_dtype<T>(a)) throw py::value_error(std::string(name) + ": internal: expected a 2-D array of the expected dtype");
  if (a.shape(1) > 1 && a.strides(1) != static_cast<py::ssize_t>(sizeof(T)))
    throw py::value_error(std::string(name) + ": internal: columns must be contiguous");
  if (a.strides(0) % static_cast<py::ssize_t>(sizeof(T)) != 0)
    throw py::value_error(std::string(name) + ": internal: row stride is not a multiple of the item size");
  return a.strides(0) / static_cast<py::ssize_t>(sizeof(T));
}

template <class T>
T* mutable_data(py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + ": internal: array is read-only");
  return static_cast<T*>(a.mutable_data());
}

fastxent::Reduction parse_reduction(const std::string& r) {
  if (r == "none") return fastxent::Reduction::none;
  if (r == "sum") return fastxent::Reduction::sum;
  if (r == "mean") return fastxent::Reduction::mean;
  throw py::value_error("reduction: internal: unknown reduction " + r);
}

// One field of the LossProblem record (python/fastxent/_problem.py). The names are
// interned once (the GIL guards the map): getattr with a C string would build a
// new str on every call.
py::object field(const py::handle& record, const char* name) {
  static std::unordered_map<const char*, py::handle> interned;  // keys: string literals
  auto it = interned.find(name);
  if (it == interned.end()) it = interned.emplace(name, PyUnicode_InternFromString(name)).first;
  return record.attr(it->second);
}

// An array field, or nullptr-equivalent when the field is None.
py::array array_field(const py::handle& record, const char* name) {
  py::object value = field(record, name);
  if (!py::isinstance<py::array>(value)) throw py::type_error(std::string(name) + ": internal: expected an ndarray");
  return py::reinterpret_borrow<py::array>(value);
}

bool is_none(const py::handle& record, const char* name) { return field(record, name).is_none(); }

// A 1-D contiguous array of n values of type E.
template <class E>
const E* vector_data(const py::array& a, int64_t n, const char* name) {
  if (!is_dtype<E>(a) || a.ndim() != 1 || a.shape(0) != n || !(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": internal: expected " + std::to_string(n) + " contiguous values");
  return static_cast<const E*>(a.data());
}

// Row statistics: (N, kRowStatsWidth) contiguous values of type T.
template <class T>
const T* stats_data(const py::array& a, int64_t rows, const char* name) {
  if (!is_dtype<T>(a) || a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != fastxent::kRowStatsWidth ||
      !(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": internal: expected (N, 4) contiguous values of the compute dtype");
  return static_cast<const T*>(a.data());
}

// Reads the record into Problem<T>: the one place that knows both sides' names.
// For 16-bit T the record's weight, sparse values and row losses are float32 (C),
// its dense targets T or float32.
template <class T>
Problem<T> read_problem(const py::handle& rec, py::array& logits, py::array& row_loss, py::object& grad) {
  using C = fastxent::compute_t<T>;
  Problem<T> p;
  p.rows = logits.shape(0);
  p.classes = logits.shape(1);
  p.logits = static_cast<const T*>(logits.data());
  p.logits_row_stride = row_stride<T>(logits, "logits");
  const std::string kind = field(rec, "target_kind").cast<std::string>();
  if (kind == "dense") {
    py::array y = array_field(rec, "dense_targets");
    p.target_kind = fastxent::TargetKind::dense;
    if (fastxent::is_16bit_v<T> && is_dtype<float>(y)) {
      p.dense_targets_f32 = static_cast<const float*>(y.data());
      p.targets_row_stride = row_stride<float>(y, "dense_targets");
    } else {
      p.dense_targets = static_cast<const T*>(y.data());
      p.targets_row_stride = row_stride<T>(y, "dense_targets");
    }
    if (y.shape(0) != p.rows || y.shape(1) != p.classes) throw py::value_error("dense_targets: internal: shape mismatch");
  } else if (kind == "index") {
    py::array idx = array_field(rec, "class_index");
    if (idx.ndim() != 1 || idx.shape(0) != p.rows) throw py::value_error("class_index: internal: expected N class indices");
    if (is_dtype<int32_t>(idx)) {
      p.target_kind = fastxent::TargetKind::index32;
      p.index32 = static_cast<const int32_t*>(idx.data());
      p.index_stride = idx.strides(0) / 4;
    } else if (is_dtype<int64_t>(idx)) {
      p.target_kind = fastxent::TargetKind::index64;
      p.index64 = static_cast<const int64_t*>(idx.data());
      p.index_stride = idx.strides(0) / 8;
    } else {
      throw py::value_error("class_index: internal: class indices must be int32 or int64");
    }
  } else if (kind == "sparse") {
    py::array indptr = array_field(rec, "sparse_indptr"), indices = array_field(rec, "sparse_indices");
    p.target_kind = fastxent::TargetKind::sparse;
    p.sparse_indptr = vector_data<int64_t>(indptr, p.rows + 1, "sparse_indptr");
    const int64_t nnz = indices.ndim() == 1 ? indices.shape(0) : -1;
    p.sparse_indices = vector_data<int64_t>(indices, nnz, "sparse_indices");
    if (!is_none(rec, "sparse_values")) p.sparse_values = vector_data<C>(array_field(rec, "sparse_values"), nnz, "sparse_values");
  } else {
    throw py::value_error("target_kind: internal: unknown target kind " + kind);
  }
  if (!is_none(rec, "weight")) p.weight = vector_data<C>(array_field(rec, "weight"), p.classes, "weight");
  p.class_offset = field(rec, "class_offset").cast<int64_t>();
  p.total_classes = field(rec, "total_classes").cast<int64_t>();
  p.ignore_index = field(rec, "ignore_index").cast<int64_t>();
  p.label_smoothing = field(rec, "label_smoothing").cast<double>();
  p.z_loss = field(rec, "z_loss").cast<double>();
  p.softcap = field(rec, "softcap").cast<double>();
  p.reduction = parse_reduction(field(rec, "reduction").cast<std::string>());
  vector_data<C>(row_loss, p.rows, "row_loss");
  p.row_loss = mutable_data<C>(row_loss, "row_loss");
  if (!grad.is_none()) {
    py::array g = grad;
    p.grad_row_stride = row_stride<T>(g, "grad");
    if (g.shape(0) != p.rows || g.shape(1) != p.classes) throw py::value_error("grad: internal: shape mismatch");
    p.grad = mutable_data<T>(g, "grad");
  }
  if (!is_none(rec, "row_grad_scale"))
    p.row_grad_scale = vector_data<C>(array_field(rec, "row_grad_scale"), p.rows, "row_grad_scale");
  if (!is_none(rec, "row_stats")) {
    py::array st = array_field(rec, "row_stats");
    p.row_stats = mutable_data<C>(st, "row_stats");
    stats_data<C>(st, p.rows, "row_stats");
  }
  if (!is_none(rec, "given_stats")) {
    p.given_stats = stats_data<C>(array_field(rec, "given_stats"), p.rows, "given_stats");
    if (p.grad == nullptr) throw py::value_error("given_stats: internal: a gradient-only call needs grad");
  }
  return p;
}

template <class T>
double loss_impl(const py::object& record, py::array& logits, py::array& row_loss, py::object& grad) {
  Problem<T> p = read_problem<T>(record, logits, row_loss, grad);
  py::gil_scoped_release release;
  return fastxent::softmax_cross_entropy(p);
}

// Fills the record's row_loss (and grad unless None); returns the reduced loss.
double loss(const py::object& record) {
  // The caller holds the record, and the record every array, while the GIL is released.
  py::array logits = array_field(record, "logits");
  py::array row_loss = array_field(record, "row_loss");
  py::object grad = field(record, "grad");
  if (is_dtype<float>(logits)) return loss_impl<float>(record, logits, row_loss, grad);
  if (is_dtype<double>(logits)) return loss_impl<double>(record, logits, row_loss, grad);
  if (is_dtype<fastxent::bfloat16>(logits)) return loss_impl<fastxent::bfloat16>(record, logits, row_loss, grad);
  if (is_dtype<fastxent::float16>(logits)) return loss_impl<fastxent::float16>(record, logits, row_loss, grad);
  throw py::type_error("logits: internal: expected float32, float64, float16 or bfloat16");
}

template <class T>
void rowwise_impl(fastxent::RowOp op, py::array x, py::array out) {
  const int64_t xs = row_stride<T>(x, "x");
  if (op == fastxent::RowOp::logsumexp) {
    if (!is_dtype<T>(out) || out.ndim() != 1 || out.shape(0) != x.shape(0) || !(out.flags() & py::array::c_style))
      throw py::value_error("out: internal: expected N contiguous values");
    T* o = mutable_data<T>(out, "out");
    py::gil_scoped_release release;
    fastxent::rowwise<T>(op, static_cast<const T*>(x.data()), x.shape(0), x.shape(1), xs, o, 1);
  } else {
    const int64_t os = row_stride<T>(out, "out");
    if (out.shape(0) != x.shape(0) || out.shape(1) != x.shape(1)) throw py::value_error("out: internal: shape mismatch");
    T* o = mutable_data<T>(out, "out");
    py::gil_scoped_release release;
    fastxent::rowwise<T>(op, static_cast<const T*>(x.data()), x.shape(0), x.shape(1), xs, o, os);
  }
}

void rowwise(const std::string& op_name, py::array x, py::array out) {
  fastxent::RowOp op;
  if (op_name == "logsumexp") op = fastxent::RowOp::logsumexp;
  else if (op_name == "softmax") op = fastxent::RowOp::softmax;
  else if (op_name == "log_softmax") op = fastxent::RowOp::log_softmax;
  else throw py::value_error("op: internal: unknown row operation " + op_name);
  if (is_dtype<float>(x)) return rowwise_impl<float>(op, x, out);
  if (is_dtype<double>(x)) return rowwise_impl<double>(op, x, out);
  if (is_dtype<fastxent::bfloat16>(x)) return rowwise_impl<fastxent::bfloat16>(op, x, out);
  if (is_dtype<fastxent::float16>(x)) return rowwise_impl<fastxent::float16>(op, x, out);
  throw py::type_error("x: internal: expected float32, float64, float16 or bfloat16");
}

// A variant this CPU supports, by name (fastxent.set_simd checks the name first).
fastxent::Isa supported_isa(const std::string& name) {
  fastxent::Isa isa;
  if (!fastxent::isa_from_name(name, &isa) || !fastxent::isa_supported(isa))
    throw py::value_error("name: SIMD variant '" + name + "' is not supported here");
  return isa;
}

template <class T>
void exp_impl(fastxent::Isa isa, py::array x, py::array out) {
  if (!(x.flags() & py::array::c_style) || !(out.flags() & py::array::c_style) || !is_dtype<T>(out) ||
      out.size() != x.size())
    throw py::value_error("vector_exp: internal: expected contiguous arrays of equal size and dtype");
  T* o = mutable_data<T>(out, "out");
  py::gil_scoped_release release;
  fastxent::vector_exp<T>(isa, static_cast<const T*>(x.data()), o, x.size());
}

void vector_exp(const std::string& isa_name, py::array x, py::array out) {
  fastxent::Isa isa = supported_isa(isa_name);
  if (is_dtype<float>(x)) return exp_impl<float>(isa, x, out);
  if (is_dtype<double>(x)) return exp_impl<double>(isa, x, out);
  throw py::type_error("x: internal: expected float32 or float64");
}

// The benchmarks' memory floor (fastxent.hpp): g = x + y, or g = -x when y is None,
// over C-contiguous (N, K) arrays of one dtype (float32 or float64).
template <class T>
void floor_impl(const py::array& x, const py::object& y, py::array& g) {
  auto check = [&](const py::array& a, const char* name) {
    if (!is_dtype<T>(a) || a.ndim() != 2 || a.shape(0) != x.shape(0) || a.shape(1) != x.shape(1) ||
        !(a.flags() & py::array::c_style))
      throw py::value_error(std::string(name) + ": internal: expected a C-contiguous array of x's shape and dtype");
  };
  check(x, "x");
  check(g, "g");
  const T* yp = nullptr;
  if (!y.is_none()) {
    py::array ya = y;
    check(ya, "y");
    yp = static_cast<const T*>(ya.data());
  }
  T* gp = mutable_data<T>(g, "g");
  py::gil_scoped_release release;
  fastxent::memory_floor<T>(static_cast<const T*>(x.data()), yp, gp, x.shape(0), x.shape(1));
}

void memory_floor(const py::array& x, const py::object& y, py::array g) {
  if (is_dtype<float>(x)) return floor_impl<float>(x, y, g);
  if (is_dtype<double>(x)) return floor_impl<double>(x, y, g);
  throw py::type_error("x: internal: expected float32 or float64");
}

// ---- gradient memory (docs/spec.md#gradient-memory) -------------------------------
// The gradient arrays fastxent allocates (and only those) of at least kMinCachedBytes
// come from here. A training loop calls the loss with the same shapes every step, and
// the previous step's gradient has usually been freed by then: a fresh N x K array from
// the system costs a page fault and the kernel's zeroing of every page, 40-90% of the
// call at 2048 x 32000 on the project's machines. Blocks are 2 MiB aligned and
// advised as huge pages; when the last array over a block dies (its base is a capsule
// owning the block) the block returns to a bounded cache of freed blocks, and the
// next gradient of a size it fits takes it back, already mapped. A block is only ever
// handed to one live array. The cache never holds more than its limit
// (FASTXENT_GRAD_CACHE_MB at import, 1024 by default; set_grad_cache_limit; 0 turns
// the cache off: every block goes back to the system when its array dies). Blocks are
// reported to tracemalloc in NumPy's domain while an array owns them, as NumPy's own
// allocations are.
namespace gradmem {

constexpr size_t kMinCachedBytes = size_t(1) << 20;  // smaller arrays: NumPy's allocator
constexpr size_t kAlign = size_t(2) << 20;           // a huge page
constexpr unsigned kNumpyTraceDomain = 389047;       // NumPy's tracemalloc domain

struct Block {
  void* ptr;
  size_t bytes;  // capacity, a multiple of kAlign
};

struct Cache {
  std::mutex mutex;
  std::vector<Block> free;  // freed blocks, oldest first
  size_t cached = 0;        // sum of free[i].bytes <= limit
  size_t limit = 0;
  uint64_t hits = 0, misses = 0;
};

// tracemalloc's C API, looked up in the interpreter: Python 3.11's tracemalloc.h
// declares it without extern "C", so a C++ call would link to a mangled name.
struct Tracer {
  int (*track)(unsigned int, uintptr_t, size_t) = nullptr;
  int (*untrack)(unsigned int, uintptr_t) = nullptr;
  Tracer() {
#if defined(__linux__) || defined(__APPLE__)
    track = reinterpret_cast<decltype(track)>(dlsym(RTLD_DEFAULT, "PyTraceMalloc_Track"));
    untrack = reinterpret_cast<decltype(untrack)>(dlsym(RTLD_DEFAULT, "PyTraceMalloc_Untrack"));
#endif
  }
};

const Tracer& tracer() {
  static const Tracer t;
  return t;
}

size_t default_limit() {
  if (const char* env = std::getenv("FASTXENT_GRAD_CACHE_MB")) {
    // Digits only (fastxent._backend warns about anything else), at most 2^40 MiB.
    size_t mb = 0, i = 0;
    for (; env[i] >= '0' && env[i] <= '9' && i < 13; ++i) mb = mb * 10 + size_t(env[i] - '0');
    if (i > 0 && env[i] == '\0') return mb << 20;
  }
  return size_t(1024) << 20;
}

Cache& cache() {
  static Cache* c = [] {
    auto* n = new Cache;  // never destroyed: arrays may outlive module teardown
    n->limit = default_limit();
    return n;
  }();
  return *c;
}

void system_free(Block b) { std::free(b.ptr); }

Block system_alloc(size_t bytes) {
  const size_t cap = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = nullptr;
  if (posix_memalign(&p, kAlign, cap) != 0 || p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, cap, MADV_HUGEPAGE);  // advice only: a kernel without THP ignores it
#endif
  return {p, cap};
}

// Frees cached blocks, oldest first, until at most `keep` bytes remain. Caller holds the lock.
void trim(Cache& c, size_t keep, std::vector<Block>& to_free) {
  size_t i = 0;
  while (c.cached > keep && i < c.free.size()) {
    c.cached -= c.free[i].bytes;
    to_free.push_back(c.free[i++]);
  }
  c.free.erase(c.free.begin(), c.free.begin() + static_cast<std::ptrdiff_t>(i));
}

// A block of at least `bytes`: the smallest cached one that is not much larger
// (at most 1/4 + one huge page over), else a new one.
Block take(size_t bytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    const size_t most = bytes + bytes / 4 + kAlign;
    size_t best = c.free.size();
    for (size_t i = 0; i < c.free.size(); ++i)
      if (c.free[i].bytes >= bytes && c.free[i].bytes <= most &&
          (best == c.free.size() || c.free[i].bytes < c.free[best].bytes))
        best = i;
    if (best != c.free.size()) {
      const Block b = c.free[best];
      c.free.erase(c.free.begin() + static_cast<std::ptrdiff_t>(best));
      c.cached -= b.bytes;
      ++c.hits;
      return b;
    }
    ++c.misses;
  }
  return system_alloc(bytes);
}

// The last array over the block died: cache it (evicting the oldest) or free it.
void give_back(Block b) {
  Cache& c = cache();
  std::vector<Block> to_free;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (b.bytes <= c.limit) {
      trim(c, c.limit - b.bytes, to_free);
      c.free.push_back(b);
      c.cached += b.bytes;
    } else {
      to_free.push_back(b);
    }
  }
  for (const Block& f : to_free) system_free(f);
}

void set_limit(size_t limit) {
  Cache& c = cache();
  std::vector<Block> to_free;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.limit = limit;
    trim(c, limit, to_free);
  }
  for (const Block& f : to_free) system_free(f);
}

}  // namespace gradmem

// A C-contiguous array of `shape` and `dtype` for a gradient: from the block cache
// when it is large (gradmem above), else NumPy's own np.empty.
py::array empty_grad(const std::vector<py::ssize_t>& shape, const py::dtype& dtype) {
  size_t count = 1;
  for (py::ssize_t d : shape) {
    if (d < 0) throw py::value_error("shape: internal: negative dimension");
    count *= size_t(d);
  }
  const size_t bytes = count * size_t(dtype.itemsize());
  if (bytes < gradmem::kMinCachedBytes) return py::array(dtype, shape);
  const gradmem::Block block = gradmem::take(bytes);
  if (gradmem::tracer().track) gradmem::tracer().track(gradmem::kNumpyTraceDomain, reinterpret_cast<uintptr_t>(block.ptr), bytes);
  auto* owned = new gradmem::Block(block);
  py::capsule base(owned, [](void* p) {
    auto* b = static_cast<gradmem::Block*>(p);
    if (gradmem::tracer().untrack) gradmem::tracer().untrack(gradmem::kNumpyTraceDomain, reinterpret_cast<uintptr_t>(b->ptr));
    gradmem::give_back(*b);
    delete b;
  });
  return py::array(dtype, shape, block.ptr, base);
}

py::dict grad_cache_info() {
  gradmem::Cache& c = gradmem::cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  py::dict d;
  d["limit_bytes"] = c.limit;
  d["cached_bytes"] = c.cached;
  d["cached_blocks"] = c.free.size();
  d["hits"] = c.hits;
  d["misses"] = c.misses;
  d["min_bytes"] = gradmem::kMinCachedBytes;
  return d;
}

py::dict info() {
  py::dict d;
  d["simd"] = fastxent::isa_name(fastxent::active_isa());
  d["best_simd"] = fastxent::isa_name(fastxent::best_supported_isa());
  py::list supported, all;
  for (auto isa : fastxent::all_isas()) {
    all.append(fastxent::isa_name(isa));
    if (fastxent::isa_supported(isa)) supported.append(fastxent::isa_name(isa));
  }
  d["supported_simd"] = supported;
  d["all_simd"] = all;  // every variant of this build, supported here or not
  d["num_threads"] = fastxent::num_threads();
#if defined(__clang__)
  d["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = "gcc " __VERSION__;
#endif
  return d;
}

// name -> PyCapsule of the XLA FFI handler, for jax.ffi.register_ffi_target; empty
// when this build has no handlers.
py::dict xla_ffi_targets() {
  py::dict d;
#if defined(FASTXENT_HAVE_XLA_FFI)
  for (const auto& t : fastxent_xla::targets()) d[t.name] = py::capsule(t.handler);
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastxent's compiled kernels. Use the public functions in fastxent instead.";
  m.def("loss", &loss);
  m.def("rowwise", &rowwise);
  m.def("vector_exp", &vector_exp);
  m.def("memory_floor", &memory_floor);
  m.def("empty_grad", &empty_grad);
  m.def("grad_cache_info", &grad_cache_info);
  m.def("set_grad_cache_limit", [](size_t bytes) { gradmem::set_limit(bytes); });
  m.def("info", &info);
  m.def("xla_ffi_targets", &xla_ffi_targets);
  m.def("set_num_threads", [](int n) { fastxent::set_num_threads(n); });
  m.def("set_simd", [](const std::string& name) { fastxent::set_active_isa(supported_isa(name)); });
}
