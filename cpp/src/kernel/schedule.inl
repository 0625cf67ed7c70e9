// Fragment: scheduling. Cuts a call into tasks (whole rows, or the blocks of a
// few huge rows) over the thread pool, and picks streaming stores for gradients
// too large for the cache. The same blocks in the same combine order whatever
// the thread count, hence the same bits.
// Included inside an ISA namespace by kernels_<isa>.cpp (through isa_unit.inl).
// Needs in scope: RowKernel, BlockStats, RowResult, num_blocks (row_math.inl),
// num_threads() and detail::parallel_for (thread_pool.hpp).

// Rows below this many elements in total stay on the calling thread.
constexpr int64_t kMinParallelElements = int64_t(1) << 17;
// Gradients above this many bytes are written with non-temporal stores: they
// cannot stay in cache anyway, and streaming skips reading their lines first.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// 16-bit gradients: rows are written through the same paths, the vector stores round
// (row_math.inl); where entry corrections follow, each touched class is rounded once
// from its T value (entry_values / apply_corrections).
template <class K, class Entries>
void drive(const K& kern, const Entries& entries, typename K::V::value_type* row_loss) {
  using T = typename K::V::value_type;
  using S = typename K::Storage;
  using V = typename K::V;
  const Problem<S>& p = *kern.pr.p;
  const int64_t n = p.rows, k = p.classes, nb = num_blocks(k);
  const bool want_grad = p.grad != nullptr;
  const bool stream = want_grad && n * k * int64_t(sizeof(S)) >= kStreamBytes;
  const int threads = n * k < kMinParallelElements ? 1 : num_threads();

  if (n >= threads || nb == 1) {
    // Whole rows per task.
    auto body = [&](int64_t r0, int64_t r1) {
      thread_local std::vector<BlockStats> stats;
      thread_local std::vector<T> exps;  // one row of exp(x~ - ref): K values, no N x K temporary
      thread_local std::vector<T> corr;
      thread_local std::vector<T> values;  // 16-bit S: see entry_values
      stats.resize(size_t(nb));
      // A soft-capped loss gets the scratch row even without a gradient: block_stats
      // then computes each logit's tanh once, not twice (see max_pass in row_math.inl).
      const bool scratch = want_grad || K::kCapped;
      if (scratch) exps.resize(size_t(k));
      T* e = scratch ? exps.data() : nullptr;
      for (int64_t i = r0; i < r1; ++i) {
        const bool skip = entries.ignored(i);
        if (!skip)
          for (int64_t b = 0; b < nb; ++b) stats[size_t(b)] = kern.block_stats(i, b, e);
        RowResult r = kern.combine(i, stats.data(), nb, entries);
        row_loss[i] = T(r.loss);
        if (p.row_stats) kern.store_stats(i, r);
        if (!want_grad) continue;
        kern.entry_corrections(i, r, entries, corr);
        S* g = kern.grad_row(i);
        if (stream && Entries::kMany) {
          // Finish the row in its scratch (in cache), then stream it out: adding
          // many entries to a streamed row would read each touched line back.
          for (int64_t b = 0; b < nb; ++b) kern.block_grad(i, b, r, stats[size_t(b)], e, e, false);
          kern.apply_corrections(i, r, entries, corr, e, values, e);
          kern.stream_row(e, g);
        } else {
          if constexpr (is_16bit_v<S>) kern.entry_values(i, r, stats.data(), e, entries, values);
          for (int64_t b = 0; b < nb; ++b) kern.block_grad(i, b, r, stats[size_t(b)], e, g, stream);
          kern.apply_corrections(i, r, entries, corr, g, values, e);
        }
      }
      if (stream) V::stream_fence();
    };
    if (threads == 1) body(0, n);
    else detail::parallel_for(n, body);
    return;
  }

  // Few rows, many columns: split each row's blocks across threads. Same block
  // stats, same combine order as above, hence the same bits.
  std::vector<BlockStats> stats(static_cast<size_t>(n * nb));
  std::vector<T> exps(want_grad ? static_cast<size_t>(n * k) : 0);  // n < threads rows
  auto stats_body = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      if (!entries.ignored(t / nb))
        stats[size_t(t)] = kern.block_stats(t / nb, t % nb, want_grad ? exps.data() + (t / nb) * k : nullptr);
  };
  detail::parallel_for(n * nb, stats_body);
  std::vector<RowResult> results(static_cast<size_t>(n));
  std::vector<std::vector<T>> corr(static_cast<size_t>(n)), values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    results[size_t(i)] = kern.combine(i, stats.data() + i * nb, nb, entries);
    row_loss[i] = T(results[size_t(i)].loss);
    if (p.row_stats) kern.store_stats(i, results[size_t(i)]);
    if (want_grad) kern.entry_corrections(i, results[size_t(i)], entries, corr[size_t(i)]);
    if constexpr (is_16bit_v<S>)
      if (want_grad)
        kern.entry_values(i, results[size_t(i)], stats.data() + i * nb, exps.data() + i * k, entries, values[size_t(i)]);
  }
  if (!want_grad) return;
  auto grad_body = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      kern.block_grad(t / nb, t % nb, results[size_t(t / nb)], stats[size_t(t)], exps.data() + (t / nb) * k,
                      kern.grad_row(t / nb), stream);
    if (stream) V::stream_fence();
  };
  detail::parallel_for(n * nb, grad_body);
  for (int64_t i = 0; i < n; ++i)
    kern.apply_corrections(i, results[size_t(i)], entries, corr[size_t(i)], kern.grad_row(i), values[size_t(i)],
                           exps.data() + i * k);
}

