/*
 * detmath.c: exp, log, sin and cos that give the same bits on every machine.
 *
 * libm's exp, log, sin, cos and pow are accurate to about one unit in the last place, but not
 * correctly rounded, and glibc picks among several implementations by CPU (with and without
 * FMA), so two machines may differ in the last bit. The reproducible mode (exec.h) and the weight
 * initialisation, which every node of a swarm must compute alike, use these instead: each is a
 * range reduction and a Taylor polynomial evaluated with +, -, *, / and sqrt only, in double,
 * which IEEE 754 rounds the same everywhere (the build never contracts a*b+c into FMA). They are
 * accurate to a few units in the last place of a double, far below the float32 they feed.
 * The exp of a float array has AVX-512 and AVX2 forms that do the very same operations on lanes
 * (no FMA, the same constants, the same order), so they give the scalar function's bits.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "exec_internal.h"

#if defined(__FAST_MATH__)
#error "detmath.c needs IEEE arithmetic: build without -ffast-math"
#endif

/* ln 2 split so that k * LN2_HI is exact for |k| < 2^21: 32 significant bits, then the rest. */
#define LN2_HI  0x1.62e42ffp-1
#define LN2_LO  -4.2009150726810846e-11
#define INV_LN2 1.4426950408889634
/* pi / 2 split the same way (33 significant bits), for |k| < 2^20. */
#define PIO2_HI     0x1.921fb544p+0
#define PIO2_LO     6.077100506506192e-11
#define TWO_OVER_PI 0.6366197723675814
#define TWO_PI      6.283185307179586
/* 1.5 * 2^52: adding it rounds a double of magnitude below 2^51 to an integer. */
#define ROUND_MAGIC    6755399441055744.0
#define SINCOS_ARG_MAX 1e6 /* keeps k below 2^20 */

/* 1 / n! for n = 0..18 (the compiler rounds each quotient correctly). */
static const double inv_factorial[19] = {
    1.0,
    1.0,
    1.0 / 2,
    1.0 / 6,
    1.0 / 24,
    1.0 / 120,
    1.0 / 720,
    1.0 / 5040,
    1.0 / 40320,
    1.0 / 362880,
    1.0 / 3628800,
    1.0 / 39916800,
    1.0 / 479001600,
    1.0 / 6227020800.0,
    1.0 / 87178291200.0,
    1.0 / 1307674368000.0,
    1.0 / 20922789888000.0,
    1.0 / 355687428096000.0,
    1.0 / 6402373705728000.0,
};

static double round_to_integer(double x)
{
    return (x + ROUND_MAGIC) - ROUND_MAGIC;
}

