/* lmnb's CPU weight-only matmul kernels (built at first use by cpu_kernels.py).
 *
 * y[r, n] = sum_k x[r, k] * W[n, k] for a few rows r (decode, draft verification) with W
 * held as 4-bit codes (groups of 32 along k, w = code * scale + min with fp16 scale and min:
 * GGUF Q4_1's grid and storage) or as
 * int8 codes with one scale per output row.
 *
 * The activations are quantized per row in groups of 32 to int8 (d = max|x| / 127,
 * q = round(x / d)); each group's dot product is exact integer arithmetic, scaled by
 * scale * d. The min term of the 4-bit grid uses the exact fp32 sum of the group's x.
 *
 * Row-invariant by construction: a row's result is computed by the same instructions in
 * the same order whatever the other rows of the call, how many there are, and how the
 * output columns are split among threads. Rows are processed in tiles that share each
 * weight load, so a 15-row call reads the weights once.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LMNB_AVX2 1
#endif

/* IEEE half -> float (the 4-bit grid's scale and min are stored as fp16, as in GGUF) */
static inline float half_to_float(uint16_t h) {
#ifdef LMNB_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {            /* subnormal: renormalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3FF) << 13;
        }
    } else {
        bits = sign | (exp + 112) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

#if defined(LMNB_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define LMNB_AVX512 1
#endif

#define GROUP 32
#ifdef LMNB_AVX512
#define TILE 8   /* rows per weight load: 32 vector registers hold 8 rows' accumulators */
#else
#define TILE 4
#endif

int lmnb_kernels_group(void) { return GROUP; }   /* checked against cpu_kernels.GROUP at load */

int lmnb_kernels_simd(void) {
#if defined(LMNB_AVX512)
    return 3;
#elif defined(LMNB_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return 2;
#elif defined(LMNB_AVX2)
    return 1;
#else
    return 0;
#endif
}

/* x [R, K] fp32 -> xq [R, K] int8, xd [R, G] (the group's step d), xs [R, G] (sum of x) */
void lmnb_quant_rows(const float *x, int64_t R, int64_t K, int8_t *xq, float *xd, float *xs) {
    const int64_t G = K / GROUP;
    for (int64_t r = 0; r < R; r++) {
        for (int64_t g = 0; g < G; g++) {
            const float *v = x + r * K + g * GROUP;
            float amax = 0.0f, sum = 0.0f;
            for (int i = 0; i < GROUP; i++) {
                float a = fabsf(v[i]);
                amax = a > amax ? a : amax;
                sum += v[i];
            }
            float d = amax / 127.0f;
            float id = d > 0.0f ? 1.0f / d : 0.0f;
            int8_t *q = xq + r * K + g * GROUP;
            for (int i = 0; i < GROUP; i++) q[i] = (int8_t)nearbyintf(v[i] * id);
            xd[r * G + g] = d;
            xs[r * G + g] = sum;
        }
    }
}

#ifdef LMNB_AVX2
static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* sum over 32 lanes of u8 a * s8 b, as 8 int32 partial sums */
static inline __m256i dot_u8s8(__m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}
#endif

#ifdef LMNB_AVX2
/* The tile loops are written for a compile-time row count RT (1..TILE), so that each row's
 * accumulators stay in registers. Every row keeps two accumulators (even and odd groups):
 * the same for every RT, so a row's arithmetic does not depend on its tile. */
#define Q4_GROUP_ROWS(RT, gi, acc)                                                          \
    do {                                                                                     \
        __m128i raw = _mm_loadu_si128((const __m128i *)(c + (gi) * 16));                     \
        __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), lo4);    \
        for (int r = 0; r < RT; r++) {                                                       \
            __m256i a = _mm256_loadu_si256((const __m256i *)(xq + r * K + (gi) * GROUP));    \
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(w, a)),                     \
                                     _mm256_broadcast_ss(&sd[r][(gi) - g0]), acc[r]);        \
        }                                                                                    \
    } while (0)

/* One block of groups g0 .. g0 + gn (gn <= 8) of a 4-bit row: each row's combined steps
 * (weight scale x activation step) into sd[r][0 .. gn), and the min term accumulated, as
 * a vector for a whole block (mv) and one group at a time for the last, partial one (mt).
 * Both builds use it, so they form the same products in the same order. */
