// The single place that asks the CPU what it supports and picks a kernel variant.
// Every list of variants here is generated from FASTXENT_ISA_TABLE (fastxent.hpp).
#include <atomic>
#include <cstdlib>

#include "fastxent/fastxent.hpp"
#include "isa_entry.hpp"

namespace fastxent {
namespace {

#if defined(FASTXENT_HAVE_X86_VARIANTS) && (defined(__GNUC__) || defined(__clang__))
#define FASTXENT_CPU_SUPPORTS(feature) (__builtin_cpu_init(), __builtin_cpu_supports(feature))
#else
#define FASTXENT_CPU_SUPPORTS(feature) false
#endif

// What each variant's compiler flags (cpp/CMakeLists.txt) require of the CPU.
// (No default: a variant added to the table without its requirements here is a
// -Wswitch warning.)
bool cpu_has(Isa isa) {
  if (!isa_built(isa)) return false;
  switch (isa) {
    case Isa::generic: return true;
    case Isa::avx2:
      return FASTXENT_CPU_SUPPORTS("avx2") && FASTXENT_CPU_SUPPORTS("fma") && FASTXENT_CPU_SUPPORTS("f16c");
    case Isa::avx512:
      return FASTXENT_CPU_SUPPORTS("avx512f") && FASTXENT_CPU_SUPPORTS("avx512dq") && FASTXENT_CPU_SUPPORTS("avx512bw") &&
             FASTXENT_CPU_SUPPORTS("avx512vl") && cpu_has(Isa::avx2);
  }
  return false;
}
#undef FASTXENT_CPU_SUPPORTS

Isa initial_isa() {
  Isa isa;
  const char* env = std::getenv("FASTXENT_SIMD");
  if (env && isa_from_name(env, &isa) && cpu_has(isa)) return isa;
  return best_supported_isa();
}

std::atomic<int> g_isa{-1};

// One variant's entry points (isa_entry.hpp).
template <class T>
struct Entries {
  double (*loss)(const Problem<T>&);
  void (*rowwise)(RowOp, const T*, int64_t, int64_t, int64_t, T*, int64_t);
  void (*exp)(const T*, T*, int64_t);  // nullptr for the 16-bit types
  void (*floor)(const T*, const T*, T*, int64_t, int64_t);  // nullptr for the 16-bit types
};

template <class T>
Entries<T> entries(Isa isa) {
  switch (isa) {
#define FASTXENT_ENTRIES_CASE_(name)                                                               \
  case Isa::name:                                                                                  \
    if constexpr (isa_built(Isa::name)) {                                                          \
      if constexpr (is_16bit_v<T>) return {&name##_isa::run_loss<T>, &name##_isa::run_rowwise<T>, nullptr, nullptr}; \
      else return {&name##_isa::run_loss<T>, &name##_isa::run_rowwise<T>, &name##_isa::run_exp<T>,        \
                   &name##_isa::run_floor<T>};                                                     \
    }                                                                                              \
    break;
    FASTXENT_ISA_TABLE(FASTXENT_ENTRIES_CASE_)
#undef FASTXENT_ENTRIES_CASE_
  }
  // A variant this build lacks is never active (cpu_has is false for it).
  if constexpr (is_16bit_v<T>) return {&generic_isa::run_loss<T>, &generic_isa::run_rowwise<T>, nullptr, nullptr};
  else return {&generic_isa::run_loss<T>, &generic_isa::run_rowwise<T>, &generic_isa::run_exp<T>, &generic_isa::run_floor<T>};
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
#define FASTXENT_NAME_CASE_(name) \
  case Isa::name: return #name;
    FASTXENT_ISA_TABLE(FASTXENT_NAME_CASE_)
#undef FASTXENT_NAME_CASE_
  }
  return "unknown";
}

bool isa_from_name(const std::string& name, Isa* isa) {
  for (Isa candidate : all_isas())
    if (name == isa_name(candidate)) {
      *isa = candidate;
      return true;
    }
  return false;
}

bool isa_supported(Isa isa) { return cpu_has(isa); }

Isa best_supported_isa() {
  Isa best = Isa::generic;
  for (Isa isa : all_isas())  // table order: the fastest last
    if (cpu_has(isa)) best = isa;
  return best;
}

Isa active_isa() {
  int v = g_isa.load();
  if (v < 0) {
    v = static_cast<int>(initial_isa());
    g_isa.store(v);
  }
  return static_cast<Isa>(v);
}

bool set_active_isa(Isa isa) {
  if (!cpu_has(isa)) return false;
  g_isa.store(static_cast<int>(isa));
  return true;
}

template <class T>
double softmax_cross_entropy(const Problem<T>& p) {
  return entries<T>(active_isa()).loss(p);
}

template <class T>
void rowwise(RowOp op, const T* x, int64_t rows, int64_t classes, int64_t xs, T* out, int64_t os) {
  entries<T>(active_isa()).rowwise(op, x, rows, classes, xs, out, os);
}

template <class T>
void vector_exp(Isa isa, const T* x, T* out, int64_t n) {
  entries<T>(isa).exp(x, out, n);
}

template <class T>
void memory_floor(const T* x, const T* y, T* g, int64_t rows, int64_t classes) {
  entries<T>(active_isa()).floor(x, y, g, rows, classes);
}

template double softmax_cross_entropy<float>(const Problem<float>&);
template double softmax_cross_entropy<double>(const Problem<double>&);
template void rowwise<float>(RowOp, const float*, int64_t, int64_t, int64_t, float*, int64_t);
template void rowwise<double>(RowOp, const double*, int64_t, int64_t, int64_t, double*, int64_t);
template double softmax_cross_entropy<bfloat16>(const Problem<bfloat16>&);
template double softmax_cross_entropy<float16>(const Problem<float16>&);
template void rowwise<bfloat16>(RowOp, const bfloat16*, int64_t, int64_t, int64_t, bfloat16*, int64_t);
template void rowwise<float16>(RowOp, const float16*, int64_t, int64_t, int64_t, float16*, int64_t);
template void vector_exp<float>(Isa, const float*, float*, int64_t);
template void vector_exp<double>(Isa, const double*, double*, int64_t);
template void memory_floor<float>(const float*, const float*, float*, int64_t, int64_t);
template void memory_floor<double>(const double*, const double*, double*, int64_t, int64_t);

}  // namespace fastxent
