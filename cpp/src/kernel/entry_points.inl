// Fragment: the entry points isa_entry.hpp declares for every ISA (run_loss,
// run_rowwise, run_exp), and the choice of compile-time kernel variant per call.
// Included inside an ISA namespace by kernels_<isa>.cpp (through isa_unit.inl).
// Needs in scope: row_math.inl, targets.inl, schedule.inl, vmath.inl.

// Picks the compile-time variant for this call's options. Y: the dense targets'
// storage type.
template <class S, bool kDense, bool kSmooth, class Entries, class Y = S>
void dispatch_options(const Params<S>& pr, const Entries& entries, compute_t<S>* row_loss) {
  const bool weight = pr.p->weight != nullptr, softcap = pr.p->softcap > 0;
  auto go = [&](auto w, auto c) {
    RowKernel<S, kDense, kSmooth, decltype(w)::value, decltype(c)::value, Y> kern{pr};
    if (pr.p->given_stats) drive_given(kern, entries);
    else drive(kern, entries, row_loss);
  };
  using F = std::false_type;
  using Tr = std::true_type;
  if (weight && softcap) go(Tr{}, Tr{});
  else if (weight) go(Tr{}, F{});
  else if (softcap) go(F{}, Tr{});
  else go(F{}, F{});
}

template <class S>
double run_loss(const Problem<S>& p) {
  using T = compute_t<S>;
  const int64_t smoothing_classes = p.total_classes > 0 ? p.total_classes : p.classes;
  Params<S> pr{&p, T(1 - p.label_smoothing), T(p.label_smoothing / double(smoothing_classes)),
               T(p.softcap), 1.0};

  // The mean's denominator, known before any gradient is written.
  double denom = double(p.rows);
  auto index_denominator = [&](auto* idx) {
    double total = 0;
    for (int64_t i = 0; i < p.rows; ++i) {
      const int64_t c = idx[i * p.index_stride], local = c - p.class_offset;
      if (c != p.ignore_index && uint64_t(local) < uint64_t(p.classes))
        total += p.weight ? double(p.weight[local]) : 1.0;
    }
    return total;
  };
  if (p.target_kind == TargetKind::index32) denom = index_denominator(p.index32);
  if (p.target_kind == TargetKind::index64) denom = index_denominator(p.index64);
  // A mean over a total weight of 0, or one so small that 1/denom overflows the
  // compute dtype (the gradient pass scales in it), gets NaN in every counted row
  // (docs/spec.md#reductions).
  if (p.reduction == Reduction::mean) pr.scale = std::isfinite(T(1.0 / denom)) ? 1.0 / denom : kNaN;

  const bool smooth = p.label_smoothing > 0;
  switch (p.target_kind) {
    case TargetKind::dense:
      if constexpr (is_16bit_v<S>)
        if (p.dense_targets_f32) {
          dispatch_options<S, true, true, NoEntries<S>, float>(pr, NoEntries<S>{}, p.row_loss);
          break;
        }
      dispatch_options<S, true, true>(pr, NoEntries<S>{}, p.row_loss);
      break;
    case TargetKind::index32: {
      IndexEntries<S, int32_t> e{pr, p.index32, p.index_stride};
      if (smooth) dispatch_options<S, false, true>(pr, e, p.row_loss);
      else dispatch_options<S, false, false>(pr, e, p.row_loss);
      break;
    }
    case TargetKind::index64: {
      IndexEntries<S, int64_t> e{pr, p.index64, p.index_stride};
      if (smooth) dispatch_options<S, false, true>(pr, e, p.row_loss);
      else dispatch_options<S, false, false>(pr, e, p.row_loss);
      break;
    }
    case TargetKind::sparse: {
      SparseEntries<S> e{pr};
      if (smooth) dispatch_options<S, false, true>(pr, e, p.row_loss);
      else dispatch_options<S, false, false>(pr, e, p.row_loss);
      break;
    }
  }
  if (p.given_stats) return 0;  // a gradient only: no loss was computed
  // Fixed order, double accumulator: the same value for every thread count.
  double total = 0;
  for (int64_t i = 0; i < p.rows; ++i) total += double(p.row_loss[i]);
  return p.reduction == Reduction::mean ? total / denom : total;
}

// ---- row-wise logsumexp / softmax / log_softmax --------------------------------
template <class S>
void run_rowwise(RowOp op, const S* x, int64_t rows, int64_t classes, int64_t xs, S* out, int64_t os) {
  using T = compute_t<S>;
  using V = VecFor<T>;
  constexpr int L = V::lanes;
  Problem<S> p;
  p.rows = rows;
  p.classes = classes;
  p.logits = x;
  p.logits_row_stride = xs;
  Params<S> pr{&p, T(1), T(0), T(0), 1.0};
  RowKernel<S, false, false, false, false> kern{pr};
  NoEntries<S> none;
  const int64_t nb = num_blocks(classes);
  const int threads = rows * classes < kMinParallelElements ? 1 : num_threads();
  auto body = [&](int64_t r0, int64_t r1) {
    thread_local std::vector<BlockStats> stats;
    stats.resize(size_t(nb));
    for (int64_t i = r0; i < r1; ++i) {
      for (int64_t b = 0; b < nb; ++b) stats[size_t(b)] = kern.block_stats(i, b, nullptr);
      RowResult r = kern.combine(i, stats.data(), nb, none);  // q = 0: only M and log S matter
      if (op == RowOp::logsumexp) {
        out[i * os] = narrow<S>(r.lse);
        continue;
      }
      const S* xi = x + i * xs;
      S* oi = out + i * os;
      const V shift = V::set1(T(r.shift));
      const V inv_s = V::set1(T(std::exp(-r.log_s)));  // NaN for a row with no softmax
      const V log_s = V::set1(T(r.log_s));
      for (int64_t j = 0; j < classes; j += L) {
        const int64_t n = std::min<int64_t>(L, classes - j);
        V t = (n == L ? V::load(xi + j) : V::load_partial(xi + j, n, T(0))) - shift;
        V o = op == RowOp::softmax ? vexp(t) * inv_s : t - log_s;
        if (n == L) o.store(oi + j);
        else o.store_partial(oi + j, n);
      }
    }
  };
  if (threads == 1) body(0, rows);
  else detail::parallel_for(rows, body);
}

template <class T>
void run_exp(const T* x, T* out, int64_t n) {
  using V = VecFor<T>;
  constexpr int L = V::lanes;
  for (int64_t j = 0; j < n; j += L) {
    const int64_t m = std::min<int64_t>(L, n - j);
    V e = vexp(m == L ? V::load(x + j) : V::load_partial(x + j, m, T(0)));
    if (m == L) e.store(out + j);
    else e.store_partial(out + j, m);
  }
}