static inline __attribute__((always_inline)) void
q4_block(int rt, int64_t g0, int64_t gn, int64_t G, const uint16_t *s, const uint16_t *m,
         const float *xd, const float *xs, float (*sd)[8], __m256 *mv, float *mt) {
    if (gn == 8) {
        __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + g0)));
        __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + g0)));
        for (int r = 0; r < rt; r++) {
            _mm256_storeu_ps(sd[r], _mm256_mul_ps(sv, _mm256_loadu_ps(xd + r * G + g0)));
            mv[r] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(xs + r * G + g0), mv[r]);
        }
    } else {
        for (int r = 0; r < rt; r++)
            for (int64_t j = 0; j < gn; j++) {
                sd[r][j] = half_to_float(s[g0 + j]) * xd[r * G + g0 + j];
                mt[r] += half_to_float(m[g0 + j]) * xs[r * G + g0 + j];
            }
    }
}

/* For 8 groups at a time, each row's combined step (weight scale x activation step) is
 * computed once as a vector and its min term accumulated as a vector; the group loop then
 * needs one integer dot, one conversion and one FMA per row and group. */
#define Q4_TILE(RT)                                                                         \
static void q4_tile_##RT(int64_t K, const int8_t *xq, const float *xd, const float *xs,       \
                         const uint8_t *codes, const uint16_t *scale, const uint16_t *minv,  \
                         int64_t n0, int64_t n1, int64_t N, float *y) {                      \
    const int64_t G = K / GROUP;                                                             \
    const __m256i lo4 = _mm256_set1_epi8(0x0F);                                              \
    for (int64_t n = n0; n < n1; n++) {                                                      \
        const uint8_t *c = codes + n * (K / 2);                                              \
        const uint16_t *s = scale + n * G, *m = minv + n * G;                                \
        __m256 a0[RT], a1[RT], mv[RT];                                                       \
        float mt[RT], sd[RT][8];                                                             \
        for (int r = 0; r < RT; r++) {                                                       \
            a0[r] = a1[r] = mv[r] = _mm256_setzero_ps();                                     \
            mt[r] = 0.0f;                                                                    \
        }                                                                                    \
        for (int64_t g0 = 0; g0 < G; g0 += 8) {                                              \
            const int64_t gn = G - g0 < 8 ? G - g0 : 8;                                      \
            q4_block(RT, g0, gn, G, s, m, xd, xs, sd, mv, mt);                               \
            int64_t j = 0;                                                                   \
            for (; j + 2 <= gn; j += 2) {                                                    \
                Q4_GROUP_ROWS(RT, g0 + j, a0);                                               \
                Q4_GROUP_ROWS(RT, g0 + j + 1, a1);                                           \
            }                                                                                \
            if (j < gn) Q4_GROUP_ROWS(RT, g0 + j, a0);                                       \
        }                                                                                    \
        for (int r = 0; r < RT; r++)                                                         \
            y[r * N + n] = hsum8(_mm256_add_ps(a0[r], a1[r])) + (hsum8(mv[r]) + mt[r]);      \
    }                                                                                        \
}
#ifdef LMNB_AVX512
/* The same arithmetic two groups at a time in 512-bit registers: lanes 0-7 hold what the
 * AVX2 loop's even-group accumulator holds, lanes 8-15 the odd one's, and every lane sees
 * the same operations in the same order, so both give bitwise the same results. */
/* The sum of a row's accumulators: the even groups' (a0, with the odd tail group added) and
 * the odd groups' (the high half of az), added lane by lane as the AVX2 loops add theirs. */
static inline float hsum_halves(__m256 a0, __m512 az) {
    return hsum8(_mm256_add_ps(a0, _mm512_extractf32x8_ps(az, 1)));
}

#define Q4_PAIR_ROWS(RT, gi)                                                                 \
    do {                                                                                     \
        __m256i raw = _mm256_loadu_si256((const __m256i *)(c + (gi) * 16));                  \
        __m512i t = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1); \
        __m512i w = _mm512_and_si512(_mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(3, 1, 2, 0)), lo4z); \
        const __m512i idx = _mm512_add_epi32(pick, _mm512_set1_epi32((int)((gi) - g0)));     \
        for (int r = 0; r < RT; r++) {                                                       \
            __m512i a = _mm512_loadu_si512((const void *)(xq + r * K + (gi) * GROUP));       \
            __m512 sc = _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(sdv[r]));          \
            az[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a)), \
                                    sc, az[r]);                                              \
        }                                                                                    \
    } while (0)

