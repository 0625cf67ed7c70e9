// Fragment: the math of one row, written once over a vector type V: per-block
// stats, their combine into the row's loss, and the row's gradient.
// Included inside an ISA namespace by kernels_<isa>.cpp (through isa_unit.inl), so
// every ISA compiles its own copy with its own flags. Needs in scope: VecFor<T>
// (vec_<isa>.hpp), vmath.inl, Problem<T>, <algorithm>, <cmath>, <limits>, <vector>.
//
// Shape of the computation, per row of K logits:
//   1. stats pass, per block of kBlock columns (stays in L1): block max m_b, then
//      s_b = sum exp(x~ - m_b) and the target sums, all relative to m_b so large
//      common offsets cancel exactly before anything is accumulated;
//   2. combine the blocks IN BLOCK ORDER (in double): M, S, lse, loss;
//   3. gradient pass, per block: g = scale * dx~/dx * (exp(x~ - M) * (Qeff / S) - q).
// Rows are always cut into the same blocks (schedule.inl), so the arithmetic, and
// the result bit for bit, never depends on the thread count.
//
// Storage and compute types: S is what the logits, dense targets and gradient are
// stored in (float, double, bfloat16, float16); T = compute_t<S> is what the row is
// computed in (float for the 16-bit types). 16-bit values are widened by the vector
// loads and rounded to nearest even by the vector stores (vec_<isa>.hpp); the
// per-row scratch, the corrections and every sum stay in T (the combine in double).

constexpr int64_t kBlock = 2048;  // columns; 8 KiB (float) / 16 KiB (double) fits L1

inline int64_t num_blocks(int64_t k) { return (k + kBlock - 1) / kBlock; }
inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One stored value in the compute type.
template <class U>
inline compute_t<U> widen(U v) {
  if constexpr (is_16bit_v<U>) return to_float(v);
  else return v;
}
// A double result stored as S (16-bit: through float32, as every kernel result).
template <class S>
inline S narrow(double v) {
  if constexpr (is_16bit_v<S>) return from_float<S>(float(v));
  else return S(v);
}

// Prefetches one address per 64 bytes (a cache line) of elements [j, j + L) of p.
template <int L, class U>
inline void prefetch_lines(const U* p, int64_t j) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr int64_t kLine = 64;
  const auto* bytes = reinterpret_cast<const char*>(p);
  const int64_t b1 = (j + L) * int64_t(sizeof(U));
  for (int64_t b = (j * int64_t(sizeof(U)) + kLine - 1) / kLine * kLine; b < b1; b += kLine)
    __builtin_prefetch(bytes + b);
#else
  (void)p, (void)j;
#endif
}

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
  double lse;    // M + log S
  double log_s;  // log S itself: lse - M would round at the scale of M
  double q;      // Q = sum q, D = sum q (x~ - M): the row statistics' last two
  double d;
  double scale;  // d(reduced loss) / d(row loss), times the row's own multiplier
  bool ignored;
};

// What varies between target kinds and options, fixed for one call.
template <class S>
struct Params {
  using T = compute_t<S>;
  const Problem<S>* p;
  T a, b;          // q = w (a y + b): a = 1 - label_smoothing, b = label_smoothing / K
  T softcap;       // 0 = off
  double scale;    // d(reduced loss) / d(row loss)
};

// Logits after the optional soft cap. A division, not x * (1 / cap): for a
// subnormal cap 1 / cap overflows and 0 * inf would be NaN, while x / cap only
// overflows where tanh saturates to +-1 anyway.
template <bool kSoftcap, class V>
inline V capped(V x, V cap) {
  if constexpr (kSoftcap) return cap * vtanh(x / cap);
  else return x;
}

// d x~ / d x = 1 - tanh^2(x / cap).
template <class V>
inline V cap_slope(V x, V cap) {
  const V th = vtanh(x / cap);
  return fnmadd(th, th, V::set1(typename V::value_type(1)));
}

// kDense: targets are a dense row y. kSmooth: the dense part of q is nonzero
// (dense targets always; entry targets when label_smoothing > 0). Y: the dense
// targets' storage type (S, or float for 16-bit S: Problem::dense_targets_f32).
template <class S, bool kDense, bool kSmooth, bool kWeight, bool kSoftcap, class Y = S>
struct RowKernel {
  using Storage = S;
  using T = compute_t<S>;
  using V = VecFor<T>;
  static constexpr int L = V::lanes;
  static constexpr bool kCapped = kSoftcap;
  const Params<S>& pr;

