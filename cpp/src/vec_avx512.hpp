// AVX-512 vector types (16 floats / 8 doubles). Compile with -mavx512f -mavx512dq
// -mavx512bw -mavx512vl (16-bit tails) -mf16c.
#pragma once
#include <immintrin.h>
#include <cstdint>
#include <type_traits>

#include "fastxent/fastxent.hpp"

namespace fastxent::avx512_isa {

template <class T> struct Vec;

template <>
struct Vec<float> {
  using value_type = float;
  static constexpr int lanes = 16;
  __m512 v;
  struct Mask { __mmask16 m; };

  static __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
  static Vec set1(float a) { return {_mm512_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load_partial(const float* p, int64_t n, float fill) {
    return {_mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p)};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store_partial(float* p, int64_t n) const { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  static constexpr uintptr_t stream_alignment = 64;
  void stream(float* p) const { _mm512_stream_ps(p, v); }
  static void stream_fence() { _mm_sfence(); }

  // 16-bit storage: bfloat16 by integer widening and shift, rounding to nearest even
  // in integers (not AVX512_BF16's vcvtneps2bf16, which this unit's flags do not
  // assume and which flushes subnormals to zero); float16 by AVX-512F's vcvtph2ps /
  // vcvtps2ph. Tails by AVX512BW+VL masked 16-bit moves. 16 values = 32 bytes: the
  // streaming store needs 32-byte alignment.
  static Vec from_bits(const bfloat16*, __m256i h) {
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static Vec from_bits(const float16*, __m256i h) { return {_mm512_cvtph_ps(h)}; }
  __m256i to_bits(const bfloat16*) const {
    const __m512i u = _mm512_castps_si512(v), hi = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), hi, _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
  }
  __m256i to_bits(const float16*) const { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  static Vec load(const H* p) { return from_bits(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  static Vec load_partial(const H* p, int64_t n, float fill) {
    const __mmask16 m = tail_mask(n);
    const Vec r = from_bits(p, _mm256_maskz_loadu_epi16(m, p));
    return {_mm512_mask_blend_ps(m, _mm512_set1_ps(fill), r.v)};
  }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void store(H* p) const { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bits(p)); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void store_partial(H* p, int64_t n) const { _mm256_mask_storeu_epi16(p, tail_mask(n), to_bits(p)); }
  template <class H, class = std::enable_if_t<is_16bit_v<H>>>
  void stream(H* p) const { _mm256_stream_si256(reinterpret_cast<__m256i*>(p), to_bits(p)); }

  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
  friend Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  friend Vec fmsub(Vec a, Vec b, Vec c) { return {_mm512_fmsub_ps(a.v, b.v, c.v)}; }  // a*b - c
  friend Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a*b
  friend Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
  friend Vec copysign(Vec mag, Vec sgn) {
    __m512 sign = _mm512_set1_ps(-0.0f);
    return {_mm512_or_ps(_mm512_andnot_ps(sign, mag.v), _mm512_and_ps(sign, sgn.v))};
  }
  friend Mask operator!=(Vec a, Vec b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_UQ)}; }
  friend Mask operator<(Vec a, Vec b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm512_mask_blend_ps(m.m, b.v, a.v)}; }
  friend bool any(Mask m) { return m.m != 0; }
  // p * 2^n for integral n: vscalefps, one instruction for what is four elsewhere
  // (convert, add the bias, shift, multiply), exact over the normal range.
  friend Vec scale_by_pow2(Vec p, Vec n) { return {_mm512_scalef_ps(p.v, n.v)}; }
  // Explicit halving tree (not _mm512_reduce_*), so the order is fixed and documented.
  friend float reduce_add(Vec a) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a.v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  friend float reduce_max(Vec a) {
    __m256 h = _mm256_max_ps(_mm512_castps512_ps256(a.v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

template <>
struct Vec<double> {
  using value_type = double;
  static constexpr int lanes = 8;
  __m512d v;
  struct Mask { __mmask8 m; };

  static __mmask8 tail_mask(int64_t n) { return n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1u); }
  static Vec set1(double a) { return {_mm512_set1_pd(a)}; }
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Vec load_partial(const double* p, int64_t n, double fill) {
    return {_mm512_mask_loadu_pd(_mm512_set1_pd(fill), tail_mask(n), p)};
  }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void store_partial(double* p, int64_t n) const { _mm512_mask_storeu_pd(p, tail_mask(n), v); }
  static constexpr uintptr_t stream_alignment = 64;
  void stream(double* p) const { _mm512_stream_pd(p, v); }
  static void stream_fence() { _mm_sfence(); }

  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_pd(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_pd(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_pd(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_pd(a.v, b.v)}; }
  friend Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  friend Vec fmsub(Vec a, Vec b, Vec c) { return {_mm512_fmsub_pd(a.v, b.v, c.v)}; }  // a*b - c
  friend Vec fnmadd(Vec a, Vec b, Vec c) { return {_mm512_fnmadd_pd(a.v, b.v, c.v)}; }  // c - a*b
  friend Vec max(Vec a, Vec b) { return {_mm512_max_pd(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm512_min_pd(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm512_abs_pd(a.v)}; }
  friend Vec copysign(Vec mag, Vec sgn) {
    __m512d sign = _mm512_set1_pd(-0.0);
    return {_mm512_or_pd(_mm512_andnot_pd(sign, mag.v), _mm512_and_pd(sign, sgn.v))};
  }
  friend Mask operator!=(Vec a, Vec b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_NEQ_UQ)}; }
  friend Mask operator<(Vec a, Vec b) { return {_mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ)}; }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm512_mask_blend_pd(m.m, b.v, a.v)}; }
  friend bool any(Mask m) { return m.m != 0; }
  friend Vec scale_by_pow2(Vec p, Vec n) { return {_mm512_scalef_pd(p.v, n.v)}; }
  friend double reduce_add(Vec a) {
    __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1));
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  friend double reduce_max(Vec a) {
    __m256d h = _mm256_max_pd(_mm512_castpd512_pd256(a.v), _mm512_extractf64x4_pd(a.v, 1));
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

template <class T> using VecFor = Vec<T>;

}  // namespace fastxent::avx512_isa