#define Q4_TILE512(RT)                                                                      \
static void q4_tile_##RT(int64_t K, const int8_t *xq, const float *xd, const float *xs,       \
                         const uint8_t *codes, const uint16_t *scale, const uint16_t *minv,  \
                         int64_t n0, int64_t n1, int64_t N, float *y) {                      \
    const int64_t G = K / GROUP;                                                             \
    const __m256i lo4 = _mm256_set1_epi8(0x0F);                                              \
    const __m512i lo4z = _mm512_set1_epi8(0x0F);                                             \
    const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);   \
    for (int64_t n = n0; n < n1; n++) {                                                      \
        const uint8_t *c = codes + n * (K / 2);                                              \
        const uint16_t *s = scale + n * G, *m = minv + n * G;                                \
        __m512 az[RT];                                                                       \
        __m256 mv[RT], sdv[RT], a0[RT];                                                      \
        float mt[RT], sd[RT][8];                                                             \
        for (int r = 0; r < RT; r++) {                                                       \
            az[r] = _mm512_setzero_ps();                                                     \
            mv[r] = _mm256_setzero_ps();                                                     \
            mt[r] = 0.0f;                                                                    \
        }                                                                                    \
        int64_t tail = -1;                                                                   \
        for (int64_t g0 = 0; g0 < G; g0 += 8) {                                              \
            const int64_t gn = G - g0 < 8 ? G - g0 : 8;                                      \
            q4_block(RT, g0, gn, G, s, m, xd, xs, sd, mv, mt);                               \
            for (int r = 0; r < RT; r++) sdv[r] = _mm256_loadu_ps(sd[r]);                    \
            int64_t j = 0;                                                                   \
            for (; j + 2 <= gn; j += 2) Q4_PAIR_ROWS(RT, g0 + j);                            \
            if (j < gn) tail = g0 + j;   /* sd still holds its block's steps */              \
        }                                                                                    \
        for (int r = 0; r < RT; r++) a0[r] = _mm512_castps512_ps256(az[r]);                  \
        if (tail >= 0) {   /* the last group, when their count is odd: an even one */        \
            const int64_t g0 = tail / 8 * 8;                                                 \
            Q4_GROUP_ROWS(RT, tail, a0);                                                     \
        }                                                                                    \
        for (int r = 0; r < RT; r++)                                                         \
            y[r * N + n] = hsum_halves(a0[r], az[r]) + (hsum8(mv[r]) + mt[r]);               \
    }                                                                                        \
}
Q4_TILE512(1) Q4_TILE512(2) Q4_TILE512(3) Q4_TILE512(4)
Q4_TILE512(5) Q4_TILE512(6) Q4_TILE512(7) Q4_TILE512(8)
#else
Q4_TILE(1) Q4_TILE(2) Q4_TILE(3) Q4_TILE(4)
#endif

#define Q8_GROUP_ROWS(RT, gi, acc)                                                          \
    do {                                                                                     \
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + (gi) * GROUP));                \
        __m256i wa = _mm256_sign_epi8(wv, wv);  /* |w|; w's sign moves onto a */             \
        for (int r = 0; r < RT; r++) {                                                       \
            __m256i a = _mm256_loadu_si256((const __m256i *)(xq + r * K + (gi) * GROUP));    \
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(wa, _mm256_sign_epi8(a, wv))), \
                                     _mm256_broadcast_ss(xd + r * G + (gi)), acc[r]);        \
        }                                                                                    \
    } while (0)

