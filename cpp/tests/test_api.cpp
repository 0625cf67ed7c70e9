// CTest of the public C++ API, through its one header only: small problems whose
// loss and gradient are known in closed form, on every variant this CPU supports,
// in float and double. Exits nonzero, after printing every mismatch, on failure.
//
// Closed forms used: with all K logits of a row equal, softmax is 1/K, so
// lse = x + log K, loss = sum(q) log K and grad = scale * (sum(q) / K - q) (times
// 1 - tanh^2(x / cap) under a soft cap). Logits (0, log 2, log 3) give softmax
// (1/6, 1/3, 1/2).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

#include "fastxent/fastxent.hpp"

namespace fx = fastxent;

namespace {

int g_failures = 0;
std::string g_where;  // variant and dtype of the checks running now

// A few roundings of values of size ~log K: 1e-5 (float) / 1e-12 (double)
// relative is far above them and far below any wrong formula's error.
template <class T>
double tolerance() {
  return sizeof(T) == 4 ? 1e-5 : 1e-12;
}

template <class T>
void check(const char* what, double got, double want, long index = -1) {
  const bool both_nan = std::isnan(got) && std::isnan(want);
  if (both_nan || std::fabs(got - want) <= tolerance<T>() * std::fmax(1.0, std::fabs(want))) return;
  ++g_failures;
  std::fprintf(stderr, "FAIL [%s] %s", g_where.c_str(), what);
  if (index >= 0) std::fprintf(stderr, "[%ld]", index);
  std::fprintf(stderr, ": got %.17g, want %.17g\n", got, want);
}

template <class T>
void check_all(const char* what, const std::vector<T>& got, const std::vector<double>& want) {
  for (size_t i = 0; i < want.size(); ++i) check<T>(what, double(got[i]), want[i], long(i));
}

// N rows of K logits all equal to `value`, with room for the outputs.
template <class T>
struct Case {
  int64_t n, k;
  std::vector<T> x, row_loss, grad;
  fx::Problem<T> p;
  Case(int64_t rows, int64_t classes, T value)
      : n(rows), k(classes), x(size_t(rows * classes), value), row_loss(size_t(rows)), grad(size_t(rows * classes)) {
    p.rows = n;
    p.classes = k;
    p.logits = x.data();
    p.logits_row_stride = k;
    p.row_loss = row_loss.data();
    p.grad = grad.data();
    p.grad_row_stride = k;
  }
};

template <class T>
void test_index_targets() {
  // Mean over the non-ignored rows; ignored rows get loss 0 and gradient 0.
  Case<T> c(3, 5, T(0.3));
  const std::vector<int64_t> target = {0, -100, 2};
  c.p.target_kind = fx::TargetKind::index64;
  c.p.index64 = target.data();
  const double loss = fx::softmax_cross_entropy(c.p);
  const double log_k = std::log(5.0);
  check<T>("index mean loss", loss, log_k);
  check_all<T>("index row_loss", c.row_loss, {log_k, 0.0, log_k});
  std::vector<double> grad(15, 0.0);
  for (int64_t i : {0, 2})
    for (int64_t j = 0; j < 5; ++j) grad[size_t(i * 5 + j)] = (0.2 - (j == target[size_t(i)])) / 2;
  check_all<T>("index grad", c.grad, grad);

  // int32 indices, class weights, sum reduction: row i's loss is w[t_i] log K.
  Case<T> w(2, 5, T(-1));
  const std::vector<int32_t> t32 = {4, 1};
  const std::vector<T> weight = {1, 2, 3, 4, 5};
  w.p.target_kind = fx::TargetKind::index32;
  w.p.index32 = t32.data();
  w.p.weight = weight.data();
  w.p.reduction = fx::Reduction::sum;
  check<T>("weighted sum loss", fx::softmax_cross_entropy(w.p), (5 + 2) * log_k);
  check_all<T>("weighted row_loss", w.row_loss, {5 * log_k, 2 * log_k});
}

template <class T>
void test_dense_targets() {
  // Multi-hot rows: sum(y) = 2 and 1. Mean over N = 2 rows.
  Case<T> c(2, 4, T(7));
  const std::vector<T> y = {1, 0, 1, 0, 0, 0, 0, 1};
  c.p.target_kind = fx::TargetKind::dense;
  c.p.dense_targets = y.data();
  c.p.targets_row_stride = 4;
  const double log_k = std::log(4.0);
  check<T>("dense mean loss", fx::softmax_cross_entropy(c.p), (2 * log_k + log_k) / 2);
  check_all<T>("dense row_loss", c.row_loss, {2 * log_k, log_k});
  std::vector<double> grad(8);
  const double q_sum[] = {2, 1};
  for (size_t i = 0; i < 8; ++i) grad[i] = (q_sum[i / 4] / 4 - double(y[i])) / 2;
  check_all<T>("dense grad", c.grad, grad);

  // Softmax (1/6, 1/3, 1/2): the loss of class j is -log softmax_j; loss only.
  Case<T> d(1, 3, T(0));
  d.x = {T(0), T(std::log(2.0)), T(std::log(3.0))};
  d.p.logits = d.x.data();
  d.p.grad = nullptr;
  const std::vector<T> soft = {T(0.5), T(0), T(0.5)};
  d.p.dense_targets = soft.data();
  d.p.targets_row_stride = 3;
  check<T>("soft targets loss", fx::softmax_cross_entropy(d.p), 0.5 * std::log(6.0) + 0.5 * std::log(2.0));
}

template <class T>
void test_sparse_targets() {
  // Two listed classes in row 0 (values 1 and 3), none in row 1; K spans two blocks.
  const int64_t k = 3000;
  Case<T> c(2, k, T(2));
  const std::vector<int64_t> indptr = {0, 2, 2}, indices = {10, 2999};
  const std::vector<T> values = {1, 3};
  c.p.target_kind = fx::TargetKind::sparse;
  c.p.sparse_indptr = indptr.data();
  c.p.sparse_indices = indices.data();
  c.p.sparse_values = values.data();
  c.p.reduction = fx::Reduction::none;
  fx::softmax_cross_entropy(c.p);
  check_all<T>("sparse row_loss", c.row_loss, {4 * std::log(double(k)), 0.0});
  check<T>("sparse grad", double(c.grad[10]), 4.0 / k - 1, 10);
  check<T>("sparse grad", double(c.grad[2999]), 4.0 / k - 3, 2999);
  check<T>("sparse grad", double(c.grad[500]), 4.0 / k, 500);
  check<T>("sparse grad (empty row)", double(c.grad[size_t(k + 7)]), 0.0, long(k + 7));
}

template <class T>
void test_options() {
  // Label smoothing keeps sum(q) = 1 (loss log K); the soft cap keeps equal logits
  // equal and scales the gradient by 1 - tanh^2(x / cap).
  Case<T> c(1, 6, T(0.5));
  const std::vector<int64_t> target = {3};
  c.p.target_kind = fx::TargetKind::index64;
  c.p.index64 = target.data();
  c.p.label_smoothing = 0.3;
  c.p.softcap = 2.0;
  check<T>("smoothing + softcap loss", fx::softmax_cross_entropy(c.p), std::log(6.0));
  const double th = std::tanh(0.25), slope = 1 - th * th;
  std::vector<double> grad(6);
  for (int64_t j = 0; j < 6; ++j) grad[size_t(j)] = (1.0 / 6 - (0.3 / 6 + 0.7 * (j == 3))) * slope;
  check_all<T>("smoothing + softcap grad", c.grad, grad);

  // z_loss adds z * lse^2 per row.
  Case<T> z(1, 4, T(1));
  z.p.target_kind = fx::TargetKind::index64;
  z.p.index64 = target.data();
  z.p.z_loss = 0.01;
  const double lse = 1 + std::log(4.0);
  check<T>("z_loss loss", fx::softmax_cross_entropy(z.p), std::log(4.0) + 0.01 * lse * lse);

  // A cap as large as the logits: the target is the max, so loss and gradient are 0.
  Case<T> h(1, 2, T(0));
  h.x = {T(1e20), T(0)};
  h.p.logits = h.x.data();
  const std::vector<int64_t> first = {0};
  h.p.target_kind = fx::TargetKind::index64;
  h.p.index64 = first.data();
  h.p.softcap = 1e20;
  check<T>("huge softcap loss", fx::softmax_cross_entropy(h.p), 0.0);
  check_all<T>("huge softcap grad", h.grad, {0.0, 0.0});
}

template <class T>
void test_rowwise() {
  const std::vector<T> x = {T(0), T(std::log(2.0)), T(std::log(3.0)),  // softmax 1/6, 1/3, 1/2
                            T(1e30), T(1e30), T(1e30)};                 // softmax 1/3 each
  std::vector<T> out(6), lse(2);
  fx::rowwise(fx::RowOp::logsumexp, x.data(), 2, 3, 3, lse.data(), 1);
  check_all<T>("logsumexp", lse, {std::log(6.0), double(T(1e30)) + std::log(3.0)});
  fx::rowwise(fx::RowOp::softmax, x.data(), 2, 3, 3, out.data(), 3);
  check_all<T>("softmax", out, {1.0 / 6, 1.0 / 3, 0.5, 1.0 / 3, 1.0 / 3, 1.0 / 3});
  fx::rowwise(fx::RowOp::log_softmax, x.data(), 2, 3, 3, out.data(), 3);
  const double l3 = -std::log(3.0);
  check_all<T>("log_softmax", out, {-std::log(6.0), l3, -std::log(2.0), l3, l3, l3});
}

template <class T>
void test_vector_exp(fx::Isa isa) {
  const std::vector<T> x = {T(0), T(1), T(-2.5), T(-INFINITY), T(10)};
  std::vector<T> out(x.size());
  fx::vector_exp(isa, x.data(), out.data(), int64_t(x.size()));
  std::vector<double> want;
  for (T v : x) want.push_back(std::exp(double(v)));
  check_all<T>("vector_exp", out, want);
}

// Enough rows to use the pool: 1 and 2 threads must give the same bits.
template <class T>
void test_thread_count_invariance() {
  Case<T> c(64, 5000, T(0));
  for (size_t i = 0; i < c.x.size(); ++i) c.x[i] = T(std::sin(double(i)) * 5);
  std::vector<int64_t> target(64);
  for (size_t i = 0; i < target.size(); ++i) target[i] = int64_t(i * 37 % 5000);
  c.p.target_kind = fx::TargetKind::index64;
  c.p.index64 = target.data();
  fx::set_num_threads(1);
  const double one = fx::softmax_cross_entropy(c.p);
  const std::vector<T> grad_one = c.grad;
  fx::set_num_threads(2);
  const double two = fx::softmax_cross_entropy(c.p);
  if (one != two || grad_one != c.grad) {
    ++g_failures;
    std::fprintf(stderr, "FAIL [%s] 1 and 2 threads differ: loss %.17g vs %.17g\n", g_where.c_str(), one, two);
  }
}

template <class T>
void run_all(fx::Isa isa) {
  g_where = std::string(fx::isa_name(isa)) + (sizeof(T) == 4 ? " float" : " double");
  test_index_targets<T>();
  test_dense_targets<T>();
  test_sparse_targets<T>();
  test_options<T>();
  test_rowwise<T>();
  test_vector_exp<T>(isa);
  test_thread_count_invariance<T>();
}

// ---- 16-bit storage ----------------------------------------------------------

// Round to nearest even of a double to a format with `mant` stored mantissa bits,
// minimum normal exponent `emin` and maximum finite value `max`: an independent
// reference for the header's scalar conversions.
double round_ref(double v, int mant, int emin, double max) {
  if (std::isnan(v) || v == 0) return v;
  const double a = std::fabs(v);
  int e;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
  const int exp = std::max(e - 1, emin);
  const double ulp = std::ldexp(1.0, exp - mant);
  double r = std::nearbyint(a / ulp) * ulp;  // default rounding mode: to nearest even
  if (r > max) {
    // halfway to the next power beyond max still rounds to max when max's last bit is even
    const double top = max + ulp / 2;
    r = a < top ? max : INFINITY;
  }
  return std::copysign(r, v);
}

template <class S>
void test_conversions() {
  const bool bf = std::is_same_v<S, fx::bfloat16>;
  const int mant = bf ? 7 : 10, emin = bf ? -126 : -14;
  const double max = bf ? 3.3895313892515355e38 : 65504.0;
  long bad = 0;
  // Every 16-bit pattern widens and narrows back to itself (NaN stays NaN).
  for (uint32_t b = 0; b < 65536; ++b) {
    const S h{uint16_t(b)};
    const float f = fx::to_float(h);
    const S back = fx::from_float<S>(f);
    if (std::isnan(f) ? !std::isnan(fx::to_float(back)) : back.bits != h.bits) ++bad;
  }
  // A sample of float32 bit patterns: rounded to nearest even like the reference.
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 65521) {
    float f;
    const uint32_t bits = uint32_t(u);
    std::memcpy(&f, &bits, 4);
    const double got = double(fx::to_float(fx::from_float<S>(f))), want = round_ref(double(f), mant, emin, max);
    if (std::isnan(want) ? !std::isnan(got) : got != want || std::signbit(got) != std::signbit(want)) {
      if (bad++ < 5) std::fprintf(stderr, "FAIL [%s] rounding %.9g: got %.9g want %.9g\n", g_where.c_str(), f, got, want);
    }
  }
  // Ties to even, at the halfway points.
  const float tie = bf ? 1.0f + 1.0f / 256 : 1.0f + 1.0f / 2048;  // halfway between 1 and its successor
  if (fx::to_float(fx::from_float<S>(tie)) != 1.0f) ++bad;
  if (bad) {
    g_failures += int(bad);
    std::fprintf(stderr, "FAIL [%s] %ld conversion mismatch(es)\n", g_where.c_str(), bad);
  }
}

