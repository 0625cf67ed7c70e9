// A persistent pool of worker threads (created on first use, never per call).
#pragma once
#include <cstdint>

namespace fastxent::detail {

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

// Calls fn(ctx, b, e) over disjoint ranges covering [0, ntasks), on up to
// num_threads() threads including the caller. Callers make every task write its
// own outputs, so which thread runs a task never changes a result. If another
// call holds the pool (Python threads calling at once), this one runs on the
// calling thread alone rather than waiting.
void parallel_for(int64_t ntasks, RangeFn fn, void* ctx);

template <class F>
void parallel_for(int64_t ntasks, F& body) {
  parallel_for(ntasks, [](void* c, int64_t b, int64_t e) { (*static_cast<F*>(c))(b, e); }, &body);
}

}  // namespace fastxent::detail
