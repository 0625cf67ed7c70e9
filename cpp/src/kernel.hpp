// The fused softmax cross-entropy kernel, written once over a vector type V.
//
// Each kernels_<isa>.cpp includes this file inside its own namespace with its own
// compiler flags, so every ISA gets a private copy (no ODR mixing of AVX code into
// baseline code) and exposes only the `run_*` entry points at the bottom.
//
// Shape of the computation, per row of K logits:
//   1. stats pass, per block of kBlock columns (stays in L1): block max m_b, then
//      s_b = sum exp(x~ - m_b) and the target sums, all relative to m_b so large
//      common offsets cancel exactly before anything is accumulated;
//   2. combine the blocks IN BLOCK ORDER (in double): M, S, lse, loss;
//   3. gradient pass, per block: g = scale * dx~/dx * (exp(x~ - M) * (Qeff / S) - q).
// Rows are always cut into the same blocks, whether one thread does a row or the
// columns of a few huge rows are split across threads, so the arithmetic (and the
// result, bit for bit) never depends on the thread count.
//
// Requires, before inclusion: V = VecFor<T> template in scope, vmath.hpp contents.

constexpr int64_t kBlock = 2048;  // columns; 8 KiB (float) / 16 KiB (double) fits L1

inline int64_t num_blocks(int64_t k) { return (k + kBlock - 1) / kBlock; }
inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Per (row, block): everything the combine step needs.
struct BlockStats {
  double ref;  // the block's shift: its max when finite, else 0
  double s;    // sum exp(x~ - ref); 0 for an all -inf block, NaN for a +inf/NaN one
  double q;    // sum of the block's dense target mass
  double d;    // sum over q_j != 0 of q_j (x~_j - ref)
  double max;  // the block max itself
};

// Per row: what the gradient pass and the loss need.
struct RowResult {
  double loss;
  double shift;  // M: the row max (0 when the row is NaN)
  double coef;   // (sum q + 2 z lse) / S, NaN for a row with no softmax
  double lse;
  bool ignored;
};

// What varies between target kinds and options, fixed for one call.
template <class T>
struct Params {
  const Problem<T>* p;
  T a, b;          // q = w (a y + b): a = 1 - label_smoothing, b = label_smoothing / K
  T softcap, inv_softcap;
  double scale;    // d(reduced loss) / d(row loss)
};

// Logits after the optional soft cap, and d x~ / d x.
template <bool kSoftcap, class V>
inline V capped(V x, V cap, V inv_cap) {
  if constexpr (kSoftcap) return cap * vtanh(x * inv_cap);
  else return x;
}

template <class T>
inline double scalar_capped(T x, const Params<T>& pr, bool softcap) {
  return softcap ? double(pr.softcap) * std::tanh(double(x) * double(pr.inv_softcap)) : double(x);
}

// kDense: targets are a dense row y. kSmooth: the dense part of q is nonzero
// (dense targets always; entry targets when label_smoothing > 0).
template <class T, bool kDense, bool kSmooth, bool kWeight, bool kSoftcap>
struct RowKernel {
  using V = VecFor<T>;
  static constexpr int L = V::lanes;
  const Params<T>& pr;

  const T* x_row(int64_t i) const { return pr.p->logits + i * pr.p->logits_row_stride; }
  const T* y_row(int64_t i) const { return pr.p->dense_targets + i * pr.p->targets_row_stride; }

  // Loads lanes [0, L) of p, or its first n lanes and `fill` elsewhere (kFull false).
  template <bool kFull>
  static V load_n(const T* p, int64_t n, T fill) {
    if constexpr (kFull) return V::load(p);
    else return V::load_partial(p, n, fill);
  }

  // The dense part of one row's effective target q = w (a y + b), with every input
  // held in locals: the loops store through T pointers, which may alias the Params,
  // so reading through `pr` there would reload them on every step.
  struct DenseQ {
    const T* y;
    const T* w;
    V a, b;
    template <bool kFull>
    V at(int64_t j, int64_t n) const {
      V q;
      if constexpr (kDense) q = fmadd(load_n<kFull>(y + j, n, T(0)), a, b);
      else q = b;
      if constexpr (kWeight) q = q * load_n<kFull>(w + j, n, T(0));
      if constexpr (!kFull) q = select(mask_first(n), q, V::set1(T(0)));  // padding carries no mass
      return q;
    }
  };
  DenseQ dense_q(int64_t i) const {
    return {kDense ? y_row(i) : nullptr, pr.p->weight, V::set1(pr.a), V::set1(pr.b)};
  }