// The 16-bit kernels compute exactly what the float kernels compute on the widened
// values, then round: so for every variant, every 16-bit output must equal the float
// output rounded to S, bit for bit (the per-row losses, in float, exactly). Covers
// tails, several blocks, NaN/inf/-inf rows, ignored rows, weights, smoothing, soft
// cap, dense targets in S and in float, sparse rows with duplicates, in place,
// streaming stores, and 1 or 2 threads.
template <class S>
struct Twin {
  int64_t n, k;
  std::vector<S> x, y, g;
  std::vector<float> xf, yf, gf, loss16, loss32, weight, values;
  std::vector<int64_t> index, indptr, indices;
  Twin(int64_t rows, int64_t classes) : n(rows), k(classes) {
    const size_t nk = size_t(n * k);
    x.resize(nk);
    y.resize(nk);
    yf.resize(nk);
    for (size_t i = 0; i < nk; ++i) {
      x[i] = fx::from_float<S>(float(std::sin(double(i) * 0.7) * 6 + std::cos(double(i) * 0.013) * 3));
      yf[i] = float((i * 7919) % 13 == 0) * 0.75f + float(i % 5 == 0) * 0.125f;
      y[i] = fx::from_float<S>(yf[i]);
    }
    if (n > 3) {  // a NaN row, a +inf row, an all -inf row
      x[size_t(1 * k + 2)] = fx::from_float<S>(NAN);
      x[size_t(2 * k + 1)] = fx::from_float<S>(INFINITY);
      for (int64_t j = 0; j < k; ++j) x[size_t(3 * k + j)] = fx::from_float<S>(-INFINITY);
    }
    for (int64_t j = 0; j < k; j += 3) x[size_t(j)] = fx::from_float<S>(-INFINITY);  // masked classes, zero targets
    for (int64_t j = 0; j < k; j += 3) { y[size_t(j)] = S{0}; yf[size_t(j)] = 0; }
    xf.resize(nk);
    for (size_t i = 0; i < nk; ++i) xf[i] = fx::to_float(x[i]);
    for (int64_t i = 0; i < n; ++i) index.push_back(i % 4 == 3 ? -100 : (i * 131 + 1) % k);
    for (int64_t j = 0; j < k; ++j) weight.push_back(float(1 + j % 3) * 0.5f);
    indptr.push_back(0);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c : {(i * 17 + 1) % k, (i * 29 + 4) % k, (i * 17 + 1) % k}) {  // a duplicate
        indices.push_back(c);
        values.push_back(0.25f + float(c % 3));
      }
      indptr.push_back(int64_t(indices.size()));
    }
  }
  template <class P, class G>
  void setup(P& p, const G* logits, G* grad, int mode) {
    p.rows = n;
    p.classes = k;
    p.logits = logits;
    p.logits_row_stride = k;
    p.grad = grad;
    p.grad_row_stride = k;
    p.reduction = fx::Reduction::mean;
    if (mode % 4 == 0) {
      p.target_kind = fx::TargetKind::index64;
      p.index64 = index.data();
    } else if (mode % 4 == 3) {
      p.target_kind = fx::TargetKind::sparse;
      p.sparse_indptr = indptr.data();
      p.sparse_indices = indices.data();
      p.sparse_values = values.data();
    } else {
      p.target_kind = fx::TargetKind::dense;
      p.targets_row_stride = k;
    }
    if (mode & 4) p.weight = weight.data();
    if (mode & 8) p.label_smoothing = 0.1;
    if (mode & 16) p.softcap = 5.0;
  }
  // Returns the number of mismatches.
  long run(int mode, bool inplace) {
    fx::Problem<float> pf;
    fx::Problem<S> ps;
    std::vector<S> x16 = x;
    gf.assign(size_t(n * k), 0);
    g.assign(size_t(n * k), S{0});
    loss32.assign(size_t(n), 0);
    loss16.assign(size_t(n), 0);
    setup(pf, xf.data(), gf.data(), mode);
    setup(ps, x16.data(), inplace ? x16.data() : g.data(), mode);
    if (mode % 4 == 1) {  // dense in S: the float twin reads the widened targets
      std::vector<float> yw(y.size());
      for (size_t i = 0; i < y.size(); ++i) yw[i] = fx::to_float(y[i]);
      pf.dense_targets = yw.data();
      ps.dense_targets = y.data();
      return compare(pf, ps, inplace ? x16 : g);
    }
    if (mode % 4 == 2) {  // dense in float32
      pf.dense_targets = yf.data();
      ps.dense_targets_f32 = yf.data();
    }
    return compare(pf, ps, inplace ? x16 : g);
  }
  long compare(fx::Problem<float>& pf, fx::Problem<S>& ps, const std::vector<S>& grad16) {
    pf.row_loss = loss32.data();
    ps.row_loss = loss16.data();
    const double l32 = fx::softmax_cross_entropy(pf), l16 = fx::softmax_cross_entropy(ps);
    long bad = 0;
    if (!(l32 == l16 || (std::isnan(l32) && std::isnan(l16)))) ++bad;
    for (size_t i = 0; i < loss32.size(); ++i)
      if (!(loss32[i] == loss16[i] || (std::isnan(loss32[i]) && std::isnan(loss16[i])))) ++bad;
    for (size_t i = 0; i < gf.size(); ++i) {
      const S want = fx::from_float<S>(gf[i]);
      const bool nan = std::isnan(gf[i]) && std::isnan(fx::to_float(grad16[i]));
      if (!nan && want.bits != grad16[i].bits) {
        if (bad < 3)
          std::fprintf(stderr, "  [%s] grad[%zu]: float %.9g, 16-bit %.9g\n", g_where.c_str(), i, double(gf[i]),
                       double(fx::to_float(grad16[i])));
        ++bad;
      }
    }
    return bad;
  }
};

