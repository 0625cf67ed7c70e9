// Fragment: vector exp and tanh, written once over any vector type V (the
// interface of vec_<isa>.hpp).
// Included inside an ISA namespace by kernels_<isa>.cpp (through isa_unit.inl), so
// each ISA gets its own copy. Needs in scope: the Vec operations of vec_<isa>.hpp.
//
// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a minimax polynomial for
// e^r, and 2^n applied in two steps so that results in the subnormal range round
// once and overflow gives +inf. Handles the whole input range: NaN
// propagates, -inf -> 0, +inf -> +inf. Measured max error against libm is stated
// in README.md and asserted by tests/test_vector_exp.py.

template <class T> struct ExpConstants;
template <> struct ExpConstants<float> {
  static constexpr float hi = 88.8f;     // above: +inf
  static constexpr float lo = -104.0f;   // below: 0 (exp(-104) < half the smallest subnormal)
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f;   // few mantissa bits: n * ln2_hi is exact
  static constexpr float ln2_lo = -2.12194440e-4f;
  static constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23
  static constexpr int min_exp = -126, max_exp = 127;
};
template <> struct ExpConstants<double> {
  static constexpr double hi = 709.8;
  static constexpr double lo = -746.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93145751953125E-1;
  static constexpr double ln2_lo = 1.42860682030941723212E-6;
  static constexpr double round_magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int min_exp = -1022, max_exp = 1023;
};

template <class V>
inline V exp_poly(V r);

template <class V, class T = typename V::value_type>
inline V vexp(V x) {
  using C = ExpConstants<T>;
  // min/max return their second operand for NaN, so NaN survives the clamp.
  x = min(V::set1(C::hi), x);
  x = max(V::set1(C::lo), x);
  // Round to nearest without an instruction the baseline lacks (fused where the
  // ISA has FMA: the units are built with -ffp-contract=off, see cpp/CMakeLists.txt).
  V magic = V::set1(C::round_magic);
  V n = fmadd(x, V::set1(C::log2e), magic) - magic;
  V r = fmadd(n, V::set1(-C::ln2_hi), x);
  r = fmadd(n, V::set1(-C::ln2_lo), r);
  V p = exp_poly(r);
  // 2^n = 2^n1 * 2^n2 with both factors representable, so no intermediate over/underflow.
  V n1 = min(max(n, V::set1(T(C::min_exp))), V::set1(T(C::max_exp)));
  V n2 = n - n1;
  return scale_by_pow2(scale_by_pow2(p, n1), n2);
}

template <class V>
inline V exp_poly(V r) {
  using T = typename V::value_type;
  if constexpr (sizeof(T) == 4) {
    // e^r = 1 + r + r^2 P(r), P of degree 4: minimax for the relative error of e^r
    // on |r| <= ln2/2 (Lawson's iteration in double, coefficients rounded to float):
    // 3.6e-9, a sixteenth of float's half ULP, so the result's error is its rounding.
    // Degree 4, not Cephes' 5: one FMA fewer per element, the same accuracy
    // (tests/test_vector_exp.py). Degree 3 would be 1.1e-7 (up to 2.6 ULP in all).
    V p = V::set1(1.3814540579915047E-3f);
    p = fmadd(p, r, V::set1(8.36874544620514E-3f));
    p = fmadd(p, r, V::set1(4.166838899254799E-2f));
    p = fmadd(p, r, V::set1(1.666652113199234E-1f));
    p = fmadd(p, r, V::set1(4.999999403953552E-1f));
    return fmadd(p, r * r, r + V::set1(1.0f));
  } else {
    // Taylor series to degree 13: the truncation error on |r| <= ln2/2 is < 2^-53.
    V p = V::set1(1.0 / 6227020800.0);          // 1/13!
    p = fmadd(p, r, V::set1(1.0 / 479001600.0)); // 1/12!
    p = fmadd(p, r, V::set1(1.0 / 39916800.0));
    p = fmadd(p, r, V::set1(1.0 / 3628800.0));
    p = fmadd(p, r, V::set1(1.0 / 362880.0));
    p = fmadd(p, r, V::set1(1.0 / 40320.0));
    p = fmadd(p, r, V::set1(1.0 / 5040.0));
    p = fmadd(p, r, V::set1(1.0 / 720.0));
    p = fmadd(p, r, V::set1(1.0 / 120.0));
    p = fmadd(p, r, V::set1(1.0 / 24.0));
    p = fmadd(p, r, V::set1(1.0 / 6.0));
    p = fmadd(p, r, V::set1(0.5));
    return fmadd(p, r * r, r + V::set1(1.0));
  }
}

// exp for the kernels' own arguments x~ - max <= 0 (or NaN): no overflow branch
// and one scaling step. Results below the smallest normal (2^-126 / 2^-1022) are
// flushed to 0: every sum they join is >= 1, so they change nothing but rounding.
template <class V, class T = typename V::value_type>
inline V vexp_nonpos(V x) {
  using C = ExpConstants<T>;
  const V lo = V::set1(T(sizeof(T) == 4 ? -87.3 : -708.3));  // exp(lo) ~ smallest normal
  V xc = max(lo, x);  // NaN survives: max returns its second operand
  V magic = V::set1(C::round_magic);
  V n = fmadd(xc, V::set1(C::log2e), magic) - magic;
  V r = fmadd(n, V::set1(-C::ln2_hi), xc);
  r = fmadd(n, V::set1(-C::ln2_lo), r);
  return select(x < lo, V::set1(T(0)), scale_by_pow2(exp_poly(r), n));
}

// tanh: an odd rational/polynomial (Cephes) for |x| < 0.625, where 1 - 2/(e^2x + 1)
// would cancel; that formula elsewhere. It saturates to exactly +-1 for huge |x|
// and +-inf (e^2x overflows to inf, 2 / inf = 0), which a subnormal soft cap needs.
template <class V, class T = typename V::value_type>
inline V vtanh(V x) {
  V ax = abs(x);
  V z = x * x;
  V small;
  if constexpr (sizeof(T) == 4) {
    V p = V::set1(-5.70498872745E-3f);
    p = fmadd(p, z, V::set1(2.06390887954E-2f));
    p = fmadd(p, z, V::set1(-5.37397155531E-2f));
    p = fmadd(p, z, V::set1(1.33314422036E-1f));
    p = fmadd(p, z, V::set1(-3.33332819422E-1f));
    small = fmadd(p * z, x, x);
  } else {
    V p = V::set1(-9.64399179425052238628E-1);
    p = fmadd(p, z, V::set1(-9.92877231001918586564E1));
    p = fmadd(p, z, V::set1(-1.61468768441708447952E3));
    V q = z + V::set1(1.12811678491632931402E2);
    q = fmadd(q, z, V::set1(2.23548839060100448583E3));
    q = fmadd(q, z, V::set1(4.84406305325125486048E3));
    small = fmadd(z * p / q, x, x);
  }
  V one = V::set1(T(1));
  V two = V::set1(T(2));
  V large = copysign(one - two / (vexp(ax + ax) + one), x);
  // NaN propagates through either branch.
  return select(ax < V::set1(T(0.625)), small, large);
}