#define Q8_TILE(RT)                                                                         \
static void q8_tile_##RT(int64_t K, const int8_t *xq, const float *xd,                       \
                         const int8_t *wq, const float *wscale,                              \
                         int64_t n0, int64_t n1, int64_t N, float *y) {                      \
    const int64_t G = K / GROUP;                                                             \
    for (int64_t n = n0; n < n1; n++) {                                                      \
        const int8_t *w = wq + n * K;                                                        \
        __m256 a0[RT], a1[RT];                                                               \
        for (int r = 0; r < RT; r++) a0[r] = a1[r] = _mm256_setzero_ps();                    \
        int64_t g = 0;                                                                       \
        for (; g + 2 <= G; g += 2) {                                                         \
            Q8_GROUP_ROWS(RT, g, a0);                                                        \
            Q8_GROUP_ROWS(RT, g + 1, a1);                                                    \
        }                                                                                    \
        if (g < G) Q8_GROUP_ROWS(RT, g, a0);                                                 \
        for (int r = 0; r < RT; r++)                                                         \
            y[r * N + n] = hsum8(_mm256_add_ps(a0[r], a1[r])) * wscale[n];                   \
    }                                                                                        \
}
#ifdef LMNB_AVX512
#define Q8_TILE512(RT)                                                                      \
static void q8_tile_##RT(int64_t K, const int8_t *xq, const float *xd,                       \
                         const int8_t *wq, const float *wscale,                              \
                         int64_t n0, int64_t n1, int64_t N, float *y) {                      \
    const int64_t G = K / GROUP;                                                             \
    const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);   \
    for (int64_t n = n0; n < n1; n++) {                                                      \
        const int8_t *w = wq + n * K;                                                        \
        __m512 az[RT];                                                                       \
        __m256 a0[RT];                                                                       \
        for (int r = 0; r < RT; r++) az[r] = _mm512_setzero_ps();                            \
        int64_t g = 0;                                                                       \
        for (; g + 2 <= G; g += 2) {                                                         \
            __m512i wv = _mm512_loadu_si512((const void *)(w + g * GROUP));                  \
            __m512i wa = _mm512_abs_epi8(wv);                                                \
            __mmask64 neg = _mm512_movepi8_mask(wv);                                         \
            for (int r = 0; r < RT; r++) {                                                   \
                __m512i a = _mm512_loadu_si512((const void *)(xq + r * K + g * GROUP));      \
                a = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);                 \
                __m512 d = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(               \
                    _mm_castpd_ps(_mm_load_sd((const double *)(xd + r * G + g)))));          \
                az[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wa, a)), \
                                        d, az[r]);                                           \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < RT; r++) a0[r] = _mm512_castps512_ps256(az[r]);                  \
        if (g < G) Q8_GROUP_ROWS(RT, g, a0);                                                 \
        for (int r = 0; r < RT; r++)                                                         \
            y[r * N + n] = hsum_halves(a0[r], az[r]) * wscale[n];                            \
    }                                                                                        \
}
Q8_TILE512(1) Q8_TILE512(2) Q8_TILE512(3) Q8_TILE512(4)
Q8_TILE512(5) Q8_TILE512(6) Q8_TILE512(7) Q8_TILE512(8)
#else
Q8_TILE(1) Q8_TILE(2) Q8_TILE(3) Q8_TILE(4)
#endif

