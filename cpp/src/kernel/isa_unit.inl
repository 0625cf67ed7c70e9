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

template double run_loss<float>(const Problem<float>&);
template double run_loss<double>(const Problem<double>&);
template void run_rowwise<float>(RowOp, const float*, int64_t, int64_t, int64_t, float*, int64_t);
template void run_rowwise<double>(RowOp, const double*, int64_t, int64_t, int64_t, double*, int64_t);
template double run_loss<bfloat16>(const Problem<bfloat16>&);
template double run_loss<float16>(const Problem<float16>&);
template void run_rowwise<bfloat16>(RowOp, const bfloat16*, int64_t, int64_t, int64_t, bfloat16*, int64_t);
template void run_rowwise<float16>(RowOp, const float16*, int64_t, int64_t, int64_t, float16*, int64_t);
template void run_exp<float>(const float*, float*, int64_t);
template void run_exp<double>(const double*, double*, int64_t);
template void run_floor<float>(const float*, const float*, float*, int64_t, int64_t);
template void run_floor<double>(const double*, const double*, double*, int64_t, int64_t);
}  // namespace fastxent::FASTXENT_ISA_NAMESPACE
