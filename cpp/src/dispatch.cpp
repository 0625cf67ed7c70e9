// The single place that asks the CPU what it supports and picks a kernel variant.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "fastxent/fastxent.hpp"
#include "isa_entry.hpp"

namespace fastxent {
namespace {

bool cpu_has(Isa isa) {
  if (isa == Isa::generic) return true;
#if defined(FASTXENT_HAVE_X86_VARIANTS) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (isa == Isa::avx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == Isa::avx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return false;
}

Isa initial_isa() {
  if (const char* env = std::getenv("FASTXENT_SIMD")) {
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512})
      if (std::strcmp(env, isa_name(isa)) == 0 && cpu_has(isa)) return isa;
  }
  return best_supported_isa();
}

std::atomic<int> g_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    default: return "generic";
  }
}

bool isa_supported(Isa isa) { return cpu_has(isa); }

Isa best_supported_isa() {
  if (cpu_has(Isa::avx512)) return Isa::avx512;
  if (cpu_has(Isa::avx2)) return Isa::avx2;
  return Isa::generic;
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

#if defined(FASTXENT_HAVE_X86_VARIANTS)
#define FASTXENT_DISPATCH(fn, ...)                                     \
  switch (active_isa()) {                                              \
    case Isa::avx512: return avx512_isa::fn(__VA_ARGS__);              \
    case Isa::avx2: return avx2_isa::fn(__VA_ARGS__);                  \
    default: return generic_isa::fn(__VA_ARGS__);                      \
  }
#else
#define FASTXENT_DISPATCH(fn, ...) return generic_isa::fn(__VA_ARGS__);
#endif

template <class T>
double softmax_cross_entropy(const Problem<T>& p) {
  FASTXENT_DISPATCH(run_loss<T>, p)
}

template <class T>
void rowwise(RowOp op, const T* x, int64_t rows, int64_t classes, int64_t xs, T* out, int64_t os) {
  FASTXENT_DISPATCH(run_rowwise<T>, op, x, rows, classes, xs, out, os)
}

template <class T>
void vector_exp(Isa isa, const T* x, T* out, int64_t n) {
  switch (isa) {
#if defined(FASTXENT_HAVE_X86_VARIANTS)
    case Isa::avx512: return avx512_isa::run_exp<T>(x, out, n);
    case Isa::avx2: return avx2_isa::run_exp<T>(x, out, n);
#endif
    default: return generic_isa::run_exp<T>(x, out, n);
  }
}

template double softmax_cross_entropy<float>(const Problem<float>&);
template double softmax_cross_entropy<double>(const Problem<double>&);
template void rowwise<float>(RowOp, const float*, int64_t, int64_t, int64_t, float*, int64_t);
template void rowwise<double>(RowOp, const double*, int64_t, int64_t, int64_t, double*, int64_t);
template void vector_exp<float>(Isa, const float*, float*, int64_t);
template void vector_exp<double>(Isa, const double*, double*, int64_t);

}  // namespace fastxent