static void q4_tile(int64_t rt, int64_t K, const int8_t *xq, const float *xd, const float *xs,
                    const uint8_t *codes, const uint16_t *scale, const uint16_t *minv,
                    int64_t n0, int64_t n1, int64_t N, float *y) {
    switch (rt) {
    case 1: q4_tile_1(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
    case 2: q4_tile_2(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
    case 3: q4_tile_3(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
#ifdef LMNB_AVX512
    case 4: q4_tile_4(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
    case 5: q4_tile_5(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
    case 6: q4_tile_6(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
    case 7: q4_tile_7(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
    default: q4_tile_8(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
#else
    default: q4_tile_4(K, xq, xd, xs, codes, scale, minv, n0, n1, N, y); break;
#endif
    }
}

static void q8_tile(int64_t rt, int64_t K, const int8_t *xq, const float *xd,
                    const int8_t *wq, const float *wscale,
                    int64_t n0, int64_t n1, int64_t N, float *y) {
    switch (rt) {
    case 1: q8_tile_1(K, xq, xd, wq, wscale, n0, n1, N, y); break;
    case 2: q8_tile_2(K, xq, xd, wq, wscale, n0, n1, N, y); break;
    case 3: q8_tile_3(K, xq, xd, wq, wscale, n0, n1, N, y); break;
#ifdef LMNB_AVX512
    case 4: q8_tile_4(K, xq, xd, wq, wscale, n0, n1, N, y); break;
    case 5: q8_tile_5(K, xq, xd, wq, wscale, n0, n1, N, y); break;
    case 6: q8_tile_6(K, xq, xd, wq, wscale, n0, n1, N, y); break;
    case 7: q8_tile_7(K, xq, xd, wq, wscale, n0, n1, N, y); break;
    default: q8_tile_8(K, xq, xd, wq, wscale, n0, n1, N, y); break;
#else
    default: q8_tile_4(K, xq, xd, wq, wscale, n0, n1, N, y); break;
#endif
    }
}
#else
/* Portable C: the same math, one row at a time (exact integer dots, the same grouping). */
static void q4_tile(int64_t rt, int64_t K, const int8_t *xq, const float *xd, const float *xs,
                    const uint8_t *codes, const uint16_t *scale, const uint16_t *minv,
                    int64_t n0, int64_t n1, int64_t N, float *y) {
    const int64_t G = K / GROUP;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *c = codes + n * (K / 2);
        const uint16_t *s = scale + n * G, *m = minv + n * G;
        for (int64_t r = 0; r < rt; r++) {
            float acc = 0.0f, mt = 0.0f;
            for (int64_t g = 0; g < G; g++) {
                int32_t dot = 0;
                for (int i = 0; i < 16; i++) {
                    dot += (c[g * 16 + i] & 0x0F) * xq[r * K + g * GROUP + i];
                    dot += (c[g * 16 + i] >> 4) * xq[r * K + g * GROUP + 16 + i];
                }
                acc += (float)dot * xd[r * G + g] * half_to_float(s[g]);
                mt += half_to_float(m[g]) * xs[r * G + g];
            }
            y[r * N + n] = acc + mt;
        }
    }
}

static void q8_tile(int64_t rt, int64_t K, const int8_t *xq, const float *xd,
                    const int8_t *wq, const float *wscale,
                    int64_t n0, int64_t n1, int64_t N, float *y) {
    const int64_t G = K / GROUP;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *w = wq + n * K;
        for (int64_t r = 0; r < rt; r++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < G; g++) {
                int32_t dot = 0;
                for (int i = 0; i < GROUP; i++) dot += w[g * GROUP + i] * xq[r * K + g * GROUP + i];
                acc += (float)dot * xd[r * G + g];
            }
            y[r * N + n] = acc * wscale[n];
        }
    }
}
#endif

/* ---- a quantized linear layer and its column-range worker ------------------------------ */

typedef struct {
    int64_t bits, n, k;          /* 4 or 8; output and input features */
    const void *w;               /* 4-bit: uint8 [n, k/2]; 8-bit: int8 [n, k] */
    const void *scale;           /* 4-bit: fp16 [n, k/32]; 8-bit: fp32 [n] */
    const uint16_t *minv;        /* 4-bit: fp16 [n, k/32]; 8-bit: unused */
    const float *bias;           /* [n] or NULL */
} lmnb_linear;

/* Quantized activations of R rows of K inputs. */
typedef struct { const int8_t *q; const float *d, *s; } qrows;

/* Columns [n0, n1) of y [R, n] = x @ W.T (+ bias): a block of columns at a time, every tile
 * of rows against it while its weights are in the cache, so the weights are read from
 * memory once whatever the number of rows. */
#define COL_BLOCK 16
static void linear_cols(const lmnb_linear *L, int64_t R, qrows x, int64_t n0, int64_t n1, float *y) {
    const int64_t K = L->k, G = K / GROUP;
    for (int64_t b0 = n0; b0 < n1; b0 += COL_BLOCK) {
        const int64_t b1 = b0 + COL_BLOCK < n1 ? b0 + COL_BLOCK : n1;
        for (int64_t r0 = 0; r0 < R; r0 += TILE) {
            int64_t rt = R - r0 < TILE ? R - r0 : TILE;
            if (L->bits == 4)
                q4_tile(rt, K, x.q + r0 * K, x.d + r0 * G, x.s + r0 * G, (const uint8_t *)L->w,
                        (const uint16_t *)L->scale, L->minv, b0, b1, L->n, y + r0 * L->n);
            else
                q8_tile(rt, K, x.q + r0 * K, x.d + r0 * G, (const int8_t *)L->w,
                        (const float *)L->scale, b0, b1, L->n, y + r0 * L->n);
        }
    }
    if (L->bias)
        for (int64_t r = 0; r < R; r++)
            for (int64_t n = n0; n < n1; n++) y[r * L->n + n] += L->bias[n];
}

/* This thread's share of the output columns: blocks of 16 columns split evenly, so a
 * thread streams one contiguous part of the weights. */
static void split_cols(int64_t N, int t, int nt, int64_t *n0, int64_t *n1) {
    int64_t blocks = (N + 15) / 16;
    int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    *n0 = b0 * 16;
    *n1 = b1 * 16 < N ? b1 * 16 : N;
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int thread_count(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Buffers for the quantized activations of R rows of up to K inputs. */
typedef struct { int8_t *q; float *d, *s; } qbuf;

static int qbuf_alloc(qbuf *b, int64_t R, int64_t K) {
    const int64_t qbytes = (R * K + 63) / 64 * 64, G = K / GROUP;
    char *mem = (char *)malloc((size_t)(qbytes + 2 * R * G * (int64_t)sizeof(float)) + 1);
    if (!mem) return -1;
    b->q = (int8_t *)mem;
    b->d = (float *)(mem + qbytes);
    b->s = b->d + R * G;
    return 0;
}

static qrows qbuf_fill(qbuf *b, const float *x, int64_t R, int64_t K) {
    lmnb_quant_rows(x, R, K, b->q, b->d, b->s);
    qrows r = {b->q, b->d, b->s};
    return r;
}

/* y [R, n] = x [R, k] @ W.T (+ bias). Returns 0, or -1 when memory ran out. */
int lmnb_linear_forward(const lmnb_linear *L, const float *x, int64_t R, float *y, int nthreads) {
    qbuf b;
    if (qbuf_alloc(&b, R, L->k)) return -1;
    qrows xr = qbuf_fill(&b, x, R, L->k);
    int nt = nthreads > 0 ? nthreads : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t n0, n1;
        split_cols(L->n, thread_id(), thread_count(), &n0, &n1);
        linear_cols(L, R, xr, n0, n1, y);
    }
    free(b.q);
    return 0;
}

/* ---- the fused decoder step ------------------------------------------------------------ */

typedef struct {
    lmnb_linear qkv, o, gate_up, down;
    const float *norm1, *norm2;   /* [hidden] */
    float *k_cache, *v_cache;     /* [slots, kv_heads, head_dim] */
} lmnb_layer;

typedef struct {
    int64_t n_layers, hidden, heads, kv_heads, head_dim, inter;
    float eps, scale;
    const float *cos, *sin;       /* [max_pos, head_dim], HF layout */
    const lmnb_layer *layers;
    const float *final_norm;
} lmnb_model;

static float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float out = 0.0f;
#ifdef LMNB_AVX2
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    out = hsum8(_mm256_add_ps(s0, s1));
#endif
    for (; i < n; i++) out += a[i] * b[i];
    return out;
}

/* y += a * x */
static void axpy_f32(float a, const float *x, float *y, int64_t n) {
    int64_t i = 0;
#ifdef LMNB_AVX2
    __m256 av = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

/* HF LlamaRMSNorm of one row: y = w * (x / sqrt(mean(x^2) + eps)) */
static void rms_norm_row(const float *x, const float *w, float eps, int64_t n, float *y) {
    float rstd = 1.0f / sqrtf(dot_f32(x, x, n) / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = w[i] * (x[i] * rstd);
}

/* HF rotate_half rotary of `heads` heads of one row, in place. */
static void rope_row(float *x, int64_t heads, int64_t d, const float *c, const float *s) {
    const int64_t half = d / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *v = x + h * d;
        for (int64_t i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i + half] + a * s[i + half];
        }
    }
}

/* Runs the decoder layers and the final norm for R rows (each a token of some request):
 *   x        [R, hidden] in: the input embeddings; out: the final norm's output
 *   pos      [R] positions; out_slot [R] the KV slots this step writes
 *   key_slots, key_off [R], key_cnt [R]: row r attends to the slots
 *            key_slots[key_off[r] .. key_off[r] + key_cnt[r]) (its own included)
 * Every row is computed as it would be alone. Returns 0, or -1 when memory ran out. */
int lmnb_decode_step(const lmnb_model *m, int64_t R, float *x, const int64_t *pos,
                     const int64_t *out_slot, const int64_t *key_slots, const int64_t *key_off,
                     const int64_t *key_cnt, int nthreads) {
    const int64_t H = m->hidden, D = m->head_dim, nq = m->heads * D, nkv = m->kv_heads * D;
    const int64_t nqkv = nq + 2 * nkv, I = m->inter, rep = m->heads / m->kv_heads;
    int64_t max_keys = 1, kmax = H > I ? H : I;
    kmax = kmax > nq ? kmax : nq;
    for (int64_t r = 0; r < R; r++) max_keys = key_cnt[r] > max_keys ? key_cnt[r] : max_keys;
    int nt = nthreads > 0 ? nthreads : 1;
    float *res = (float *)malloc(sizeof(float) * (size_t)(R * (2 * H + nqkv + nq + 3 * I)
                                                          + nt * max_keys));
    qbuf qb;
    if (!res || qbuf_alloc(&qb, R, kmax)) {
        free(res);
        return -1;
    }
    float *h = res + R * H, *qkv = h + R * H, *att = qkv + R * nqkv, *gu = att + R * nq;
    float *act = gu + R * 2 * I, *scores = act + R * I;
    memcpy(res, x, sizeof(float) * (size_t)(R * H));
    qrows xr = {0};

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int t = thread_id(), T = thread_count();
        float *sc = scores + t * max_keys;
        int64_t n0, n1;
        for (int64_t li = 0; li < m->n_layers; li++) {
            const lmnb_layer *L = m->layers + li;
            /* attention block */
#pragma omp single
            {
                for (int64_t r = 0; r < R; r++) rms_norm_row(res + r * H, L->norm1, m->eps, H, h + r * H);
                xr = qbuf_fill(&qb, h, R, H);
            }
            split_cols(L->qkv.n, t, T, &n0, &n1);
            linear_cols(&L->qkv, R, xr, n0, n1, qkv);
#pragma omp barrier
#pragma omp single
            for (int64_t r = 0; r < R; r++) {
                float *row = qkv + r * nqkv;
                const float *c = m->cos + pos[r] * D, *s = m->sin + pos[r] * D;
                rope_row(row, m->heads + m->kv_heads, D, c, s);   /* q and k heads are adjacent */
                memcpy(L->k_cache + out_slot[r] * nkv, row + nq, sizeof(float) * (size_t)nkv);
                memcpy(L->v_cache + out_slot[r] * nkv, row + nq + nkv, sizeof(float) * (size_t)nkv);
            }
#pragma omp for schedule(static)
            for (int64_t rh = 0; rh < R * m->heads; rh++) {
                const int64_t r = rh / m->heads, hd = rh % m->heads, kh = hd / rep, n = key_cnt[r];
                const float *q = qkv + r * nqkv + hd * D;
                const int64_t *slots = key_slots + key_off[r];
                float mx = -INFINITY, sum = 0.0f;
                for (int64_t i = 0; i < n; i++) {
                    sc[i] = dot_f32(q, L->k_cache + slots[i] * nkv + kh * D, D) * m->scale;
                    mx = sc[i] > mx ? sc[i] : mx;
                }
                float *o = att + r * nq + hd * D;
                memset(o, 0, sizeof(float) * (size_t)D);
                for (int64_t i = 0; i < n; i++) {
                    float p = expf(sc[i] - mx);
                    sum += p;
                    axpy_f32(p, L->v_cache + slots[i] * nkv + kh * D, o, D);
                }
                const float inv = 1.0f / sum;
                for (int64_t i = 0; i < D; i++) o[i] *= inv;
            }
#pragma omp single
            xr = qbuf_fill(&qb, att, R, nq);
            split_cols(L->o.n, t, T, &n0, &n1);
            linear_cols(&L->o, R, xr, n0, n1, h);
#pragma omp barrier
            /* MLP block */
#pragma omp single
            {
                for (int64_t r = 0; r < R; r++) {
                    for (int64_t i = 0; i < H; i++) res[r * H + i] += h[r * H + i];
                    rms_norm_row(res + r * H, L->norm2, m->eps, H, h + r * H);
                }
                xr = qbuf_fill(&qb, h, R, H);
            }
            split_cols(L->gate_up.n, t, T, &n0, &n1);
            linear_cols(&L->gate_up, R, xr, n0, n1, gu);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t ri = 0; ri < R * I; ri++) {   /* silu(gate) * up, element by element */
                const float g = gu[ri / I * 2 * I + ri % I], u = gu[ri / I * 2 * I + I + ri % I];
                act[ri] = g / (1.0f + expf(-g)) * u;
            }
#pragma omp single
            xr = qbuf_fill(&qb, act, R, I);
            split_cols(L->down.n, t, T, &n0, &n1);
            linear_cols(&L->down, R, xr, n0, n1, h);
#pragma omp barrier
#pragma omp single
            for (int64_t r = 0; r < R; r++)
                for (int64_t i = 0; i < H; i++) res[r * H + i] += h[r * H + i];
        }
    }
    for (int64_t r = 0; r < R; r++) rms_norm_row(res + r * H, m->final_norm, m->eps, H, x + r * H);
    free(res);
    free(qb.q);
    return 0;
}
