// Google Benchmark over the kernels themselves (no Python): every SIMD variant this
// CPU supports x float/double x target kind x size x thread count, with the bytes
// each call must move reported as bytes/second, next to fastxent::memory_floor, which
// moves the same bytes ("read x (and y), write g") on the same thread pool (the floor).
//
//   bench_kernels [--fx_sizes=256x1000,2048x32000] [--fx_threads=1,2] [benchmark flags]
//
// Names: xent/<isa>/<dtype>/<target>[/loss_only]/<N>x<K>/threads:<T>,
// floor/<dtype>/<read_x_y|read_x>/<N>x<K>/threads:<T> and exp/<isa>/<dtype> (the
// kernels' vector exp over one block in L1). Every xent case also reports x_floor:
// its time over the floor's (floor_ms, timed right after it, same threads), and
// cyc_per_elem: core cycles per logit summed over the threads, at the clock measured
// at start-up (see measure_core_ghz). The end of the output splits each case into
// its two passes: the statistics pass (the loss_only case) and the gradient pass
// (the rest). Before timing, each case checks its loss against the generic
// variant's: a wrong kernel is reported as an error instead of a time, and the exit
// status is 1.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>  // hardware_concurrency
#include <tuple>
#include <vector>

#include "fastxent/fastxent.hpp"

namespace fx = fastxent;

namespace {

// Same target density as `python -m fastxent bench`: 0.1% of the classes per row
// (at least one) for multi-hot dense and sparse targets.
constexpr double kDensity = 0.001;

bool g_wrong_result = false;  // any case whose loss disagreed: the exit status says so

// The clock the cores run at, in GHz, measured rather than read: `perf stat` is not
// available in every VM, and the nominal (TSC) rate is not the turbo clock. A chain
// of dependent integer adds retires one add per cycle on every x86-64 core, so the
// chain's rate is the clock; the fastest of several short runs (before any kernel
// work, on an idle core) is taken. 0 where it cannot be measured (not x86-64).
double measure_core_ghz() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  double best = 0;
  for (int trial = 0; trial < 20; ++trial) {
    constexpr long kIters = 2'000'000;  // x 8 adds: ~5 ms at 3 GHz
    uint64_t a = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < kIters; ++i)
      asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                   "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                   : "+r"(a));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 8.0 * kIters / s * 1e-9);
  }
  return best;
#else
  return 0;
#endif
}
double g_core_ghz = 0;

// Per-call seconds of every xent case, by name without "/loss_only": the pass split
// printed at the end.
struct PassTimes {
  double full = 0, loss_only = 0;
  int64_t elements = 0;
  int threads = 1;
};
std::map<std::string, PassTimes> g_pass_times;

// Core cycles per element summed over `threads` threads, or 0 without a clock.
double cycles_per_element(double seconds, int64_t elements, int threads) {
  return seconds * g_core_ghz * 1e9 * threads / double(elements);
}

enum class Kind { dense, index32, index64, sparse };
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::dense: return "dense";
    case Kind::index32: return "index32";
    case Kind::index64: return "index64";
    default: return "sparse";
  }
}

struct Size {
  int64_t n, k;
};

// Inputs of one (dtype, N, K), built once and shared by every benchmark of that size.
// Benchmarks are registered size by size, so only one size's arrays are alive at once.
template <class T>
struct Data {
  int64_t n = 0, k = 0;
  std::vector<T> x, y, g, row_loss;
  std::vector<int32_t> t32;
  std::vector<int64_t> t64, indptr, indices;

