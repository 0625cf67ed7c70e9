// The entry points every ISA variant provides (kernel/entry_points.inl, kernel/floor.inl), declared
// for each variant of FASTXENT_ISA_TABLE; dispatch.cpp picks one per call.
#pragma once
#include <cstdint>

#include "fastxent/fastxent.hpp"

namespace fastxent {

// Whether this build compiled a variant: cpp/CMakeLists.txt adds the x86 units
// (and defines FASTXENT_HAVE_X86_VARIANTS) on x86-64 only.
constexpr bool isa_built(Isa isa) {
#if defined(FASTXENT_HAVE_X86_VARIANTS)
  (void)isa;
  return true;
#else
  return isa == Isa::generic;
#endif
}

}  // namespace fastxent

#define FASTXENT_DECLARE_ISA_(name)                                                       \
  namespace fastxent::name##_isa {                                                        \
  template <class T> double run_loss(const Problem<T>& p);                                \
  template <class T>                                                                      \
  void run_rowwise(RowOp op, const T* x, int64_t rows, int64_t classes, int64_t xs,       \
                   T* out, int64_t os);                                                   \
  template <class T> void run_exp(const T* x, T* out, int64_t n);                         \
  template <class T> void run_floor(const T* x, const T* y, T* g, int64_t rows, int64_t classes); \
  }
FASTXENT_ISA_TABLE(FASTXENT_DECLARE_ISA_)
#undef FASTXENT_DECLARE_ISA_