  static typename V::Mask mask_first(int64_t n) {
    // lanes [0, n) set: compare a 0,1,2.. ramp with n
    alignas(64) T ramp[L];
    for (int l = 0; l < L; ++l) ramp[l] = T(l);
    return V::load(ramp) < V::set1(T(n));
  }

  // Stats of one block. When `e` is given (a gradient is wanted) it receives
  // exp(x~_j - ref) for the block's columns, so the gradient pass needs no exp.
  BlockStats block_stats(int64_t i, int64_t blk, T* e) const {
    const T* x = x_row(i);
    const int64_t j0 = blk * kBlock, j1 = std::min(pr.p->classes, j0 + kBlock);
    const V cap = V::set1(pr.softcap), inv_cap = V::set1(pr.inv_softcap);
    const T ninf = -std::numeric_limits<T>::infinity();

    // Two accumulators: the loop is bound by max's latency, not by loads.
    V vmax0 = V::set1(ninf), vmax1 = vmax0;
    int64_t j = j0;
    for (; j + 2 * L <= j1; j += 2 * L) {
      vmax0 = max(capped<kSoftcap>(V::load(x + j), cap, inv_cap), vmax0);
      vmax1 = max(capped<kSoftcap>(V::load(x + j + L), cap, inv_cap), vmax1);
    }
    for (; j < j1; j += L) vmax0 = max(capped<kSoftcap>(V::load_partial(x + j, std::min<int64_t>(L, j1 - j), ninf), cap, inv_cap), vmax0);
    BlockStats st{};
    st.max = double(reduce_max(max(vmax0, vmax1)));

    const bool finite_max = std::isfinite(st.max);
    st.ref = finite_max ? st.max : 0.0;
    const V ref = V::set1(T(st.ref));
    const V zero = V::set1(T(0));
    const DenseQ dq = dense_q(i);
    V s = zero, qs = zero, ds = zero;
    auto step = [&](int64_t j, int64_t n, auto full, auto keep) {
      constexpr bool kFull = decltype(full)::value;
      V t = capped<kSoftcap>(load_n<kFull>(x + j, n, ninf), cap, inv_cap) - ref;
      V ev = vexp_nonpos(t);
      // Padding lanes load -inf, which the soft cap turns into -softcap: drop them.
      if constexpr (kSoftcap && !kFull) ev = select(mask_first(n), ev, zero);
      s = s + ev;
      if constexpr (decltype(keep)::value) {
        if constexpr (kFull) ev.store(e + j);
        else ev.store_partial(e + j, n);
      }
      if constexpr (kSmooth) {
        V q = dq.template at<kFull>(j, n);
        qs = qs + q;
        ds = ds + select(q != zero, q * t, zero);  // a q == 0 term adds nothing, even at -inf
      }
    };
    auto sweep = [&](auto keep) {
      int64_t j = j0;
      for (; j + L <= j1; j += L) step(j, L, std::true_type{}, keep);
      if (j < j1) step(j, j1 - j, std::false_type{}, keep);
    };
    if (e) sweep(std::true_type{});
    else sweep(std::false_type{});
    // +inf in the block: no softmax. All -inf: no contribution, unless a NaN hides
    // there (max() skips NaN, so look).
    st.s = finite_max ? double(reduce_add(s)) : kNaN;
    if (st.max == -kInf) {
      bool has_nan = false;
      for (j = j0; j < j1; ++j) has_nan |= std::isnan(x[j]);
      st.s = has_nan ? kNaN : 0.0;
    }
    if constexpr (kSmooth) {
      st.q = double(reduce_add(qs));
      st.d = double(reduce_add(ds));
    }
    return st;
  }

  // Combines one row's blocks in order, adds its entry targets (index/sparse).
  template <class Entries>
  RowResult combine(int64_t i, const BlockStats* st, int64_t nb, const Entries& entries) const {
    RowResult r{};
    if (entries.ignored(i)) {
      r.ignored = true;
      return r;
    }
    double m = -kInf;
    bool nan = false;
    for (int64_t b = 0; b < nb; ++b) {
      m = std::max(m, st[b].max);
      nan |= std::isnan(st[b].s);
    }
    double s = 0, q = 0, d = 0;
    if (!nan && m != -kInf) {
      for (int64_t b = 0; b < nb; ++b) {
        if (st[b].s != 0) s += st[b].s * std::exp(st[b].ref - m);
        q += st[b].q;
        d += st[b].d + st[b].q * (st[b].ref - m);
      }
    }
    entries.for_each(i, [&](int64_t j, double qj) {
      if (qj == 0) return;
      q += qj;
      d += qj * (scalar_capped(x_row(i)[j], pr, kSoftcap) - m);
    });
    if (nan || m == -kInf || !(s > 0)) {  // no softmax for this row
      r.loss = kNaN;
      r.coef = kNaN;
      r.shift = 0;
      r.lse = kNaN;
      return r;
    }
    const double log_s = std::log(s);
    const double z = pr.p->z_loss;
    r.shift = m;
    r.lse = m + log_s;
    r.loss = q * log_s - d + z * r.lse * r.lse;
    r.coef = (q + 2 * z * r.lse) / s;
    return r;
  }

