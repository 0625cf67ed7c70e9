// Fragment: the memory floor (fastxent.hpp's memory_floor), for the benchmarks.
// Not part of the kernel template: it moves the bytes a call must move, g = x + y
// (dense targets: read x, read y, write g) or g = -x (class indices: read x, write
// g), with the same vector width, the same split over the thread pool (whole rows,
// or kBlock-column blocks of a few huge rows) and the same store policy (streaming
// stores above kStreamBytes) as drive() in schedule.inl. Ratios to it measure the
// kernel's arithmetic and scheduling, not the machine's memory.
// Included inside an ISA namespace by kernels_<isa>.cpp (through isa_unit.inl).
// Needs in scope: VecFor<T>, kBlock, num_blocks, kStreamBytes, kMinParallelElements.

template <class T, bool kAdd>
void floor_span(const T* x, const T* y, T* g, int64_t n, bool stream) {
  using V = VecFor<T>;
  constexpr int64_t L = V::lanes;
  int64_t j = 0;
  auto one = [&](int64_t i) { g[i] = kAdd ? T(x[i] + y[i]) : T(-x[i]); };
  if (stream)  // scalar head up to the streaming store's alignment
    for (; j < n && reinterpret_cast<uintptr_t>(g + j) % V::stream_alignment != 0; ++j) one(j);
  const V zero = V::set1(T(0));
  for (; j + L <= n; j += L) {
    const V v = kAdd ? V::load(x + j) + V::load(y + j) : zero - V::load(x + j);
    if (stream) v.stream(g + j);
    else v.store(g + j);
  }
  for (; j < n; ++j) one(j);
}

template <class T>
void run_floor(const T* x, const T* y, T* g, int64_t rows, int64_t classes) {
  using V = VecFor<T>;
  const int64_t n = rows, k = classes, nb = num_blocks(k);
  const bool stream = n * k * int64_t(sizeof(T)) >= kStreamBytes;
  const int threads = n * k < kMinParallelElements ? 1 : num_threads();
  auto span = [&](int64_t off, int64_t len) {
    if (y) floor_span<T, true>(x + off, y + off, g + off, len, stream);
    else floor_span<T, false>(x + off, nullptr, g + off, len, stream);
  };
  if (n >= threads || nb == 1) {
    auto body = [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) span(i * k, k);
      if (stream) V::stream_fence();
    };
    if (threads == 1) body(0, n);
    else detail::parallel_for(n, body);
    return;
  }
  auto blocks = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / nb, j0 = (t % nb) * kBlock;
      span(i * k + j0, std::min(k, j0 + kBlock) - j0);
    }
    if (stream) V::stream_fence();
  };
  detail::parallel_for(n * nb, blocks);
}