template <class S>
void test_16bit_matches_float() {
  struct Shape { int64_t n, k; };
  // tails and one block; several blocks with a tail; few rows, many blocks (the
  // blocks split across threads); large enough to stream the gradient (>= 16 MiB).
  for (Shape sh : {Shape{9, 37}, Shape{12, 4133}, Shape{1, 9000}, Shape{2048, 4100}}) {
    Twin<S> t(sh.n, sh.k);
    const bool big = sh.n * sh.k > 1000000;
    for (int threads : {1, 2}) {
      fx::set_num_threads(threads);
      for (int mode = 0; mode < 32; ++mode) {
        if (big && (mode & 12)) continue;  // keep the big shape to the plain variants
        for (bool inplace : {false, true}) {
          const long bad = t.run(mode, inplace);
          if (bad) {
            g_failures += int(bad);
            std::fprintf(stderr, "FAIL [%s] 16-bit vs float: %ld mismatch(es), %lldx%lld mode %d inplace %d threads %d\n",
                         g_where.c_str(), bad, (long long)sh.n, (long long)sh.k, mode, int(inplace), threads);
          }
        }
      }
    }
  }
  // Row-wise: the same rule.
  Twin<S> t(7, 2100);
  for (fx::RowOp op : {fx::RowOp::logsumexp, fx::RowOp::softmax, fx::RowOp::log_softmax}) {
    std::vector<float> of(t.x.size());
    std::vector<S> o16(t.x.size());
    fx::rowwise(op, t.xf.data(), t.n, t.k, t.k, of.data(), t.k);
    fx::rowwise(op, t.x.data(), t.n, t.k, t.k, o16.data(), t.k);
    const size_t m = op == fx::RowOp::logsumexp ? size_t(t.n) : of.size();
    long bad = 0;
    for (size_t i = 0; i < m; ++i) {
      const S want = fx::from_float<S>(of[i]);
      if (want.bits != o16[i].bits && !(std::isnan(of[i]) && std::isnan(fx::to_float(o16[i])))) ++bad;
    }
    if (bad) {
      g_failures += int(bad);
      std::fprintf(stderr, "FAIL [%s] rowwise op %d: %ld mismatch(es)\n", g_where.c_str(), int(op), bad);
    }
  }
}