  T* grad_row(int64_t i) const { return pr.p->grad + i * pr.p->grad_row_stride; }

  // Stores value(j, n, full) to g[j0, j1). `stream`: non-temporal stores from the
  // first aligned address on (the gradient is far larger than the cache).
  template <class F>
  static void store_range(T* g, int64_t j0, int64_t j1, F&& value, bool stream) {
    constexpr std::true_type full{};
    constexpr std::false_type partial{};
    int64_t j = j0;
    if (stream) {
      const uintptr_t misalign = reinterpret_cast<uintptr_t>(g + j0) % V::stream_alignment;
      const int64_t head = std::min(j1 - j0, misalign ? int64_t((V::stream_alignment - misalign) / sizeof(T)) : 0);
      if (misalign % sizeof(T) == 0 && head < L) {
        if (head > 0) value(j, head, partial).store_partial(g + j, head);
        j += head;
        for (; j + L <= j1; j += L) value(j, L, full).stream(g + j);
      }
    }
    for (; j + L <= j1; j += L) value(j, L, full).store(g + j);
    if (j < j1) value(j, j1 - j, partial).store_partial(g + j, j1 - j);
  }

  // g_j = scale * dx~/dx * (e_j * exp(ref - M) * Qeff / S - q_j) for one block, from
  // the block's stored exponentials e, into the row g (which may be e itself).
  void block_grad(int64_t i, int64_t blk, const RowResult& r, const BlockStats& st, const T* e, T* g,
                  bool stream) const {
    const int64_t j0 = blk * kBlock, j1 = std::min(pr.p->classes, j0 + kBlock);
    if (r.ignored) {  // e holds another row's values here
      std::fill(g + j0, g + j1, T(0));
      return;
    }
    double c = 0;  // an all -inf block has e == 0: only -q remains
    if (std::isnan(r.coef)) c = kNaN;
    else if (st.max != -kInf) c = r.coef * pr.scale * std::exp(st.ref - r.shift);
    const V coef = V::set1(T(c));
    const V scale = V::set1(T(pr.scale));
    const V inv_cap = V::set1(pr.inv_softcap);
    const T* x = x_row(i);
    const DenseQ dq = dense_q(i);
    store_range(g, j0, j1, [&](int64_t j, int64_t n, auto full) {
      constexpr bool kFull = decltype(full)::value;
      V gv = load_n<kFull>(e + j, n, T(0)) * coef;
      if constexpr (kSmooth) gv = gv - dq.template at<kFull>(j, n) * scale;
      if constexpr (kSoftcap) {
        V th = vtanh(load_n<kFull>(x + j, n, T(0)) * inv_cap);
        gv = gv * (V::set1(T(1)) - th * th);
      }
      return gv;
    }, stream);
  }

  // Streams a finished row from the scratch e to g.
  void stream_row(const T* e, T* g) const {
    store_range(g, 0, pr.p->classes, [&](int64_t j, int64_t n, auto full) {
      return load_n<decltype(full)::value>(e + j, n, T(0));
    }, true);
  }

  // Entry targets' part of the gradient: -scale * dx~/dx * q_j at listed classes.
  // Computed before the dense gradient is written, since in place the write
  // replaces the logits these corrections read.
  template <class Entries>
  void entry_corrections(int64_t i, const RowResult& r, const Entries& entries, std::vector<T>& out) const {
    out.clear();
    if (r.ignored) return;
    entries.for_each(i, [&](int64_t j, double qj) {
      double c = -pr.scale * qj;
      if constexpr (kSoftcap) {
        double th = std::tanh(double(x_row(i)[j]) * double(pr.inv_softcap));
        c *= 1 - th * th;
      }
      out.push_back(T(c));
    });
  }

  template <class Entries>
  void apply_corrections(int64_t i, const RowResult& r, const Entries& entries, const std::vector<T>& corr,
                         T* g) const {
    if (r.ignored) return;
    size_t k = 0;
    entries.for_each(i, [&](int64_t j, double) { g[j] += corr[k++]; });
  }
};