// The gradient alone, from given row statistics (Problem::given_stats): no
// statistics pass, one read of the logits and one write. Every element depends
// only on its row's statistics, so any split gives the same bits. A 16-bit row is
// finished in a T scratch row (entry corrections added in T) and rounded once.
template <class K, class Entries>
void drive_given(const K& kern, const Entries& entries) {
  using T = typename K::V::value_type;
  using S = typename K::Storage;
  using V = typename K::V;
  const Problem<S>& p = *kern.pr.p;
  const int64_t n = p.rows, k = p.classes, nb = num_blocks(k);
  // Many entries per row would read streamed lines back: plain stores then.
  const bool stream = !Entries::kMany && n * k * int64_t(sizeof(S)) >= kStreamBytes;
  const int threads = n * k < kMinParallelElements ? 1 : num_threads();
  const std::vector<T> none;

  if (n >= threads || nb == 1 || is_16bit_v<S>) {
    auto body = [&](int64_t r0, int64_t r1) {
      thread_local std::vector<T> corr;
      thread_local std::vector<T> scratch;
      if constexpr (is_16bit_v<S>) scratch.resize(size_t(k));
      for (int64_t i = r0; i < r1; ++i) {
        const RowResult r = kern.result_from_stats(i, entries);
        kern.entry_corrections(i, r, entries, corr);  // before an in-place write replaces the logits
        S* g = kern.grad_row(i);
        if constexpr (is_16bit_v<S>) {
          T* e = scratch.data();
          for (int64_t b = 0; b < nb; ++b) kern.block_grad_given(i, b, r, e, false);
          kern.apply_corrections(i, r, entries, corr, e, none, e);
          kern.stream_row_to(e, g, stream);
        } else {
          for (int64_t b = 0; b < nb; ++b) kern.block_grad_given(i, b, r, g, stream);
          kern.apply_corrections(i, r, entries, corr, g, none, nullptr);
        }
      }
      if (stream) V::stream_fence();
    };
    if (threads == 1) body(0, n);
    else detail::parallel_for(n, body);
    return;
  }

  // Few rows, many columns (float and double): the blocks of each row across threads.
  std::vector<RowResult> results(static_cast<size_t>(n));
  std::vector<std::vector<T>> corr(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    results[size_t(i)] = kern.result_from_stats(i, entries);
    kern.entry_corrections(i, results[size_t(i)], entries, corr[size_t(i)]);
  }
  auto grad_body = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      kern.block_grad_given(t / nb, t % nb, results[size_t(t / nb)], kern.grad_row(t / nb), stream);
    if (stream) V::stream_fence();
  };
  detail::parallel_for(n * nb, grad_body);
  for (int64_t i = 0; i < n; ++i)
    kern.apply_corrections(i, results[size_t(i)], entries, corr[size_t(i)], kern.grad_row(i), none, nullptr);
}
