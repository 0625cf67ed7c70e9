// AVX2 + FMA vector types (8 floats / 4 doubles). Compile with -mavx2 -mfma.
#pragma once
#include <immintrin.h>
#include <cstdint>

namespace fastxent::avx2_isa {

template <class T> struct Vec;

template <>
struct Vec<float> {
  using value_type = float;
  static constexpr int lanes = 8;
  __m256 v;
  struct Mask { __m256 m; };

  static __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Vec set1(float a) { return {_mm256_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load_partial(const float* p, int64_t n, float fill) {
    __m256i m = tail_mask(n);
    return {_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store_partial(float* p, int64_t n) const { _mm256_maskstore_ps(p, tail_mask(n), v); }
  // Non-temporal store (p 32-byte aligned): bypasses the cache, so writing a
  // gradient bigger than the cache costs no read-for-ownership of its lines.
  static constexpr uintptr_t stream_alignment = 32;
  void stream(float* p) const { _mm256_stream_ps(p, v); }
  static void stream_fence() { _mm_sfence(); }

  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  friend Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  friend Vec fmsub(Vec a, Vec b, Vec c) { return {_mm256_fmsub_ps(a.v, b.v, c.v)}; }  // a*b - c
  friend Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a*b
  friend Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  friend Vec copysign(Vec mag, Vec sgn) {
    __m256 sign = _mm256_set1_ps(-0.0f);
    return {_mm256_or_ps(_mm256_andnot_ps(sign, mag.v), _mm256_and_ps(sign, sgn.v))};
  }
  friend Mask operator!=(Vec a, Vec b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_NEQ_UQ)}; }
  friend Mask operator<(Vec a, Vec b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm256_blendv_ps(b.v, a.v, m.m)}; }
  friend bool any(Mask m) { return _mm256_movemask_ps(m.m) != 0; }
  friend Vec pow2i(Vec n) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
  }
  friend float reduce_add(Vec a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  friend float reduce_max(Vec a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

template <>
struct Vec<double> {
  using value_type = double;
  static constexpr int lanes = 4;
  __m256d v;
  struct Mask { __m256d m; };

  static __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static Vec set1(double a) { return {_mm256_set1_pd(a)}; }
  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Vec load_partial(const double* p, int64_t n, double fill) {
    __m256i m = tail_mask(n);
    return {_mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m))};
  }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void store_partial(double* p, int64_t n) const { _mm256_maskstore_pd(p, tail_mask(n), v); }
  // Non-temporal store (p 32-byte aligned): bypasses the cache, so writing a
  // gradient bigger than the cache costs no read-for-ownership of its lines.
  static constexpr uintptr_t stream_alignment = 32;
  void stream(double* p) const { _mm256_stream_pd(p, v); }
  static void stream_fence() { _mm_sfence(); }

  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_pd(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_pd(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_pd(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_pd(a.v, b.v)}; }
  friend Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  friend Vec fmsub(Vec a, Vec b, Vec c) { return {_mm256_fmsub_pd(a.v, b.v, c.v)}; }  // a*b - c
  friend Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm256_fnmadd_pd(a.v, b.v, c.v)}; }  // c - a*b
  friend Vec max(Vec a, Vec b) { return {_mm256_max_pd(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm256_min_pd(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)}; }
  friend Vec copysign(Vec mag, Vec sgn) {
    __m256d sign = _mm256_set1_pd(-0.0);
    return {_mm256_or_pd(_mm256_andnot_pd(sign, mag.v), _mm256_and_pd(sign, sgn.v))};
  }
  friend Mask operator!=(Vec a, Vec b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_NEQ_UQ)}; }
  friend Mask operator<(Vec a, Vec b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ)}; }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm256_blendv_pd(b.v, a.v, m.m)}; }
  friend bool any(Mask m) { return _mm256_movemask_pd(m.m) != 0; }
  friend Vec pow2i(Vec n) {
    __m256i e = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n.v));
    e = _mm256_add_epi64(e, _mm256_set1_epi64x(1023));
    return {_mm256_castsi256_pd(_mm256_slli_epi64(e, 52))};
  }
  friend double reduce_add(Vec a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  friend double reduce_max(Vec a) {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

template <class T> using VecFor = Vec<T>;

}  // namespace fastxent::avx2_isa