  Data(int64_t n_, int64_t k_) : n(n_), k(k_), x(n_ * k_), y(n_ * k_, T(0)), g(n_ * k_), row_loss(n_) {
    uint64_t s = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(n * 131 + k);
    auto next = [&s] {  // xorshift64*: fast, and the values' distribution barely matters
      s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
      return s * 2685821657736338717ull;
    };
    for (auto& v : x) v = static_cast<T>((static_cast<double>(next() >> 11) * 0x1.0p-53 - 0.5) * 12.0);
    const int64_t labels = std::max<int64_t>(1, std::llround(kDensity * static_cast<double>(k)));
    indptr.push_back(0);
    for (int64_t i = 0; i < n; ++i) {
      t64.push_back(static_cast<int64_t>(next() % static_cast<uint64_t>(k)));
      t32.push_back(static_cast<int32_t>(t64.back()));
      for (int64_t l = 0; l < labels; ++l) y[i * k + static_cast<int64_t>(next() % static_cast<uint64_t>(k))] = T(1);
      for (int64_t j = 0; j < k; ++j)
        if (y[i * k + j] != T(0)) indices.push_back(j);
      indptr.push_back(static_cast<int64_t>(indices.size()));
    }
  }

  fx::Problem<T> problem(Kind kind, bool with_grad) {
    fx::Problem<T> p;
    p.rows = n;
    p.classes = k;
    p.logits = x.data();
    p.logits_row_stride = k;
    p.row_loss = row_loss.data();
    p.grad = with_grad ? g.data() : nullptr;
    p.grad_row_stride = k;
    switch (kind) {
      case Kind::dense:
        p.target_kind = fx::TargetKind::dense;
        p.dense_targets = y.data();
        p.targets_row_stride = k;
        break;
      case Kind::index32: p.target_kind = fx::TargetKind::index32; p.index32 = t32.data(); break;
      case Kind::index64: p.target_kind = fx::TargetKind::index64; p.index64 = t64.data(); break;
      case Kind::sparse:
        p.target_kind = fx::TargetKind::sparse;
        p.sparse_indptr = indptr.data();
        p.sparse_indices = indices.data();
        break;
    }
    return p;
  }

  // The bytes a call must move: logits read once, targets read once, gradient
  // written once, N row losses written.
  int64_t bytes(Kind kind, bool with_grad) const {
    int64_t b = n * k * int64_t(sizeof(T)) + n * int64_t(sizeof(T));
    if (with_grad) b += n * k * int64_t(sizeof(T));
    switch (kind) {
      case Kind::dense: return b + n * k * int64_t(sizeof(T));
      case Kind::index32: return b + n * 4;
      case Kind::index64: return b + n * 8;
      default: return b + (n + 1) * 8 + int64_t(indices.size()) * 8;
    }
  }
};

template <class T>
Data<T>& data_for(Size s) {
  static std::unique_ptr<Data<T>> cached;
  if (!cached || cached->n != s.n || cached->k != s.k) {
    cached.reset();  // free the previous size first
    cached = std::make_unique<Data<T>>(s.n, s.k);
  }
  return *cached;
}

