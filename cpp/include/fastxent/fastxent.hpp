// fastxent: fused softmax cross-entropy (loss + gradient in one sweep) for the CPU.
//
// Plain C++17, no Python. The Python layer checks every argument before calling in;
// the kernels TRUST their inputs as documented on each field below.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace fastxent {

// ---- 16-bit storage types ----------------------------------------------------
// bfloat16 (the upper half of an IEEE float32) and float16 (IEEE binary16): the
// bits of one value, trivially copyable, layout-compatible with ml_dtypes.bfloat16,
// numpy.float16, torch.bfloat16 / torch.float16 elements. The kernels widen them to
// float32, compute in float32 (block combine in double) and round results back to
// nearest even (NaN stays NaN, made quiet; overflow gives +-inf).
struct bfloat16 { uint16_t bits; };
struct float16 { uint16_t bits; };

// The type the kernels compute in for storage type T: float for the 16-bit types.
template <class T> struct compute_type { using type = T; };
template <> struct compute_type<bfloat16> { using type = float; };
template <> struct compute_type<float16> { using type = float; };
template <class T> using compute_t = typename compute_type<T>::type;
template <class T>
inline constexpr bool is_16bit_v = std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

inline float to_float(bfloat16 h) {
  const uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_float(float16 h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1Fu, m = h.bits & 0x3FFu;
  uint32_t u;
  if (e == 0x1F) u = sign | 0x7F800000u | (m << 13);  // inf / NaN (payload kept)
  else if (e != 0) u = sign | ((e + 112) << 23) | (m << 13);
  else if (m == 0) u = sign;
  else {  // subnormal: m * 2^-24, normalised
    int shift = 0;
    uint32_t mm = m;
    while (!(mm & 0x400u)) { mm <<= 1; ++shift; }
    u = sign | (uint32_t(113 - shift) << 23) | ((mm & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even; NaN stays NaN (quiet bit set); subnormals kept.
inline bfloat16 to_bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return {uint16_t((u >> 16) | 0x40u)};
  return {uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}
inline float16 to_float16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return {uint16_t(sign | 0x7E00u | ((a >> 13) & 0x3FFu))};  // NaN, quiet
  if (a >= 0x477FF000u) return {uint16_t(sign | 0x7C00u)};  // rounds to >= 65520: inf
  if (a >= 0x38800000u) {  // normal result (>= 2^-14)
    const uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);  // round the 13 dropped bits to even
    return {uint16_t(sign | ((r - 0x38000000u) >> 13))};
  }
  if (a < 0x33000000u) return {sign};  // below half the smallest subnormal (2^-25): 0
  // Subnormal result: value = m * 2^-24; shift the full mantissa right, round to even.
  const uint32_t e = a >> 23, mant = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14..24
  const uint32_t half = 1u << (shift - 1), rest = mant & ((1u << shift) - 1u);
  uint32_t m = mant >> shift;
  if (rest > half || (rest == half && (m & 1u))) ++m;
  return {uint16_t(sign | m)};
}
// double -> 16 bits through float32 (what the kernels' float32 results go through).
template <class S> inline S from_float(float f);
template <> inline bfloat16 from_float<bfloat16>(float f) { return to_bfloat16(f); }
template <> inline float16 from_float<float16>(float f) { return to_float16(f); }
template <> inline float from_float<float>(float f) { return f; }

enum class Reduction { none, sum, mean };

// Which kind of target a problem carries.
//   dense:   a float row per logits row (soft, multi-hot, any weights).
//   index:   one class index per row (int32 or int64), or ignore_index.
//   sparse:  CSR multi-label rows: classes indices[indptr[i]:indptr[i+1]], value
//            values[k] (1 when values == nullptr). Duplicate classes are summed.
enum class TargetKind { dense, index32, index64, sparse };

// One call's problem: N rows of K classes. For row i with effective targets q:
//   x~ = softcap * tanh(x / softcap) (or x when softcap == 0), lse = logsumexp(x~)
//   loss_i = lse * sum(q) - sum_{q_j != 0} q_j x~_j + z_loss * lse^2
//   grad_i = scale * (dx~/dx) * (softmax(x~) * (sum(q) + 2 z_loss lse) - q)
// where, with a = 1 - label_smoothing, b = label_smoothing / K, w = weight (or 1):
//   dense:          q_j = w_j (a y_j + b)
//   index/sparse:   q_j = b w_j + a w_j v_j on the row's listed classes
// (This is exactly torch.nn.functional.cross_entropy's meaning of weight and
// label_smoothing for both target kinds.)
//
// T is float, double, bfloat16 or float16. For the 16-bit types the kernels compute
// in C = compute_t<T> = float: logits, dense targets and the gradient are in T (dense
// targets may be float32 instead), the small per-class / per-entry inputs (weight,
// sparse values) and the per-row losses are in float32.
template <class T>
struct Problem {
  int64_t rows = 0;     // N >= 0
  int64_t classes = 0;  // K >= 1
  // Logits: element (i, j) at logits[i * logits_row_stride + j]. Trusted: finite
  // strides, buffer covers every element. Values may be anything (NaN, +-inf).
  const T* logits = nullptr;
  int64_t logits_row_stride = 0;

  TargetKind target_kind = TargetKind::dense;
  // dense: element (i, j) at dense_targets[i * targets_row_stride + j].
  const T* dense_targets = nullptr;
  int64_t targets_row_stride = 0;
  // 16-bit T only: dense targets in float32 instead (then dense_targets is nullptr),
  // same layout and stride rule. Ignored for float and double.
  const float* dense_targets_f32 = nullptr;
  // index: class of row i at index32/index64[i * index_stride]; trusted to be in
  // [0, K) or equal to ignore_index.
  const int32_t* index32 = nullptr;
  const int64_t* index64 = nullptr;
  int64_t index_stride = 1;
  // sparse (CSR): indptr has N + 1 non-decreasing entries starting at 0; indices
  // trusted to be in [0, K); values may be nullptr (all ones).
  const int64_t* sparse_indptr = nullptr;
  const int64_t* sparse_indices = nullptr;
  const compute_t<T>* sparse_values = nullptr;

  // Vocabulary shards (docs/spec.md#vocabulary-shards): the K classes here are the
  // global classes [class_offset, class_offset + K) of total_classes in all.
  // Index targets then hold global classes, trusted to be in [0, total_classes) or
  // equal to ignore_index; a row whose class lies in another shard has no entry
  // target here (its label-smoothing part still counts). total_classes is the K of
  // label_smoothing's eps / K; 0 means `classes` (no shard). Dense and sparse
  // targets, weight and the outputs are the shard's own (K columns).
  int64_t class_offset = 0;
  int64_t total_classes = 0;

  // Options. weight: K contiguous per-class weights, or nullptr.
  const compute_t<T>* weight = nullptr;
  int64_t ignore_index = -100;  // index targets only
  double label_smoothing = 0.0; // in [0, 1]
  double z_loss = 0.0;
  double softcap = 0.0;         // 0 = off; otherwise > 0
  Reduction reduction = Reduction::mean;

  // Outputs. row_loss: N contiguous values, always written (per-row losses,
  // unreduced, 0 for ignored rows). grad: nullptr for loss only; may equal logits
  // (in place) when the strides are equal, but must not otherwise overlap inputs.
  compute_t<T>* row_loss = nullptr;  // float32 for 16-bit T
  T* grad = nullptr;
  int64_t grad_row_stride = 0;

  // Per-row multiplier of the gradient on top of the reduction's (a cotangent:
  // the backward pass of a framework), row_grad_scale[i * stride], or nullptr for 1.
  const compute_t<T>* row_grad_scale = nullptr;
  int64_t row_grad_scale_stride = 1;

  // Row statistics (docs/spec.md#row-statistics), kRowStatsWidth values per row in
  // the compute type (float32 for 16-bit T):
  //   [M, log S, Q, D] with M the row max of x~, S = sum_j exp(x~_j - M),
  //   Q = sum_j q_j and D = sum_j q_j (x~_j - M), so that
  //   loss = Q log S - D + z_loss (M + log S)^2.
  // A row with a NaN or +inf logit (or no finite target mass) has [0, NaN, NaN, NaN];
  // a row whose logits are all -inf (an empty part of a vocabulary shard) has
  // [-inf, -inf, Q, D] with D taken relative to 0; an ignored row all zeros.
  // row_stats: when non-null, written for every row beside row_loss (N x 4, contiguous).
  compute_t<T>* row_stats = nullptr;
  // given_stats: when non-null, the call computes the gradient only (grad must be
  // set; row_loss is not written, the return value is 0), from these statistics
  // instead of a statistics pass: one read of the logits and one write of the
  // gradient, the backward pass of a forward that kept only the statistics. M,
  // log S and Q are read (D is not needed). Statistics of the same logits,
  // targets and options give the fused call's gradient to within rounding.
  const compute_t<T>* given_stats = nullptr;
};

// Values per row of Problem::row_stats / given_stats.
constexpr int64_t kRowStatsWidth = 4;

// Computes row losses and (optionally) the gradient of the reduced loss.
// Returns the reduced loss ("sum" or "mean"; for "none" the sum, unused).
// For mean: dense targets divide by N; index targets by the sum of the weights of
// the non-ignored rows' classes (their count without weights), as PyTorch does
// (in a vocabulary shard: of the rows whose class lies in the shard).
template <class T>
double softmax_cross_entropy(const Problem<T>& problem);

// Row-wise log-sum-exp, softmax or log-softmax over rows of K contiguous values;
// out in x's type (16-bit: computed in float32, rounded to nearest even on store).
enum class RowOp { logsumexp, softmax, log_softmax };
template <class T>
void rowwise(RowOp op, const T* x, int64_t rows, int64_t classes, int64_t x_row_stride,
             T* out, int64_t out_row_stride);

// ---- runtime configuration -------------------------------------------------
// The kernel variants, from the most portable to the fastest: X(name) for each.
// This is the one list of them; everything else (the enum, the names, the
// FASTXENT_SIMD choice, the dispatch, all_isas()) is generated from it.
#define FASTXENT_ISA_TABLE(X) X(generic) X(avx2) X(avx512)

#define FASTXENT_ISA_ENUMERATOR_(name) name,
enum class Isa { FASTXENT_ISA_TABLE(FASTXENT_ISA_ENUMERATOR_) };
#undef FASTXENT_ISA_ENUMERATOR_

// Every variant, in table order, supported on this CPU or not (isa_supported
// tells): iterate this rather than naming them.
#define FASTXENT_ISA_ELEMENT_(name) Isa::name,
constexpr auto all_isas() { return std::array{FASTXENT_ISA_TABLE(FASTXENT_ISA_ELEMENT_)}; }
#undef FASTXENT_ISA_ELEMENT_

// "generic", "avx2", "avx512": the enumerator's name, as FASTXENT_SIMD spells it.
const char* isa_name(Isa isa);
// The variant named `name` (as isa_name spells it); false (and *isa unchanged)
// for any other string.
bool isa_from_name(const std::string& name, Isa* isa);
// Best variant this CPU and build support.
Isa best_supported_isa();
bool isa_supported(Isa isa);
// The variant in use: FASTXENT_SIMD if set (generic|avx2|avx512), else the best.
Isa active_isa();
// Forces a variant; returns false (and changes nothing) if unsupported here.
bool set_active_isa(Isa isa);

// Threads: default = FASTXENT_NUM_THREADS if set, else the cores available to
// the process. Results are bitwise identical for every thread count.
int num_threads();
void set_num_threads(int n);

// The vector exp used by the kernels, exposed so its accuracy can be tested.
template <class T>
void vector_exp(Isa isa, const T* x, T* out, int64_t n);

// The memory floor of a call, for benchmarks (not a kernel): g = x + y (y non-null:
// the bytes of dense targets) or g = -x (y == nullptr: class indices) over `rows`
// rows of `classes` contiguous values (row stride = classes), split across
// fastxent's thread pool as the kernel splits the same rows, with the active
// variant's vectors and the kernel's store policy. float and double.
template <class T>
void memory_floor(const T* x, const T* y, T* g, int64_t rows, int64_t classes);

}  // namespace fastxent