// Entry targets: a list of (class, q_j) per row beyond the dense part.
template <class T>
struct NoEntries {
  static constexpr bool kMany = false;  // many entries per row (see drive)
  bool ignored(int64_t) const { return false; }
  template <class F> void for_each(int64_t, F&&) const {}
};

template <class T, class I>
struct IndexEntries {
  static constexpr bool kMany = false;
  const Params<T>& pr;
  const I* idx;
  int64_t stride;
  bool ignored(int64_t i) const { return int64_t(idx[i * stride]) == pr.p->ignore_index; }
  template <class F> void for_each(int64_t i, F&& f) const {
    const int64_t c = idx[i * stride];
    const double w = pr.p->weight ? double(pr.p->weight[c]) : 1.0;
    f(c, double(pr.a) * w);
  }
};

template <class T>
struct SparseEntries {
  static constexpr bool kMany = true;
  const Params<T>& pr;
  bool ignored(int64_t) const { return false; }
  template <class F> void for_each(int64_t i, F&& f) const {
    const Problem<T>& p = *pr.p;
    for (int64_t k = p.sparse_indptr[i]; k < p.sparse_indptr[i + 1]; ++k) {
      const int64_t c = p.sparse_indices[k];
      const double v = p.sparse_values ? double(p.sparse_values[k]) : 1.0;
      const double w = p.weight ? double(p.weight[c]) : 1.0;
      f(c, double(pr.a) * w * v);
    }
  }
};

// Rows below this many elements in total stay on the calling thread.
constexpr int64_t kMinParallelElements = int64_t(1) << 17;
// Gradients above this many bytes are written with non-temporal stores: they
// cannot stay in cache anyway, and streaming skips reading their lines first.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