/* 2^k for -1022 <= k <= 1023, built from its bits. */
static double pow2_normal(int64_t k)
{
    NS_ASSERT(k >= -1022 && k <= 1023);
    uint64_t bits = (uint64_t)(k + 1023) << 52;
    double out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* e^r for |r| <= ln2 / 2 + a little, Taylor to degree `degree`. */
static double exp_poly(double r, int degree)
{
    double p = inv_factorial[degree];
    for (int n = degree - 1; n >= 0; n--)
        p = p * r + inv_factorial[n];
    return p;
}

double ns__det_exp(double x)
{
    if (x != x)
        return x;
    if (x > 709.78)
        return INFINITY;
    if (x < -745.2)
        return 0.0;
    double k = round_to_integer(x * INV_LN2);
    double r = (x - k * LN2_HI) - k * LN2_LO;
    double p = exp_poly(r, 13);
    /* ldexp scales exactly (it is an exact IEEE operation, not an approximation). */
    return ldexp(p, (int)k);
}

/* ns__det_expf's range: above it inf, below it 0 (the result would round to 0 anyway). */
#define EXPF_X_MAX  88.8f
#define EXPF_X_MIN  -104.0f
#define EXPF_DEGREE 8 /* error below 3e-10 relative, then one rounding to float */

float ns__det_expf(float x)
{
    if (x != x)
        return x;
    if (x > EXPF_X_MAX)
        return INFINITY;
    if (x < EXPF_X_MIN)
        return 0.0f;
    double xd = x;
    double k = round_to_integer(xd * INV_LN2);
    double r = (xd - k * LN2_HI) - k * LN2_LO;
    double p = exp_poly(r, EXPF_DEGREE);
    return (float)(p * pow2_normal((int64_t)k));
}

/* The same steps on 8 doubles; 2^k from the bits of k + ROUND_MAGIC, whose low bits hold k. */
__attribute__((target("avx512f"))) static __m256 expf_avx512_half(__m256 x)
{
    const __m512d magic = _mm512_set1_pd(ROUND_MAGIC);
    __m512d xd = _mm512_cvtps_pd(x);
    __m512d t = _mm512_add_pd(_mm512_mul_pd(xd, _mm512_set1_pd(INV_LN2)), magic);
    __m512d k = _mm512_sub_pd(t, magic);
    __m512d r = _mm512_sub_pd(_mm512_sub_pd(xd, _mm512_mul_pd(k, _mm512_set1_pd(LN2_HI))),
                              _mm512_mul_pd(k, _mm512_set1_pd(LN2_LO)));
    __m512d p = _mm512_set1_pd(inv_factorial[EXPF_DEGREE]);
    for (int n = EXPF_DEGREE - 1; n >= 0; n--)
        p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(inv_factorial[n]));
    __m512i ki = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(magic));
    __m512i bits = _mm512_slli_epi64(_mm512_add_epi64(ki, _mm512_set1_epi64(1023)), 52);
    return _mm512_cvtpd_ps(_mm512_mul_pd(p, _mm512_castsi512_pd(bits)));
}

__attribute__((target("avx512f"))) static void expf_avx512(float *out, const float *in, size_t n16)
{
    for (size_t i = 0; i < n16; i += 16) {
        __m512 x = _mm512_loadu_ps(in + i);
        __m256 lo = expf_avx512_half(_mm512_castps512_ps256(x));
        __m256 hi =
            expf_avx512_half(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        __m512 y = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)),
                                                       _mm256_castps_pd(hi), 1));
        __mmask16 over = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXPF_X_MAX), _CMP_GT_OQ);
        __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXPF_X_MIN), _CMP_LT_OQ);
        __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        y = _mm512_mask_blend_ps(over, y, _mm512_set1_ps(INFINITY));
        y = _mm512_mask_blend_ps(under, y, _mm512_setzero_ps());
        y = _mm512_mask_blend_ps(nan, y, x);
        _mm512_storeu_ps(out + i, y);
    }
}

__attribute__((target("avx2"))) static __m128 expf_avx2_quarter(__m128 x)
{
    const __m256d magic = _mm256_set1_pd(ROUND_MAGIC);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d t = _mm256_add_pd(_mm256_mul_pd(xd, _mm256_set1_pd(INV_LN2)), magic);
    __m256d k = _mm256_sub_pd(t, magic);
    __m256d r = _mm256_sub_pd(_mm256_sub_pd(xd, _mm256_mul_pd(k, _mm256_set1_pd(LN2_HI))),
                              _mm256_mul_pd(k, _mm256_set1_pd(LN2_LO)));
    __m256d p = _mm256_set1_pd(inv_factorial[EXPF_DEGREE]);
    for (int n = EXPF_DEGREE - 1; n >= 0; n--)
        p = _mm256_add_pd(_mm256_mul_pd(p, r), _mm256_set1_pd(inv_factorial[n]));
    __m256i ki = _mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(magic));
    __m256i bits = _mm256_slli_epi64(_mm256_add_epi64(ki, _mm256_set1_epi64x(1023)), 52);
    return _mm256_cvtpd_ps(_mm256_mul_pd(p, _mm256_castsi256_pd(bits)));
}

