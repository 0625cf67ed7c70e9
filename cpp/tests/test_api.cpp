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