template <class K, class Entries>
void drive(const K& kern, const Entries& entries, typename K::V::value_type* row_loss) {
  using T = typename K::V::value_type;
  using V = typename K::V;
  const Problem<T>& p = *kern.pr.p;
  const int64_t n = p.rows, k = p.classes, nb = num_blocks(k);
  const bool want_grad = p.grad != nullptr;
  const bool stream = want_grad && n * k * int64_t(sizeof(T)) >= kStreamBytes;
  const int threads = n * k < kMinParallelElements ? 1 : num_threads();

  if (n >= threads || nb == 1) {
    // Whole rows per task.
    auto body = [&](int64_t r0, int64_t r1) {
      thread_local std::vector<BlockStats> stats;
      thread_local std::vector<T> exps;  // one row of exp(x~ - ref): K values, no N x K temporary
      thread_local std::vector<T> corr;
      stats.resize(size_t(nb));
      if (want_grad) exps.resize(size_t(k));
      T* e = want_grad ? exps.data() : nullptr;
      for (int64_t i = r0; i < r1; ++i) {
        const bool skip = entries.ignored(i);
        if (!skip)
          for (int64_t b = 0; b < nb; ++b) stats[size_t(b)] = kern.block_stats(i, b, e);
        RowResult r = kern.combine(i, stats.data(), nb, entries);
        row_loss[i] = T(r.loss);
        if (!want_grad) continue;
        kern.entry_corrections(i, r, entries, corr);
        T* g = kern.grad_row(i);
        if (stream && Entries::kMany) {
          // Finish the row in its scratch (in cache), then stream it out: adding
          // many entries to a streamed row would read each touched line back.
          for (int64_t b = 0; b < nb; ++b) kern.block_grad(i, b, r, stats[size_t(b)], e, e, false);
          kern.apply_corrections(i, r, entries, corr, e);
          kern.stream_row(e, g);
        } else {
          for (int64_t b = 0; b < nb; ++b) kern.block_grad(i, b, r, stats[size_t(b)], e, g, stream);
          kern.apply_corrections(i, r, entries, corr, g);
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
  std::vector<std::vector<T>> corr(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    results[size_t(i)] = kern.combine(i, stats.data() + i * nb, nb, entries);
    row_loss[i] = T(results[size_t(i)].loss);
    if (want_grad) kern.entry_corrections(i, results[size_t(i)], entries, corr[size_t(i)]);
  }
  if (!want_grad) return;
  auto grad_body = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      kern.block_grad(t / nb, t % nb, results[size_t(t / nb)], stats[size_t(t)], exps.data() + (t / nb) * k,
                      kern.grad_row(t / nb), stream);
    if (stream) V::stream_fence();
  };
  detail::parallel_for(n * nb, grad_body);
  for (int64_t i = 0; i < n; ++i) kern.apply_corrections(i, results[size_t(i)], entries, corr[size_t(i)], kern.grad_row(i));
}

// Picks the compile-time variant for this call's options.
template <class T, bool kDense, bool kSmooth, class Entries>
void dispatch_options(const Params<T>& pr, const Entries& entries, T* row_loss) {
  const bool weight = pr.p->weight != nullptr, softcap = pr.p->softcap > 0;
  auto go = [&](auto w, auto c) {
    RowKernel<T, kDense, kSmooth, decltype(w)::value, decltype(c)::value> kern{pr};
    drive(kern, entries, row_loss);
  };
  using F = std::false_type;
  using Tr = std::true_type;
  if (weight && softcap) go(Tr{}, Tr{});
  else if (weight) go(Tr{}, F{});
  else if (softcap) go(F{}, Tr{});
  else go(F{}, F{});
}

template <class T>
double run_loss(const Problem<T>& p) {
  Params<T> pr{&p, T(1 - p.label_smoothing), T(p.label_smoothing / double(p.classes)),
               T(p.softcap), p.softcap > 0 ? T(1 / p.softcap) : T(0), 1.0};

  // The mean's denominator, known before any gradient is written.
  double denom = double(p.rows);
  auto index_denominator = [&](auto* idx) {
    double total = 0;
    for (int64_t i = 0; i < p.rows; ++i) {
      const int64_t c = idx[i * p.index_stride];
      if (c != p.ignore_index) total += p.weight ? double(p.weight[c]) : 1.0;
    }
    return total;
  };
  if (p.target_kind == TargetKind::index32) denom = index_denominator(p.index32);
  if (p.target_kind == TargetKind::index64) denom = index_denominator(p.index64);
  if (p.reduction == Reduction::mean) pr.scale = 1.0 / denom;

  const bool smooth = p.label_smoothing > 0;
  switch (p.target_kind) {
    case TargetKind::dense:
      dispatch_options<T, true, true>(pr, NoEntries<T>{}, p.row_loss);
      break;
    case TargetKind::index32: {
      IndexEntries<T, int32_t> e{pr, p.index32, p.index_stride};
      if (smooth) dispatch_options<T, false, true>(pr, e, p.row_loss);
      else dispatch_options<T, false, false>(pr, e, p.row_loss);
      break;
    }
    case TargetKind::index64: {
      IndexEntries<T, int64_t> e{pr, p.index64, p.index_stride};
      if (smooth) dispatch_options<T, false, true>(pr, e, p.row_loss);
      else dispatch_options<T, false, false>(pr, e, p.row_loss);
      break;
    }
    case TargetKind::sparse: {
      SparseEntries<T> e{pr};
      if (smooth) dispatch_options<T, false, true>(pr, e, p.row_loss);
      else dispatch_options<T, false, false>(pr, e, p.row_loss);
      break;
    }
  }
  // Fixed order, double accumulator: the same value for every thread count.
  double total = 0;
  for (int64_t i = 0; i < p.rows; ++i) total += double(p.row_loss[i]);
  return p.reduction == Reduction::mean ? total / denom : total;
}

// ---- row-wise logsumexp / softmax / log_softmax --------------------------------
template <class T>
void run_rowwise(RowOp op, const T* x, int64_t rows, int64_t classes, int64_t xs, T* out, int64_t os) {
  using V = VecFor<T>;
  constexpr int L = V::lanes;
  Problem<T> p;
  p.rows = rows;
  p.classes = classes;
  p.logits = x;
  p.logits_row_stride = xs;
  Params<T> pr{&p, T(1), T(0), T(0), T(0), 1.0};
  RowKernel<T, false, false, false, false> kern{pr};
  NoEntries<T> none;
  const int64_t nb = num_blocks(classes);
  const int threads = rows * classes < kMinParallelElements ? 1 : num_threads();
  auto body = [&](int64_t r0, int64_t r1) {
    thread_local std::vector<BlockStats> stats;
    stats.resize(size_t(nb));
    for (int64_t i = r0; i < r1; ++i) {
      for (int64_t b = 0; b < nb; ++b) stats[size_t(b)] = kern.block_stats(i, b, nullptr);
      RowResult r = kern.combine(i, stats.data(), nb, none);  // q = 0: loss = 0, coef = 1/S
      if (op == RowOp::logsumexp) {
        out[i * os] = T(r.lse);
        continue;
      }
      const T* xi = x + i * xs;
      T* oi = out + i * os;
      const V shift = V::set1(T(r.shift));
      const double log_s_d = r.lse - r.shift;  // NaN for a row with no softmax
      const V inv_s = V::set1(T(std::exp(-log_s_d)));
      const V log_s = V::set1(T(log_s_d));
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