__attribute__((target("avx2"))) static void expf_avx2(float *out, const float *in, size_t n8)
{
    for (size_t i = 0; i < n8; i += 8) {
        __m256 x = _mm256_loadu_ps(in + i);
        __m128 lo = expf_avx2_quarter(_mm256_castps256_ps128(x));
        __m128 hi = expf_avx2_quarter(_mm256_extractf128_ps(x, 1));
        __m256 y = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
        __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(EXPF_X_MAX), _CMP_GT_OQ);
        __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(EXPF_X_MIN), _CMP_LT_OQ);
        __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
        y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
        y = _mm256_blendv_ps(y, _mm256_setzero_ps(), under);
        y = _mm256_blendv_ps(y, x, nan);
        _mm256_storeu_ps(out + i, y);
    }
}

void ns__det_expf_array(float *out, const float *in, size_t n)
{
    size_t done = 0;
    switch (ns__simd_current()) {
    case NS__SIMD_AVX512:
        done = n / 16 * 16;
        expf_avx512(out, in, done);
        break;
    case NS__SIMD_AVX2:
        done = n / 8 * 8;
        expf_avx2(out, in, done);
        break;
    case NS__SIMD_SCALAR:
    case NS__SIMD_AUTO:
        break;
    }
    for (size_t i = done; i < n; i++)
        out[i] = ns__det_expf(in[i]);
}

double ns__det_log(double x)
{
    if (x != x || x == INFINITY)
        return x;
    if (x < 0)
        return NAN;
    if (x == 0)
        return -INFINITY;
    int e;
    double m = frexp(x, &e); /* exact: x = m * 2^e, m in [0.5, 1) */
    if (m < 0.70710678118654752) {
        m *= 2;
        e -= 1;
    }
    /* log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716: the odd series to s^21. */
    double s = (m - 1) / (m + 1);
    double s2 = s * s;
    double series = 1.0 / 21;
    for (int n = 19; n >= 1; n -= 2)
        series = series * s2 + 1.0 / n;
    double log_m = 2 * s * series;
    return e * LN2_HI + (e * LN2_LO + log_m);
}

void ns__det_sincos(double x, double *sin_out, double *cos_out)
{
    NS_ASSERT(x == x);
    NS_ASSERT(fabs(x) <= SINCOS_ARG_MAX);
    double k = round_to_integer(x * TWO_OVER_PI);
    double r = (x - k * PIO2_HI) - k * PIO2_LO;
    double r2 = r * r;
    /* sin r = r (1 - r^2/3! + ...), cos r = 1 - r^2/2! + ...; |r| <= pi/4, terms to r^18. */
    double s = inv_factorial[17];
    double c = inv_factorial[18];
    for (int n = 15; n >= 1; n -= 2) {
        s = -s * r2 + inv_factorial[n];
        c = -c * r2 + inv_factorial[n + 1];
    }
    s = s * r;
    c = -c * r2 + 1.0;
    switch ((int64_t)k & 3) {
    case 0:
        *sin_out = s;
        *cos_out = c;
        break;
    case 1:
        *sin_out = c;
        *cos_out = -s;
        break;
    case 2:
        *sin_out = -s;
        *cos_out = -c;
        break;
    case 3:
        *sin_out = -c;
        *cos_out = s;
        break;
    }
}

double ns__det_powi(double base, uint64_t n)
{
    double result = 1.0;
    double square = base;
    while (n != 0) {
        if (n & 1)
            result *= square;
        square *= square;
        n >>= 1;
    }
    return result;
}

double ns__det_normal(uint64_t u1, uint64_t u2)
{
    double a = (double)((u1 >> 11) + 1) * 0x1p-53; /* (0, 1] */
    double b = (double)(u2 >> 11) * 0x1p-53;       /* [0, 1) */
    double radius = sqrt(-2.0 * ns__det_log(a));
    double sin_t;
    double cos_t;
    ns__det_sincos(TWO_PI * b, &sin_t, &cos_t);
    return radius * cos_t;
}

uint64_t ns__mix64(uint64_t x)
{
    uint64_t z = x + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