template <class S>
void run_16bit(fx::Isa isa) {
  g_where = std::string(fx::isa_name(isa)) + (std::is_same_v<S, fx::bfloat16> ? " bfloat16" : " float16");
  if (isa == fx::all_isas()[0]) test_conversions<S>();
  test_16bit_matches_float<S>();
}

}  // namespace

int main() {
  int variants = 0;
  for (fx::Isa isa : fx::all_isas()) {
    fx::Isa parsed = fx::Isa::generic;
    if (!fx::isa_from_name(fx::isa_name(isa), &parsed) || parsed != isa) {
      ++g_failures;
      std::fprintf(stderr, "FAIL isa_from_name(\"%s\") does not give it back\n", fx::isa_name(isa));
    }
    if (!fx::isa_supported(isa)) {
      std::printf("%s: not supported on this CPU, skipped\n", fx::isa_name(isa));
      continue;
    }
    if (!fx::set_active_isa(isa) || fx::active_isa() != isa) {
      ++g_failures;
      std::fprintf(stderr, "FAIL set_active_isa(%s)\n", fx::isa_name(isa));
      continue;
    }
    const int failures_before = g_failures;
    run_all<float>(isa);
    run_all<double>(isa);
    run_16bit<fx::bfloat16>(isa);
    run_16bit<fx::float16>(isa);
    ++variants;
    std::printf("%s: %d failed check(s)\n", fx::isa_name(isa), g_failures - failures_before);
  }
  if (!fx::isa_supported(fx::best_supported_isa()) || variants == 0) {
    ++g_failures;
    std::fprintf(stderr, "FAIL no supported variant\n");
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return EXIT_FAILURE;
  }
  std::printf("all checks passed on %d variant(s)\n", variants);
  return EXIT_SUCCESS;
}
