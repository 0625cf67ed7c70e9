// The body of every kernels_<isa>.cpp: compiles the one kernel for that ISA.
// Included at FILE scope (not inside a namespace) after the unit includes its
// vector header (vec_<isa>.hpp, which defines VecFor<T> in fastxent::<isa>_isa)
// and defines FASTXENT_ISA_NAMESPACE as that namespace's name. The fragments below
// are included inside it, in dependency order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastxent/fastxent.hpp"
#include "isa_entry.hpp"
#include "thread_pool.hpp"

namespace fastxent::FASTXENT_ISA_NAMESPACE {
#include "vmath.inl"
#include "row_math.inl"
#include "targets.inl"
#include "schedule.inl"
#include "entry_points.inl"
#include "floor.inl"

// cpp/CMakeLists.txt compiles each ISA's unit once per storage type (the
// FASTXENT_UNIT_<type> macro says which), so that the build's compilers share the
// work evenly; a unit compiled without one instantiates every type.
#if !defined(FASTXENT_UNIT_float) && !defined(FASTXENT_UNIT_double) && !defined(FASTXENT_UNIT_bfloat16) && \
    !defined(FASTXENT_UNIT_float16)
#define FASTXENT_UNIT_float
#define FASTXENT_UNIT_double
#define FASTXENT_UNIT_bfloat16
#define FASTXENT_UNIT_float16
#endif
#define FASTXENT_INSTANTIATE_(S)                                                              \
  template double run_loss<S>(const Problem<S>&);                                             \
  template void run_rowwise<S>(RowOp, const S*, int64_t, int64_t, int64_t, S*, int64_t);
#ifdef FASTXENT_UNIT_float
FASTXENT_INSTANTIATE_(float)
template void run_exp<float>(const float*, float*, int64_t);
template void run_floor<float>(const float*, const float*, float*, int64_t, int64_t);
#endif
#ifdef FASTXENT_UNIT_double
FASTXENT_INSTANTIATE_(double)
template void run_exp<double>(const double*, double*, int64_t);
template void run_floor<double>(const double*, const double*, double*, int64_t, int64_t);
#endif
#ifdef FASTXENT_UNIT_bfloat16
FASTXENT_INSTANTIATE_(bfloat16)
#endif
#ifdef FASTXENT_UNIT_float16
FASTXENT_INSTANTIATE_(float16)
#endif
#undef FASTXENT_INSTANTIATE_
}  // namespace fastxent::FASTXENT_ISA_NAMESPACE