  const S* x_row(int64_t i) const { return pr.p->logits + i * pr.p->logits_row_stride; }

  // The reduction's scale times the row's own gradient multiplier, if any.
  double row_scale(int64_t i) const {
    const Problem<S>& p = *pr.p;
    return p.row_grad_scale ? pr.scale * double(p.row_grad_scale[i * p.row_grad_scale_stride]) : pr.scale;
  }
  const Y* y_row(int64_t i) const {
    if constexpr (std::is_same_v<Y, S>) return pr.p->dense_targets + i * pr.p->targets_row_stride;
    else return pr.p->dense_targets_f32 + i * pr.p->targets_row_stride;
  }

  // Loads lanes [0, L) of p, or its first n lanes and `fill` elsewhere (kFull false),
  // widened to T.
  template <bool kFull, class P>
  static V load_n(const P* p, int64_t n, T fill) {
    if constexpr (kFull) return V::load(p);
    else return V::load_partial(p, n, fill);
  }

  // The dense part of one row's effective target q = w (a y + b), with every input
  // held in locals: the loops store through T pointers, which may alias the Params,
  // so reading through `pr` there would reload them on every step.
  struct DenseQ {
    const Y* y;
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

  // One logit's x~, computed exactly as the vector passes compute it: the row's
  // max entry must give x~ - M == 0 exactly, whatever tanh's rounding (a scalar
  // tanh, or the same one in double, can differ in the last bit, which at the
  // scale of a huge cap is a huge loss).
  T capped_one(T x) const {
    if constexpr (kSoftcap) return reduce_max(capped<true>(V::set1(x), V::set1(pr.softcap)));
    else return x;
  }