// pass_key: the case's name without "/loss_only" (print_pass_split pairs the two).
template <class T>
void bm_xent(benchmark::State& state, fx::Isa isa, Kind kind, bool with_grad, Size size, int threads,
             const std::string& pass_key) {
  Data<T>& d = data_for<T>(size);
  const fx::Problem<T> p = d.problem(kind, with_grad);
  fx::set_num_threads(threads);
  fx::set_active_isa(fx::Isa::generic);
  const double expected = fx::softmax_cross_entropy(p);
  fx::set_active_isa(isa);
  const double got = fx::softmax_cross_entropy(p);
  // The variants differ in summation order and exp approximation only: the mean loss
  // agrees to a few eps * log(K); 1e-4 (float) / 1e-9 (double) leaves wide margin.
  const double tol = sizeof(T) == 4 ? 1e-4 : 1e-9;
  if (!std::isfinite(got) || std::fabs(got - expected) > tol * std::fabs(expected)) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "loss %.17g differs from the generic variant's %.17g", got, expected);
    state.SkipWithError(msg);
    g_wrong_result = true;
    fx::set_active_isa(fx::best_supported_isa());
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(fx::softmax_cross_entropy(p));
  const double per_call = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                          double(std::max<benchmark::IterationCount>(1, state.iterations()));
  state.SetBytesProcessed(state.iterations() * d.bytes(kind, with_grad));
  state.SetItemsProcessed(state.iterations() * size.n * size.k);
  state.counters["loss"] = got;
  if (g_core_ghz > 0) state.counters["cyc_per_elem"] = cycles_per_element(per_call, size.n * size.k, threads);
  {
    PassTimes& pt = g_pass_times[pass_key];
    (with_grad ? pt.full : pt.loss_only) = per_call;
    pt.elements = size.n * size.k;
    pt.threads = threads;
  }
  // Side by side: the floor of the same bytes (dense: g = x + y, else g = -x; loss
  // only: the floor without the write is not defined, so the gradient's floor), the
  // median of warm calls right after the kernel's (at least 5, about 50 ms of them:
  // a small floor's single calls are dominated by noise), and the ratio.
  {
    const T* y = kind == Kind::dense ? d.y.data() : nullptr;
    auto once = [&] {
      const auto f0 = std::chrono::steady_clock::now();
      fx::memory_floor<T>(d.x.data(), y, d.g.data(), d.n, d.k);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
    };
    const double first = once();
    const int reps = static_cast<int>(std::min(2000.0, std::max(5.0, 0.05 / std::max(first, 1e-7))));
    std::vector<double> ts;
    for (int r = 0; r < reps; ++r) ts.push_back(once());
    std::sort(ts.begin(), ts.end());
    state.counters["floor_ms"] = 1e3 * ts[ts.size() / 2];
    state.counters["x_floor"] = per_call / ts[ts.size() / 2];
  }
  fx::set_active_isa(fx::best_supported_isa());
}

// The memory floor: g = x + y (dense targets) or g = -x (index/sparse targets),
// fastxent::memory_floor: the same rows split over fastxent's own thread pool as the
// kernel splits them, with the same vectors and store policy (streaming stores for
// large gradients). A ratio to it is the kernel's cost beyond moving its bytes.
template <class T>
void bm_floor(benchmark::State& state, bool read_y, Size size, int threads) {
  Data<T>& d = data_for<T>(size);
  fx::set_num_threads(threads);
  const T* y = read_y ? d.y.data() : nullptr;
  for (auto _ : state) {
    fx::memory_floor<T>(d.x.data(), y, d.g.data(), d.n, d.k);
    benchmark::ClobberMemory();
  }
  const int64_t nk = size.n * size.k * int64_t(sizeof(T));
  state.SetBytesProcessed(state.iterations() * (read_y ? 3 : 2) * nk);
  state.SetItemsProcessed(state.iterations() * size.n * size.k);
}

