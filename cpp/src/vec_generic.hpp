// Portable vector type: L lanes in a plain array. Every operation is a fixed-count
// loop the compiler can vectorize for the baseline ISA (SSE2 on x86-64, NEON on
// aarch64); the kernels see the same interface as the AVX2/AVX-512 types.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastxent/fastxent.hpp"

namespace fastxent::generic_isa {

template <class T> struct IntOf;
template <> struct IntOf<float> { using type = int32_t; static constexpr int mant = 23, bias = 127; };
template <> struct IntOf<double> { using type = int64_t; static constexpr int mant = 52, bias = 1023; };

template <class T, int L>
struct Vec {
  using value_type = T;
  static constexpr int lanes = L;
  T v[L];

  struct Mask { bool m[L]; };

  static Vec set1(T a) { Vec r; for (int i = 0; i < L; ++i) r.v[i] = a; return r; }
  static Vec load(const T* p) { Vec r; std::memcpy(r.v, p, sizeof(r.v)); return r; }
  static Vec load_partial(const T* p, int64_t n, T fill) {
    Vec r;
    for (int i = 0; i < L; ++i) r.v[i] = i < n ? p[i] : fill;
    return r;
  }
  void store(T* p) const { std::memcpy(p, v, sizeof(v)); }
  void store_partial(T* p, int64_t n) const { for (int i = 0; i < L && i < n; ++i) p[i] = v[i]; }
  // No portable non-temporal store: streaming falls back to ordinary stores.
  static constexpr uintptr_t stream_alignment = sizeof(T);
  void stream(T* p) const { store(p); }
  static void stream_fence() {}

  // 16-bit storage (bfloat16 / float16; T = float): widened on load, rounded to
  // nearest even on store (fastxent.hpp's scalar conversions, lane by lane).
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  static Vec load(const H* p) { Vec r; for (int i = 0; i < L; ++i) r.v[i] = to_float(p[i]); return r; }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  static Vec load_partial(const H* p, int64_t n, T fill) {
    Vec r;
    for (int i = 0; i < L; ++i) r.v[i] = i < n ? to_float(p[i]) : fill;
    return r;
  }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void store(H* p) const { for (int i = 0; i < L; ++i) p[i] = from_float<H>(v[i]); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void store_partial(H* p, int64_t n) const { for (int i = 0; i < L && i < n; ++i) p[i] = from_float<H>(v[i]); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void stream(H* p) const { store(p); }

  friend Vec operator+(Vec a, Vec b) { for (int i = 0; i < L; ++i) a.v[i] += b.v[i]; return a; }
  friend Vec operator-(Vec a, Vec b) { for (int i = 0; i < L; ++i) a.v[i] -= b.v[i]; return a; }
  friend Vec operator*(Vec a, Vec b) { for (int i = 0; i < L; ++i) a.v[i] *= b.v[i]; return a; }
  friend Vec operator/(Vec a, Vec b) { for (int i = 0; i < L; ++i) a.v[i] /= b.v[i]; return a; }
  // No FMA instruction on the baseline: a*b + c, a*b - c, c - a*b with two roundings.
  friend Vec fmadd(Vec a, Vec b, Vec c) { for (int i = 0; i < L; ++i) a.v[i] = a.v[i] * b.v[i] + c.v[i]; return a; }
  friend Vec fmsub(Vec a, Vec b, Vec c) { for (int i = 0; i < L; ++i) a.v[i] = a.v[i] * b.v[i] - c.v[i]; return a; }
  friend Vec fnmadd(Vec a, Vec b, Vec c) { for (int i = 0; i < L; ++i) a.v[i] = c.v[i] - a.v[i] * b.v[i]; return a; }
  // x86 MAXPS/MINPS semantics: when either operand is NaN the SECOND is returned.
  friend Vec max(Vec a, Vec b) { for (int i = 0; i < L; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i]; return a; }
  friend Vec min(Vec a, Vec b) { for (int i = 0; i < L; ++i) a.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i]; return a; }
  friend Vec abs(Vec a) { for (int i = 0; i < L; ++i) a.v[i] = a.v[i] < 0 ? -a.v[i] : a.v[i]; return a; }
  // |mag| with the sign of sgn
  friend Vec copysign(Vec mag, Vec sgn) {
    for (int i = 0; i < L; ++i) { T m = mag.v[i] < 0 ? -mag.v[i] : mag.v[i]; mag.v[i] = sgn.v[i] < 0 ? -m : m; }
    return mag;
  }
  friend Mask operator!=(Vec a, Vec b) { Mask r; for (int i = 0; i < L; ++i) r.m[i] = a.v[i] != b.v[i]; return r; }
  friend Mask operator<(Vec a, Vec b) { Mask r; for (int i = 0; i < L; ++i) r.m[i] = a.v[i] < b.v[i]; return r; }
  friend Vec select(Mask m, Vec a, Vec b) { for (int i = 0; i < L; ++i) a.v[i] = m.m[i] ? a.v[i] : b.v[i]; return a; }
  friend bool any(Mask m) { bool r = false; for (int i = 0; i < L; ++i) r |= m.m[i]; return r; }
  // 2^n for integral n in the normal exponent range
  friend Vec pow2i(Vec n) {
    using I = typename IntOf<T>::type;
    Vec r;
    for (int i = 0; i < L; ++i) {
      // NaN / inf lanes (whose result is NaN anyway) map to 0: converting them is UB.
      I k = (n.v[i] > T(-4096) && n.v[i] < T(4096)) ? static_cast<I>(n.v[i]) : I(0);
      I bits = static_cast<I>(k + IntOf<T>::bias) << IntOf<T>::mant;
      std::memcpy(&r.v[i], &bits, sizeof(T));
    }
    return r;
  }
  // p * 2^n for integral n in the normal exponent range.
  friend Vec scale_by_pow2(Vec p, Vec n) { return p * pow2i(n); }
  // Pairwise tree: a fixed order, so results never depend on the caller.
  friend T reduce_add(Vec a) {
    for (int w = L / 2; w > 0; w /= 2) for (int i = 0; i < w; ++i) a.v[i] += a.v[i + w];
    return a.v[0];
  }
  friend T reduce_max(Vec a) {
    for (int w = L / 2; w > 0; w /= 2) for (int i = 0; i < w; ++i) a.v[i] = a.v[i] > a.v[i + w] ? a.v[i] : a.v[i + w];
    return a.v[0];
  }
};

template <class T> using VecFor = Vec<T, 32 / sizeof(T)>;

}  // namespace fastxent::generic_isa