  // Stats of one block. When `e` is given (a scratch row: a gradient is wanted, or
  // a soft cap) it receives exp(x~_j - ref) for the block's columns, so the
  // gradient pass needs no exp.
  BlockStats block_stats(int64_t i, int64_t blk, T* e) const {
    const S* x = x_row(i);
    const int64_t j0 = blk * kBlock, j1 = std::min(pr.p->classes, j0 + kBlock);
    const V cap = V::set1(pr.softcap);
    const T ninf = -std::numeric_limits<T>::infinity();

    // Under a soft cap with a scratch row, the max pass parks x~ in it and the
    // sums pass reads it back (then overwrites it with exp): one tanh per logit
    // instead of two, and the very same x~ values in both passes.
    V vmax0 = V::set1(ninf), vmax1 = vmax0;
    auto max_pass = [&](auto park) {
      constexpr bool kPark = decltype(park)::value;
      // Two accumulators: the loop is bound by max's latency, not by loads.
      int64_t j = j0;
      for (; j + 2 * L <= j1; j += 2 * L) {
        const V c0 = capped<kSoftcap>(V::load(x + j), cap), c1 = capped<kSoftcap>(V::load(x + j + L), cap);
        if constexpr (kPark) {
          c0.store(e + j);
          c1.store(e + j + L);
        }
        vmax0 = max(c0, vmax0);
        vmax1 = max(c1, vmax1);
      }
      for (; j < j1; j += L) {
        const int64_t n = std::min<int64_t>(L, j1 - j);
        const V c = capped<kSoftcap>(V::load_partial(x + j, n, ninf), cap);
        if constexpr (kPark) c.store_partial(e + j, n);
        vmax0 = max(c, vmax0);
      }
    };
    if (kSoftcap && e) max_pass(std::true_type{});
    else max_pass(std::false_type{});
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
      constexpr bool kKeep = decltype(keep)::value;
      constexpr bool kParked = kSoftcap && kKeep;  // x~ waits in e (see max_pass)
      V t;
      if constexpr (kParked) t = load_n<kFull>(e + j, n, ninf) - ref;  // padding: -inf, exp 0
      else t = capped<kSoftcap>(load_n<kFull>(x + j, n, ninf), cap) - ref;
      V ev = vexp_nonpos(t);
      // Padding lanes load -inf, which the soft cap turns into -softcap: drop them.
      if constexpr (kSoftcap && !kParked && !kFull) ev = select(mask_first(n), ev, zero);
      s = s + ev;
      if constexpr (kKeep) {
        if constexpr (kFull) ev.store(e + j);
        else ev.store_partial(e + j, n);
      }
      if constexpr (kSmooth) {
        V q = dq.template at<kFull>(j, n);
        qs = qs + q;
        ds = ds + select(q != zero, q * t, zero);  // a q == 0 term adds nothing, even at -inf
      }
    };
    // The sums pass works from L1 long enough for the hardware prefetcher, which
    // follows loads, to fall behind, and the next block's max pass then waits on
    // memory. So each vector here asks for the lines kBlock columns ahead (the next
    // block, or the next row's first): measured 10-30% off the call on Zen 4, more
    // for AVX2 (bench/README.md). A hint: it never faults, whatever the address.
    auto sweep = [&](auto keep) {
      int64_t j = j0;
      for (; j + L <= j1; j += L) {
        prefetch_lines<L>(x + kBlock, j);
        if constexpr (kDense) prefetch_lines<L>(dq.y + kBlock, j);
        step(j, L, std::true_type{}, keep);
      }
      if (j < j1) step(j, j1 - j, std::false_type{}, keep);
    };
    if (e) sweep(std::true_type{});
    else sweep(std::false_type{});
    // +inf in the block: no softmax. All -inf: no contribution, unless a NaN hides
    // there (max() skips NaN, so look).
    st.s = finite_max ? double(reduce_add(s)) : kNaN;
    if (st.max == -kInf) {
      bool has_nan = false;
      for (int64_t j = j0; j < j1; ++j) has_nan |= std::isnan(widen(x[j]));
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
    // D's reference: M, or 0 for a row of all -inf (a vocabulary shard's empty part,
    // whose statistics still carry its target terms).
    const double ref = m == -kInf ? 0.0 : m;
    double s = 0, q = 0, d = 0;
    if (!nan) {
      for (int64_t b = 0; b < nb; ++b) {
        if (st[b].s != 0) s += st[b].s * std::exp(st[b].ref - m);
        q += st[b].q;
        d += st[b].d + st[b].q * (st[b].ref - ref);
      }
    }
    entries.for_each(i, [&](int64_t j, double qj) {
      if (qj == 0) return;
      q += qj;
      d += qj * (double(capped_one(widen(x_row(i)[j]))) - ref);
    });
    r.q = q;
    r.d = d;
    r.scale = row_scale(i);
    // No softmax (NaN, +inf or all -inf logits), or no finite target mass (a +-inf or
    // NaN target, or a sum beyond the dtype): a NaN row (docs/spec.md#conventions).
    if (nan || m == -kInf || !(s > 0) || !std::isfinite(T(q))) {
      r.loss = kNaN;
      r.coef = kNaN;
      r.lse = kNaN;
      // Statistics: a row of only -inf logits is [-inf, -inf, Q, D] (a shard that
      // adds nothing to S but its target terms); any other such row M = 0, the rest NaN.
      const bool empty = !nan && m == -kInf && std::isfinite(T(q));
      r.shift = empty ? -kInf : 0;
      r.log_s = empty ? -kInf : kNaN;
      if (!empty) r.q = r.d = kNaN;
      return r;
    }
    const double log_s = std::log(s);
    const double z = pr.p->z_loss;
    r.shift = m;
    r.log_s = log_s;
    r.lse = m + log_s;
    r.loss = q * log_s - d + z * r.lse * r.lse;
    r.coef = (q + 2 * z * r.lse) / s;
    if (!std::isfinite(r.coef)) r.coef = kNaN;  // e.g. z_loss * lse beyond double: no gradient (docs/spec.md#conventions)
    return r;
  }

  // Writes row i's statistics [M, log S, Q, D] (Problem::row_stats, in T).
  void store_stats(int64_t i, const RowResult& r) const {
    T* out = pr.p->row_stats + i * kRowStatsWidth;
    if (r.ignored) {
      std::fill(out, out + kRowStatsWidth, T(0));
      return;
    }
    out[0] = T(r.shift);
    out[1] = T(r.log_s);
    out[2] = T(r.q);
    out[3] = T(r.d);
  }

