// AVX2 + FMA vector types (8 floats / 4 doubles). Compile with -mavx2 -mfma -mf16c.
#pragma once
#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastxent/fastxent.hpp"

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

  // 16-bit storage: bfloat16 by integer widening and shift, rounding to nearest even
  // in integers (NaN made quiet, never rounded into infinity); float16 by F16C.
  // 8 values = 16 bytes: the streaming store needs 16-byte alignment.
  static Vec from_bits(const bfloat16*, __m128i h) {
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
  }
  static Vec from_bits(const float16*, __m128i h) { return {_mm256_cvtph_ps(h)}; }
  __m128i to_bits(const bfloat16*) const {
    const __m256i u = _mm256_castps_si256(v), hi = _mm256_srli_epi32(u, 16);
    const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256i qnan = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m256i packed = _mm256_packus_epi32(r, r);  // per 128-bit half: r0-3 r0-3 | r4-7 r4-7
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
  }
  __m128i to_bits(const float16*) const { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  static Vec load(const H* p) { return from_bits(p, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  static Vec load_partial(const H* p, int64_t n, float fill) {
    alignas(16) uint16_t buf[8] = {};
    std::memcpy(buf, p, size_t(n) * 2);
    const Vec r = from_bits(p, _mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
    return {_mm256_blendv_ps(_mm256_set1_ps(fill), r.v, _mm256_castsi256_ps(tail_mask(n)))};
  }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void store(H* p) const { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bits(p)); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void store_partial(H* p, int64_t n) const {
    alignas(16) uint16_t buf[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), to_bits(p));
    std::memcpy(p, buf, size_t(n) * 2);
  }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void stream(H* p) const { _mm_stream_si128(reinterpret_cast<__m128i*>(p), to_bits(p)); }

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
  // p * 2^n for integral n in the normal exponent range.
  friend Vec scale_by_pow2(Vec p, Vec n) { return p * pow2i(n); }
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
  friend Vec scale_by_pow2(Vec p, Vec n) { return p * pow2i(n); }
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