// The vector exp the kernels use (fastxent::vector_exp) over one kBlock-sized block
// in L1, on the kernels' own arguments x~ - max in [-20, 0]: the arithmetic alone.
template <class T>
void bm_exp(benchmark::State& state, fx::Isa isa) {
  constexpr int64_t kN = 2048;
  std::vector<T> x(kN), out(kN);
  for (int64_t j = 0; j < kN; ++j) x[size_t(j)] = T(-20.0 * double((j * 7919) % kN) / double(kN));
  for (auto _ : state) {
    fx::vector_exp<T>(isa, x.data(), out.data(), kN);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * kN);
  // Elements per cycle as a rate over the timed loop's own seconds, inverted: cycles
  // per element, from the same timing (no second loop).
  if (g_core_ghz > 0)
    state.counters["cyc_per_elem"] = benchmark::Counter(double(state.iterations() * kN) / (g_core_ghz * 1e9),
                                                        benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The two passes of every case timed with and without its gradient, in cycles per
// element (summed over threads): statistics = the loss_only case, gradient = the
// rest. Printed after Google Benchmark's table.
void print_pass_split() {
  if (g_core_ghz <= 0) return;
  bool header = false;
  for (const auto& [name, pt] : g_pass_times) {
    if (pt.full <= 0 || pt.loss_only <= 0) continue;
    if (!header) {
      std::printf("\nCycles per element by pass (core clock %.2f GHz, measured; summed over threads):\n", g_core_ghz);
      std::printf("%-52s %10s %10s %10s\n", "case", "stats", "gradient", "total");
      header = true;
    }
    const double stats = cycles_per_element(pt.loss_only, pt.elements, pt.threads);
    const double total = cycles_per_element(pt.full, pt.elements, pt.threads);
    std::printf("%-52s %10.2f %10.2f %10.2f\n", name.c_str(), stats, total - stats, total);
  }
}

std::vector<Size> parse_sizes(const std::string& s) {
  std::vector<Size> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    std::string part = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    long long n = 0, k = 0;
    char extra = 0;
    if (std::sscanf(part.c_str(), "%lldx%lld%c", &n, &k, &extra) != 2 || n < 1 || k < 1) {
      std::fprintf(stderr, "--fx_sizes: expected NxK[,NxK...], got '%s'\n", part.c_str());
      std::exit(2);
    }
    out.push_back({n, k});
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::vector<int> parse_threads(const std::string& s) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    std::string part = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int t = part == "all" ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))
                          : std::atoi(part.c_str());
    if (t < 1) {
      std::fprintf(stderr, "--fx_threads: expected positive ints or 'all', got '%s'\n", part.c_str());
      std::exit(2);
    }
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

template <class T>
void register_size(const char* dtype, Size s, const std::vector<int>& threads) {
  const std::string nk = std::to_string(s.n) + "x" + std::to_string(s.k);
  for (int t : threads) {
    const std::string tt = "/threads:" + std::to_string(t);
    for (bool read_y : {true, false})
      benchmark::RegisterBenchmark(
          ("floor/" + std::string(dtype) + (read_y ? "/read_x_y/" : "/read_x/") + nk + tt).c_str(),
          [=](benchmark::State& st) { bm_floor<T>(st, read_y, s, t); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    for (fx::Isa isa : fx::all_isas()) {
      if (!fx::isa_supported(isa)) continue;
      const std::vector<std::tuple<Kind, bool>> variants = {
          {Kind::dense, true},   {Kind::index32, true}, {Kind::index64, true},
          {Kind::sparse, true},  {Kind::dense, false},  {Kind::index64, false}};
      for (auto [kind, with_grad] : variants) {
        const std::string what = std::string("xent/") + fx::isa_name(isa) + "/" + dtype + "/" + kind_name(kind);
        const std::string name = what + (with_grad ? "" : "/loss_only") + "/" + nk + tt;
        const std::string pass_key = what + "/" + nk + tt;  // shared by the case's two timings
        // Real time: the kernel's own worker threads do the work, not this thread.
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
          bm_xent<T>(st, isa, kind, with_grad, s, t, pass_key);
        })->UseRealTime()->Unit(benchmark::kMillisecond);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string sizes = "256x1000,4096x1000,512x32000,2048x32000,64x262144";
  std::string threads = "1,all";
  // Take our own flags out before Google Benchmark sees (and rejects) them.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--fx_sizes=", 11) == 0)
      sizes = argv[i] + 11;
    else if (std::strncmp(argv[i], "--fx_threads=", 13) == 0)
      threads = argv[i] + 13;
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  const std::vector<int> thread_counts = parse_threads(threads);
  g_core_ghz = measure_core_ghz();
  for (fx::Isa isa : fx::all_isas()) {
    if (!fx::isa_supported(isa)) continue;
    const std::string name = std::string("exp/") + fx::isa_name(isa);
    benchmark::RegisterBenchmark((name + "/float32").c_str(), [=](benchmark::State& st) { bm_exp<float>(st, isa); });
    benchmark::RegisterBenchmark((name + "/float64").c_str(), [=](benchmark::State& st) { bm_exp<double>(st, isa); });
  }
  for (Size s : parse_sizes(sizes)) {
    register_size<float>("float32", s, thread_counts);
    register_size<double>("float64", s, thread_counts);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("fastxent_best_isa", fx::isa_name(fx::best_supported_isa()));
  benchmark::AddCustomContext("core_ghz_measured", std::to_string(g_core_ghz));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_pass_split();
  fx::set_num_threads(0);
  return g_wrong_result ? 1 : 0;
}