  // Row i's gradient coefficients from given statistics (Problem::given_stats)
  // instead of a statistics pass: what combine() gives, less the loss.
  template <class Entries>
  RowResult result_from_stats(int64_t i, const Entries& entries) const {
    RowResult r{};
    if (entries.ignored(i)) {
      r.ignored = true;
      return r;
    }
    const T* st = pr.p->given_stats + i * kRowStatsWidth;
    const double m = double(st[0]), log_s = double(st[1]), q = double(st[2]);
    r.scale = row_scale(i);
    r.q = q;
    r.loss = kNaN;  // not computed
    if (!std::isfinite(m) || std::isnan(log_s) || !std::isfinite(T(q))) {
      r.coef = kNaN;
      r.shift = 0;
      r.lse = r.log_s = kNaN;
      return r;
    }
    r.shift = m;
    r.log_s = log_s;
    r.lse = m + log_s;
    r.coef = (q + 2 * pr.p->z_loss * r.lse) * std::exp(-log_s);
    if (!std::isfinite(r.coef)) r.coef = kNaN;
    return r;
  }

  S* grad_row(int64_t i) const { return pr.p->grad + i * pr.p->grad_row_stride; }

  // Stores value(j, n, full) to g[j0, j1), g of type G (S, or T for the scratch row).
  // `stream`: non-temporal stores from the first aligned address on (the gradient is
  // far larger than the cache); L 16-bit values need half the alignment of L floats.
  template <class G, class F>
  static void store_range(G* g, int64_t j0, int64_t j1, F&& value, bool stream) {
    constexpr std::true_type full{};
    constexpr std::false_type partial{};
    constexpr uintptr_t align = std::is_same_v<G, T> ? V::stream_alignment : V::stream_alignment / 2;
    int64_t j = j0;
    if (stream) {
      const uintptr_t misalign = reinterpret_cast<uintptr_t>(g + j0) % align;
      const int64_t head = std::min(j1 - j0, misalign ? int64_t((align - misalign) / sizeof(G)) : 0);
      if (misalign % sizeof(G) == 0 && head < L) {
        if (head > 0) value(j, head, partial).store_partial(g + j, head);
        j += head;
        for (; j + L <= j1; j += L) value(j, L, full).stream(g + j);
      }
    }
    for (; j + L <= j1; j += L) value(j, L, full).store(g + j);
    if (j < j1) value(j, j1 - j, partial).store_partial(g + j, j1 - j);
  }

  // The factor of a block's stored exponentials in the gradient: scale * exp(ref - M) * Qeff / S.
  double block_coef(const RowResult& r, const BlockStats& st) const {
    double c = 0;  // an all -inf block has e == 0: only -q remains
    if (std::isnan(r.coef)) c = kNaN;
    else if (st.max != -kInf) c = r.coef * r.scale * std::exp(st.ref - r.shift);
    return c;
  }

  // The gradient's dense part at lanes [j, j + n) of a block, in T.
  template <bool kFull>
  V grad_value(const T* e, const S* x, const DenseQ& dq, int64_t j, int64_t n, V coef, V scale, V cap) const {
    V gv;
    if constexpr (kSmooth) gv = fmsub(load_n<kFull>(e + j, n, T(0)), coef, dq.template at<kFull>(j, n) * scale);
    else gv = load_n<kFull>(e + j, n, T(0)) * coef;
    if constexpr (kSoftcap) gv = gv * cap_slope(load_n<kFull>(x + j, n, T(0)), cap);
    return gv;
  }

  // g_j = scale * dx~/dx * (e_j * exp(ref - M) * Qeff / S - q_j) for one block, from
  // the block's stored exponentials e, into the row g (which may be e itself).
  template <class G>
  void block_grad(int64_t i, int64_t blk, const RowResult& r, const BlockStats& st, const T* e, G* g,
                  bool stream) const {
    const int64_t j0 = blk * kBlock, j1 = std::min(pr.p->classes, j0 + kBlock);
    if (r.ignored) {  // e holds another row's values here
      std::fill(g + j0, g + j1, G{});
      return;
    }
    const V coef = V::set1(T(block_coef(r, st)));
    const V scale = V::set1(T(r.scale));
    const V cap = V::set1(pr.softcap);
    const S* x = x_row(i);
    const DenseQ dq = dense_q(i);
    store_range(g, j0, j1, [&](int64_t j, int64_t n, auto full) {
      return grad_value<decltype(full)::value>(e, x, dq, j, n, coef, scale, cap);
    }, stream);
  }

  // The same gradient for one block from the row's given statistics: the
  // exponentials come from the logits (exp(x~ - M) / S), not from a scratch row.
  // g (S, or T for a 16-bit row finished in scratch) may be the logits (in place):
  // each element is read before it is written.
  template <class G>
  void block_grad_given(int64_t i, int64_t blk, const RowResult& r, G* g, bool stream) const {
    const int64_t j0 = blk * kBlock, j1 = std::min(pr.p->classes, j0 + kBlock);
    if (r.ignored) {
      std::fill(g + j0, g + j1, G{});
      return;
    }
    const V coef = V::set1(T(std::isnan(r.coef) ? kNaN : r.coef * r.scale));
    const V scale = V::set1(T(r.scale));
    const V shift = V::set1(T(r.shift));
    const V cap = V::set1(pr.softcap);
    const S* x = x_row(i);
    const DenseQ dq = dense_q(i);
    store_range(g, j0, j1, [&](int64_t j, int64_t n, auto full) {
      constexpr bool kFull = decltype(full)::value;
      const V xv = load_n<kFull>(x + j, n, T(0));
      // vexp, not vexp_nonpos: given statistics are not known to bound the row.
      const V e = vexp(capped<kSoftcap>(xv, cap) - shift);
      V gv;
      if constexpr (kSmooth) gv = fmsub(e, coef, dq.template at<kFull>(j, n) * scale);
      else gv = e * coef;
      if constexpr (kSoftcap) gv = gv * cap_slope(xv, cap);
      return gv;
    }, stream);
  }

  // Streams a finished row from the scratch e to g.
  template <class G>
  void stream_row(const T* e, G* g) const { stream_row_to(e, g, true); }

  // Stores a finished row from the scratch e to g (rounding to a 16-bit G), with
  // streaming stores or not.
  template <class G>
  void stream_row_to(const T* e, G* g, bool stream) const {
    store_range(g, 0, pr.p->classes, [&](int64_t j, int64_t n, auto full) {
      return load_n<decltype(full)::value>(e + j, n, T(0));
    }, stream);
  }

  // Entry targets' part of the gradient: -scale * dx~/dx * q_j at listed classes.
  // Computed before the dense gradient is written, since in place the write
  // replaces the logits these corrections read.
  template <class Entries>
  void entry_corrections(int64_t i, const RowResult& r, const Entries& entries, std::vector<T>& out) const {
    out.clear();
    if (r.ignored) return;
    entries.for_each(i, [&](int64_t j, double qj) {
      double c = -r.scale * qj;
      // The same slope as the vector pass's, so that at a class where softmax
      // is exactly q the two parts cancel exactly.
      if constexpr (kSoftcap) c *= double(reduce_max(cap_slope(V::set1(widen(x_row(i)[j])), V::set1(pr.softcap))));
      out.push_back(T(c));
    });
  }

  // 16-bit S: the dense part of the gradient at each entry's class, in T, exactly as
  // block_grad computes it before rounding. The entry's correction is added to it in
  // T and the sum rounded once (apply_corrections): rounding the dense part to 16 bits
  // first would lose the digits that cancel at a class where softmax is near q.
  // Called after combine, before the row's gradient is written (it reads e and x).
  template <class Entries>
  void entry_values(int64_t i, const RowResult& r, const BlockStats* st, const T* e, const Entries& entries,
                    std::vector<T>& out) const {
    out.clear();
    if (r.ignored) return;
    const V scale = V::set1(T(r.scale)), cap = V::set1(pr.softcap);
    const DenseQ dq = dense_q(i);
    const S* x = x_row(i);
    entries.for_each(i, [&](int64_t j, double) {
      const V coef = V::set1(T(block_coef(r, st[j / kBlock])));
      T v;
      grad_value<false>(e, x, dq, j, 1, coef, scale, cap).store_partial(&v, 1);
      out.push_back(v);
    });
  }

  // Adds the entry corrections to the written row g. For a 16-bit g, from the values
  // of entry_values, in T, in the row's scratch e (free once the row is written),
  // then rounds each touched class once.
  template <class Entries, class G>
  void apply_corrections(int64_t i, const RowResult& r, const Entries& entries, const std::vector<T>& corr,
                         G* g, const std::vector<T>& values, T* e) const {
    if (r.ignored) return;
    size_t k = 0;
    if constexpr (std::is_same_v<G, T>) {
      (void)values;
      (void)e;
      entries.for_each(i, [&](int64_t j, double) { g[j] += corr[k++]; });
    } else {
      entries.for_each(i, [&](int64_t j, double) { e[j] = values[k++]; });  // duplicates: the same value
      k = 0;
      entries.for_each(i, [&](int64_t j, double) { e[j] += corr[k++]; });
      entries.for_each(i, [&](int64_t j, double) { g[j] = from_float<G>(e[j]); });
    }
  }
};
