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
 * The weights are repacked at load in blocks of 16 output columns ("the matmul tiles"
 * below), so that each output is one vector lane: no horizontal sums.
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
#endif

/* ---- the matmul tiles -------------------------------------------------------------------
 *
 * The weights are repacked at load (cpu_kernels.py: pack_q4, pack_q8, pack_cols) in blocks of
 * COLS = 16 output columns. In a block, the 16 columns' codes for 4 consecutive inputs (a
 * "quad") are 64 bytes, column c's four at bytes 4c .. 4c + 3: vpdpbusd's operand layout.
 * So one register holds 16 columns (AVX-512) or 8 (AVX2) for one quad, and a row's 4
 * activation bytes, broadcast against it, add each column's partial dot to its own lane.
 *   4-bit: per block and group, 4 chunks of 64 bytes; chunk i holds quad i in its low
 *          nibbles and quad i + 4 in its high ones. Scale and min: fp16 [N/16, G, 16].
 *   8-bit: per block and group, 8 quads of 64 bytes, each code + 128 as an unsigned byte
 *          (so that the activations are the signed operand, which can be broadcast). The
 *          last N % 16 columns, if any, are a narrower block [G, 8, N % 16, 4]. Scale: fp32 [N].
 * An output (a row and a column) is one lane from start to end: per group, its exact integer
 * dot product, converted to float, times (weight scale x activation step) added with one FMA
 * (4-bit: then the min times the group's activation sum, a second FMA), the groups in order;
 * the 8-bit result is then multiplied by its column's scale. No horizontal sums, and the
 * same lane operations in the AVX-512, AVX2 and scalar code: all three give the same bits.
 * A tile of rows shares each block's weights, unpacked once per group. */
#define COLS 16

int lmnb_kernels_cols(void) { return COLS; }   /* checked against cpu_kernels.COLS at load */

#ifdef LMNB_AVX512
#define TILE 8   /* rows per weight unpack: each row needs one accumulator register (12 or 16
                    measured no faster on this 2-core machine) */
#elif defined(LMNB_AVX2)
#define TILE 4
#else
#define TILE 1
#endif

/* the tiles' loops over rows and quads are unrolled, so each row's accumulators are registers */
#define UNROLL _Pragma("GCC unroll 16")

static inline int32_t load4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Scalar versions of the tiles: the portable build's, and the 8-bit tail block's (t columns,
 * t < 16) in every build. fmaf and the separate product are the vector lanes' operations.
 * Not auto-vectorized: GCC 12 at -O3 with AVX512-VNNI turns the int8 x int8 sum below into
 * vpdpbusd, which takes one side as unsigned, and gets negative codes wrong. */
#if defined(__GNUC__) && !defined(__clang__)
#define SCALAR_LOOPS __attribute__((optimize("no-tree-vectorize")))
#else
#define SCALAR_LOOPS
#endif
SCALAR_LOOPS static void q4_block_scalar(int64_t rt, int64_t K, const int8_t *xq, const float *xd, const float *xs,
                            const uint8_t *w, const uint16_t *s, const uint16_t *m, int64_t N, float *y) {
    const int64_t G = K / GROUP;
    for (int64_t r = 0; r < rt; r++)
        for (int c = 0; c < COLS; c++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < G; g++) {
                const uint8_t *wg = w + g * (COLS * GROUP / 2) + 4 * c;
                const int8_t *a = xq + r * K + g * GROUP;
                int32_t dot = 0;
                for (int i = 0; i < 4; i++)
                    for (int u = 0; u < 4; u++) {
                        const uint8_t b = wg[64 * i + u];
                        dot += (b & 0x0F) * a[4 * i + u] + (b >> 4) * a[16 + 4 * i + u];
                    }
                const float sd = half_to_float(s[g * COLS + c]) * xd[r * G + g];
                acc = fmaf((float)dot, sd, acc);
                acc = fmaf(half_to_float(m[g * COLS + c]), xs[r * G + g], acc);
            }
            y[r * N + c] = acc;
        }
}

SCALAR_LOOPS static void q8_block_scalar(int64_t rt, int64_t K, const int8_t *xq, const float *xd, const uint8_t *w,
                            int64_t t, const float *ws, int64_t N, float *y) {
    const int64_t G = K / GROUP;
    for (int64_t r = 0; r < rt; r++)
        for (int64_t c = 0; c < t; c++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < G; g++) {
                const uint8_t *wg = w + g * GROUP * t + 4 * c;
                const int8_t *a = xq + r * K + g * GROUP;
                int32_t dot = 0;
                for (int j = 0; j < 8; j++)
                    for (int u = 0; u < 4; u++) dot += ((int32_t)wg[4 * t * j + u] - 128) * a[4 * j + u];
                acc = fmaf((float)dot, xd[r * G + g], acc);
            }
            y[r * N + c] = acc * ws[c];
        }
}

/* The vector tiles are written for a compile-time row count RT (1 .. TILE), so that the
 * rows' accumulators stay in registers; a row's operations do not depend on RT.
 * Arguments: K; the tile's activations (codes [RT, K], steps and sums [RT, G], for 8-bit the
 * -128 x code sums [RT, G]); the block's weights and scales; N (y's row stride); y at the
 * block's first column. */
#ifdef LMNB_AVX512
static inline __m512i bcast4_512(const int8_t *p) { return _mm512_set1_epi32(load4(p)); }

/* init + the 16 columns' dots with one group of a row's 32 activation bytes (wq: the
 * group's 8 registers of 4 inputs x 16 columns), in two chains: exact integer sums */
static inline __attribute__((always_inline)) __m512i
group_dot_512(__m512i init, const __m512i *wq, const int8_t *a) {
    __m512i d0 = _mm512_dpbusd_epi32(init, wq[0], bcast4_512(a));
    __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[1], bcast4_512(a + 4));
    d0 = _mm512_dpbusd_epi32(d0, wq[2], bcast4_512(a + 8));
    d1 = _mm512_dpbusd_epi32(d1, wq[3], bcast4_512(a + 12));
    d0 = _mm512_dpbusd_epi32(d0, wq[4], bcast4_512(a + 16));
    d1 = _mm512_dpbusd_epi32(d1, wq[5], bcast4_512(a + 20));
    d0 = _mm512_dpbusd_epi32(d0, wq[6], bcast4_512(a + 24));
    d1 = _mm512_dpbusd_epi32(d1, wq[7], bcast4_512(a + 28));
    return _mm512_add_epi32(d0, d1);
}

#define Q4_TILE(RT)                                                                          \
static void q4_tile_##RT(int64_t K, const int8_t *xq, const float *xd, const float *xs,        \
                         const uint8_t *w, const uint16_t *s, const uint16_t *m, int64_t N,    \
                         float *y) {                                                          \
    const int64_t G = K / GROUP;                                                              \
    const __m512i lo4 = _mm512_set1_epi8(0x0F);                                               \
    __m512 acc[RT];                                                                           \
    UNROLL for (int r = 0; r < RT; r++) acc[r] = _mm512_setzero_ps();                                \
    for (int64_t g = 0; g < G; g++, w += COLS * GROUP / 2) {                                  \
        __m512i wq[8];                                                                        \
        UNROLL for (int i = 0; i < 4; i++) {                                                         \
            const __m512i raw = _mm512_loadu_si512((const void *)(w + 64 * i));               \
            wq[i] = _mm512_and_si512(raw, lo4);                                               \
            wq[i + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);                     \
        }                                                                                     \
        const __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + g * COLS))); \
        const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(m + g * COLS))); \
        UNROLL for (int r = 0; r < RT; r++) {                                                        \
            const __m512i d = group_dot_512(_mm512_setzero_si512(), wq, xq + r * K + g * GROUP); \
            const __m512 f = _mm512_cvtepi32_ps(d);                                           \
            acc[r] = _mm512_fmadd_ps(f, _mm512_mul_ps(sv, _mm512_set1_ps(xd[r * G + g])), acc[r]); \
            acc[r] = _mm512_fmadd_ps(mv, _mm512_set1_ps(xs[r * G + g]), acc[r]);             \
        }                                                                                     \
    }                                                                                         \
    UNROLL for (int r = 0; r < RT; r++) _mm512_storeu_ps(y + r * N, acc[r]);                         \
}

#define Q8_TILE(RT)                                                                          \
static void q8_tile_##RT(int64_t K, const int8_t *xq, const float *xd, const int32_t *xc,      \
                         const uint8_t *w, const float *ws, int64_t N, float *y) {             \
    const int64_t G = K / GROUP;                                                              \
    __m512 acc[RT];                                                                           \
    UNROLL for (int r = 0; r < RT; r++) acc[r] = _mm512_setzero_ps();                                \
    for (int64_t g = 0; g < G; g++, w += COLS * GROUP) {                                      \
        __m512i wq[8];                                                                        \
        UNROLL for (int j = 0; j < 8; j++) wq[j] = _mm512_loadu_si512((const void *)(w + 64 * j));  \
        UNROLL for (int r = 0; r < RT; r++) {                                                        \
            /* (code + 128) . x = code . x + 128 sum(x): start from -128 sum(x) */            \
            const __m512i d = group_dot_512(_mm512_set1_epi32(xc[r * G + g]), wq,            \
                                            xq + r * K + g * GROUP);                          \
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(xd[r * G + g]), acc[r]); \
        }                                                                                     \
    }                                                                                         \
    const __m512 wsv = _mm512_loadu_ps(ws);                                                   \
    UNROLL for (int r = 0; r < RT; r++) _mm512_storeu_ps(y + r * N, _mm512_mul_ps(acc[r], wsv));     \
}
#elif defined(LMNB_AVX2)
/* 8 columns per register: a block is two halves, each done like the AVX-512 loop's lanes
 * 0-7 and 8-15. */
static inline __m256i bcast4_256(const int8_t *p) { return _mm256_set1_epi32(load4(p)); }

#define Q4_TILE(RT)                                                                          \
static void q4_tile_##RT(int64_t K, const int8_t *xq, const float *xd, const float *xs,        \
                         const uint8_t *w, const uint16_t *s, const uint16_t *m, int64_t N,    \
                         float *y) {                                                          \
    const int64_t G = K / GROUP;                                                              \
    const __m256i lo4 = _mm256_set1_epi8(0x0F);                                               \
    for (int h = 0; h < 2; h++) {                                                             \
        __m256 acc[RT];                                                                       \
        UNROLL for (int r = 0; r < RT; r++) acc[r] = _mm256_setzero_ps();                            \
        const uint8_t *wh = w + 32 * h;                                                       \
        for (int64_t g = 0; g < G; g++, wh += COLS * GROUP / 2) {                             \
            __m256i dot[RT];                                                                  \
            UNROLL for (int r = 0; r < RT; r++) dot[r] = _mm256_setzero_si256();                     \
            UNROLL for (int i = 0; i < 4; i++) {                                                     \
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(wh + 64 * i));       \
                const __m256i lo = _mm256_and_si256(raw, lo4);                                \
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4);          \
                UNROLL for (int r = 0; r < RT; r++) {                                                \
                    const int8_t *a = xq + r * K + g * GROUP + 4 * i;                         \
                    dot[r] = Q4_DOT2(dot[r], lo, bcast4_256(a), hi, bcast4_256(a + 16));      \
                }                                                                             \
            }                                                                                 \
            const __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + g * COLS + 8 * h))); \
            const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + g * COLS + 8 * h))); \
            UNROLL for (int r = 0; r < RT; r++) {                                                    \
                const __m256 f = _mm256_cvtepi32_ps(Q4_DOT_END(dot[r]));                      \
                acc[r] = _mm256_fmadd_ps(f, _mm256_mul_ps(sv, _mm256_set1_ps(xd[r * G + g])), acc[r]); \
                acc[r] = _mm256_fmadd_ps(mv, _mm256_set1_ps(xs[r * G + g]), acc[r]);         \
            }                                                                                 \
        }                                                                                     \
        UNROLL for (int r = 0; r < RT; r++) _mm256_storeu_ps(y + r * N + 8 * h, acc[r]);             \
    }                                                                                         \
}

#define Q8_TILE(RT)                                                                          \
static void q8_tile_##RT(int64_t K, const int8_t *xq, const float *xd, const int32_t *xc,      \
                         const uint8_t *w, const float *ws, int64_t N, float *y) {             \
    const int64_t G = K / GROUP;                                                              \
    for (int h = 0; h < 2; h++) {                                                             \
        __m256 acc[RT];                                                                       \
        UNROLL for (int r = 0; r < RT; r++) acc[r] = _mm256_setzero_ps();                            \
        const uint8_t *wh = w + 32 * h;                                                       \
        for (int64_t g = 0; g < G; g++, wh += COLS * GROUP) {                                 \
            __m256i dot[RT];                                                                  \
            UNROLL for (int r = 0; r < RT; r++) dot[r] = Q8_DOT_START(xc[r * G + g]);                \
            UNROLL for (int j = 0; j < 8; j++) {                                                     \
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(wh + 64 * j));       \
                Q8_DOT_PREP(raw);                                                             \
                UNROLL for (int r = 0; r < RT; r++)                                                  \
                    dot[r] = Q8_DOT(dot[r], raw, bcast4_256(xq + r * K + g * GROUP + 4 * j)); \
            }                                                                                 \
            UNROLL for (int r = 0; r < RT; r++)                                                      \
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_set1_ps(xd[r * G + g]), acc[r]); \
        }                                                                                     \
        const __m256 wsv = _mm256_loadu_ps(ws + 8 * h);                                       \
        UNROLL for (int r = 0; r < RT; r++) _mm256_storeu_ps(y + r * N + 8 * h, _mm256_mul_ps(acc[r], wsv)); \
    }                                                                                         \
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
/* 4-bit: the codes unsigned, the activations signed. 8-bit: the codes + 128 unsigned, the
 * sum started from -128 x the activations' sum. */
#define Q4_DOT2(d, w0, a0, w1, a1) _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(d, w0, a0), w1, a1)
#define Q4_DOT_END(d) (d)
#define Q8_DOT_START(c) _mm256_set1_epi32(c)
#define Q8_DOT_PREP(raw) ((void)0)
#define Q8_DOT(d, raw, a) _mm256_dpbusd_epi32(d, raw, a)
#else
/* vpmaddubsw: pairs of u8 x s8 into int16. 4-bit: a pair is at most 2 x 15 x 127 and a lane
 * sums 8 pairs (30,480 < 32,767), so the group's int16 sums are exact; vpmaddwd then gives
 * int32. 8-bit: |code| (<= 127) against the activation with the code's sign, a pair at most
 * 32,258, widened at once. */
#define Q4_DOT2(d, w0, a0, w1, a1) \
    _mm256_add_epi16(d, _mm256_add_epi16(_mm256_maddubs_epi16(w0, a0), _mm256_maddubs_epi16(w1, a1)))
#define Q4_DOT_END(d) _mm256_madd_epi16(d, _mm256_set1_epi16(1))
#define Q8_DOT_START(c) ((void)(c), _mm256_setzero_si256())
#define Q8_DOT_PREP(raw)                                                                      \
    const __m256i code = _mm256_xor_si256(raw, _mm256_set1_epi8((char)0x80));                 \
    const __m256i mag = _mm256_sign_epi8(code, code)
#define Q8_DOT(d, raw, a) \
    _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(mag, _mm256_sign_epi8(a, code)), _mm256_set1_epi16(1)))
#endif
#endif

#ifdef LMNB_AVX2
#ifdef LMNB_AVX512
#define ALL_TILES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8)
#else
#define ALL_TILES(X) X(1) X(2) X(3) X(4)
#endif
ALL_TILES(Q4_TILE)
ALL_TILES(Q8_TILE)
#endif

static void q4_tile(int64_t rt, int64_t K, const int8_t *xq, const float *xd, const float *xs,
                    const uint8_t *w, const uint16_t *s, const uint16_t *m, int64_t N, float *y) {
#ifdef LMNB_AVX2
    switch (rt) {
#define Q4_CASE(RT) case RT: q4_tile_##RT(K, xq, xd, xs, w, s, m, N, y); return;
    ALL_TILES(Q4_CASE)
#undef Q4_CASE
    }
#endif
    q4_block_scalar(rt, K, xq, xd, xs, w, s, m, N, y);
}

static void q8_tile(int64_t rt, int64_t K, const int8_t *xq, const float *xd, const int32_t *xc,
                    const uint8_t *w, const float *ws, int64_t N, float *y) {
#ifdef LMNB_AVX2
    switch (rt) {
#define Q8_CASE(RT) case RT: q8_tile_##RT(K, xq, xd, xc, w, ws, N, y); return;
    ALL_TILES(Q8_CASE)
#undef Q8_CASE
    }
#endif
    (void)xc;
    q8_block_scalar(rt, K, xq, xd, w, COLS, ws, N, y);
}

/* ---- a quantized linear layer and its column-range worker ------------------------------ */

typedef struct {
    int64_t bits, n, k;          /* 4 or 8; output and input features */
    const void *w;               /* the repacked codes (above): 4-bit n * k / 2 bytes, 8-bit n * k */
    const void *scale;           /* 4-bit: fp16 [n/16, k/32, 16]; 8-bit: fp32 [n] */
    const uint16_t *minv;        /* 4-bit: fp16 [n/16, k/32, 16]; 8-bit: unused */
    const float *bias;           /* [n] or NULL */
} lmnb_linear;

/* Quantized activations of R rows of K inputs: codes [R, K]; per group [R, K/32] the step,
 * the fp32 sum of x, and -128 x the sum of the codes (the 8-bit tiles' offset). */
typedef struct { const int8_t *q; const float *d, *s; const int32_t *c; } qrows;

/* Columns [n0, n1) of y [R, n] = x @ W.T (+ bias), n0 a multiple of 16: a block of 16
 * columns at a time, every tile of rows against it while its weights are in the cache, so
 * the weights are read from memory once whatever the number of rows. */
static void linear_cols(const lmnb_linear *L, int64_t R, qrows x, int64_t n0, int64_t n1, float *y) {
    const int64_t K = L->k, G = K / GROUP, N = L->n;
    for (int64_t b0 = n0; b0 < n1; b0 += COLS) {
        const int64_t width = n1 - b0 < COLS ? n1 - b0 : COLS, blk = b0 / COLS;
        for (int64_t r0 = 0; r0 < R; r0 += TILE) {
            const int64_t rt = R - r0 < TILE ? R - r0 : TILE;
            float *yt = y + r0 * N + b0;
            if (L->bits == 4)
                q4_tile(rt, K, x.q + r0 * K, x.d + r0 * G, x.s + r0 * G,
                        (const uint8_t *)L->w + blk * G * (COLS * GROUP / 2),
                        (const uint16_t *)L->scale + blk * G * COLS, L->minv + blk * G * COLS, N, yt);
            else if (width == COLS)
                q8_tile(rt, K, x.q + r0 * K, x.d + r0 * G, x.c + r0 * G,
                        (const uint8_t *)L->w + b0 * K, (const float *)L->scale + b0, N, yt);
            else
                q8_block_scalar(rt, K, x.q + r0 * K, x.d + r0 * G, (const uint8_t *)L->w + b0 * K,
                                width, (const float *)L->scale + b0, N, yt);
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
typedef struct { int8_t *q; float *d, *s; int32_t *c; } qbuf;

static int qbuf_alloc(qbuf *b, int64_t R, int64_t K) {
    const int64_t qbytes = (R * K + 63) / 64 * 64, G = K / GROUP;
    char *mem = (char *)malloc((size_t)(qbytes + 3 * R * G * (int64_t)sizeof(float)) + 1);
    if (!mem) return -1;
    b->q = (int8_t *)mem;
    b->d = (float *)(mem + qbytes);
    b->s = b->d + R * G;
    b->c = (int32_t *)(b->s + R * G);
    return 0;
}

/* Row r of R rows of K inputs (x: that row) into the buffers; rows are independent. */
static void quant_row(const qbuf *b, int64_t r, const float *x, int64_t K) {
    const int64_t G = K / GROUP;
    int8_t *q = b->q + r * K;
    lmnb_quant_rows(x, 1, K, q, b->d + r * G, b->s + r * G);
    for (int64_t g = 0; g < G; g++) {
        int32_t sum = 0;
        for (int j = 0; j < GROUP; j++) sum += q[g * GROUP + j];
        b->c[r * G + g] = -128 * sum;
    }
}

static qrows qbuf_rows(const qbuf *b) {
    qrows r = {b->q, b->d, b->s, b->c};
    return r;
}

static qrows qbuf_fill(qbuf *b, const float *x, int64_t R, int64_t K) {
    for (int64_t r = 0; r < R; r++) quant_row(b, r, x + r * K, K);
    return qbuf_rows(b);
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

/* ---- attention --------------------------------------------------------------------------
 *
 * A row's attention over its n keys, for the rep query heads that share one KV head, is
 * split into work units of SPLIT consecutive keys. A unit computes, per head, its keys'
 * scores s = (q . k) * scale, their max m, p = e^(s - m), l = sum p and o = sum p v; a
 * merge then combines a row's units in key order: with M the max of their m and
 * w = e^(m - M), out = (sum w o) / (sum w l). Units are computed whole by whichever thread
 * takes them, so a row's result depends on nothing but its own query and keys: not on the
 * other rows of the step, their number, or the thread count.
 *
 * In a unit, the scores come in blocks of KEYS = 16 keys, one lane per key. A key's dot
 * product is 16 lanes (d mod 16) of FMAs over the head dim, lanes l and l + 8 added, then
 * ((v0 + v2) + (v1 + v3)) + ((v4 + v6) + (v5 + v7)): the AVX-512 code does it for 16 keys
 * at once by an add/shuffle tree on the keys' accumulators (no horizontal sum per key), the
 * AVX2 code for 8 keys at once, the portable C key by key. A block's exponentials are one
 * vector of the polynomial below (l adds them by lane: lane j has keys j, j + 16, ..., then
 * the 16 lanes are summed like a dot product's), and o is, per dim, an FMA chain over the
 * keys in order, each V row loaded once for the unit's heads. The three builds run the same
 * operations, so they give the same bits. A partial last block is the block's first key
 * repeated, its scores set to -inf (p = 0). */
#define KEYS 16       /* keys per score block */
#define SPLIT 128     /* keys per work unit: balances a one-row step over the threads */
#define HEAD_LANES 16 /* the head dim is a multiple of this (a key's dot product lanes) */

int lmnb_kernels_keys(void) { return KEYS; }         /* checked against cpu_kernels.py at load */
int lmnb_kernels_split(void) { return SPLIT; }
int lmnb_kernels_head_lanes(void) { return HEAD_LANES; }

/* e^x for x <= 0: x = n ln2 + r (n = round(x log2 e), ln2 in two parts), e^r by its Taylor
 * polynomial of degree 7 (|r| <= ln2 / 2: under 1e-8 relative), times 2^n; 0 below -87. */
#define EXP_MIN (-87.0f)
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.42860682030941723212e-6f
static const float EXP_POLY[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};

static inline float exp_neg(float x) {
    const float xc = x > EXP_MIN ? x : EXP_MIN, n = nearbyintf(xc * LOG2E);
    const float r = fmaf(n, -LN2_LO, fmaf(n, -LN2_HI, xc));
    float p = EXP_POLY[0];
    for (int i = 1; i < 8; i++) p = fmaf(p, r, EXP_POLY[i]);
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return x < EXP_MIN ? 0.0f : p * two_n;
}

/* the 16 lanes of a score block's sums: lanes l and l + 8, then the tree above */
static inline float sum16(const float *p) {
    float v[8];
    for (int l = 0; l < 8; l++) v[l] = p[l] + p[l + 8];
    return ((v[0] + v[2]) + (v[1] + v[3])) + ((v[4] + v[6]) + (v[5] + v[7]));
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#ifdef LMNB_AVX512
typedef __m512 vecf;
#define VW 16
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vstore(p, v) _mm512_storeu_ps(p, v)
#define vset1(x) _mm512_set1_ps(x)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)

ALWAYS_INLINE __m512 exp_neg_512(__m512 x) {
    const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN));   /* NaN -> EXP_MIN, as above */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), xc));
    __m512 p = _mm512_set1_ps(EXP_POLY[0]);
    UNROLL for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_POLY[i]));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    const __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_MIN), _CMP_NLT_UQ), y);
}

/* the dot products of q with 16 keys (D a multiple of 16), one lane per key */
ALWAYS_INLINE __m512 scores_512(const float *q, const float *const *k, int64_t D) {
    __m512 a[KEYS], v[8], s[4];
    UNROLL for (int j = 0; j < KEYS; j++) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + c), _mm512_loadu_ps(k[j] + c), acc);
        a[j] = acc;
    }
    /* v[i]: keys i and i + 8, each lanes l + (l + 8), in the low and high 256 bits */
    UNROLL for (int i = 0; i < 8; i++)
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], 0x44), _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE));
    /* then the AVX2 tree below in each 256-bit half */
    UNROLL for (int i = 0; i < 4; i++)
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    const __m512 t0 = _mm512_add_ps(_mm512_shuffle_ps(s[0], s[1], 0x44), _mm512_shuffle_ps(s[0], s[1], 0xEE));
    const __m512 t1 = _mm512_add_ps(_mm512_shuffle_ps(s[2], s[3], 0x44), _mm512_shuffle_ps(s[2], s[3], 0xEE));
    /* t0: keys 0-3 (v0+v2)+(v1+v3), 0-3 (v4+v6)+(v5+v7), 8-11 ..., 8-11 ...; t1: 4-7, 12-15 */
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    const __m512i hi = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    return _mm512_add_ps(_mm512_permutex2var_ps(t0, lo, t1), _mm512_permutex2var_ps(t0, hi, t1));
}
#elif defined(LMNB_AVX2)
typedef __m256 vecf;
#define VW 8
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vstore(p, v) _mm256_storeu_ps(p, v)
#define vset1(x) _mm256_set1_ps(x)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)

ALWAYS_INLINE __m256 exp_neg_256(__m256 x) {
    const __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), xc));
    __m256 p = _mm256_set1_ps(EXP_POLY[0]);
    UNROLL for (int i = 1; i < 8; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[i]));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(EXP_MIN), _CMP_LT_OQ));
}

/* the dot products of q with 8 keys, one lane per key */
ALWAYS_INLINE __m256 scores_256(const float *q, const float *const *k, int64_t D) {
    __m256 v[8], s[4];
    UNROLL for (int j = 0; j < 8; j++) {
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) {
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k[j] + c), lo);
            hi = _mm256_fmadd_ps(_mm256_loadu_ps(q + c + 8), _mm256_loadu_ps(k[j] + c + 8), hi);
        }
        v[j] = _mm256_add_ps(lo, hi);
    }
    /* per 128-bit lane, keys 2i and 2i + 1: lanes (0 + 2), (1 + 3) / (4 + 6), (5 + 7) */
    UNROLL for (int i = 0; i < 4; i++)
        s[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    const __m256 t0 = _mm256_add_ps(_mm256_shuffle_ps(s[0], s[1], 0x44), _mm256_shuffle_ps(s[0], s[1], 0xEE));
    const __m256 t1 = _mm256_add_ps(_mm256_shuffle_ps(s[2], s[3], 0x44), _mm256_shuffle_ps(s[2], s[3], 0xEE));
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}
#endif

/* one score block: the scores (q . k) * scale of 16 keys into s */
ALWAYS_INLINE void score_block(const float *q, const float *const *k, int64_t D, float scale, float *s) {
#if defined(LMNB_AVX512)
    _mm512_storeu_ps(s, _mm512_mul_ps(scores_512(q, k, D), _mm512_set1_ps(scale)));
#elif defined(LMNB_AVX2)
    _mm256_storeu_ps(s, _mm256_mul_ps(scores_256(q, k, D), _mm256_set1_ps(scale)));
    _mm256_storeu_ps(s + 8, _mm256_mul_ps(scores_256(q, k + 8, D), _mm256_set1_ps(scale)));
#else
    for (int j = 0; j < KEYS; j++) {
        float p[16] = {0};
        for (int64_t c = 0; c < D; c += 16)
            for (int l = 0; l < 16; l++) p[l] = fmaf(q[c + l], k[j][c + l], p[l]);
        s[j] = sum16(p) * scale;
    }
#endif
}

/* the max of the nb blocks of s (exact in any order; a max of 0 may be -0 or +0, which
 * gives the same e^(s - m)) */
static float max_blocks(const float *s, int64_t nb) {
    float lanes[16], m = -INFINITY;
#if defined(LMNB_AVX512)
    __m512 v = _mm512_loadu_ps(s);
    for (int64_t b = 1; b < nb; b++) v = _mm512_max_ps(v, _mm512_loadu_ps(s + b * KEYS));
    _mm512_storeu_ps(lanes, v);
#elif defined(LMNB_AVX2)
    __m256 lo = _mm256_loadu_ps(s), hi = _mm256_loadu_ps(s + 8);
    for (int64_t b = 1; b < nb; b++) {
        lo = _mm256_max_ps(lo, _mm256_loadu_ps(s + b * KEYS));
        hi = _mm256_max_ps(hi, _mm256_loadu_ps(s + b * KEYS + 8));
    }
    _mm256_storeu_ps(lanes, lo);
    _mm256_storeu_ps(lanes + 8, hi);
#else
    for (int l = 0; l < 16; l++) lanes[l] = s[l];
    for (int64_t b = 1; b < nb; b++)
        for (int l = 0; l < 16; l++) lanes[l] = s[b * KEYS + l] > lanes[l] ? s[b * KEYS + l] : lanes[l];
#endif
    for (int l = 0; l < 16; l++) m = lanes[l] > m ? lanes[l] : m;
    return m;
}

/* s[i] = e^(s[i] - m) for the nb blocks of s; returns their sum (lane by lane, then sum16) */
static float exp_blocks(float *s, int64_t nb, float m) {
    float lanes[16];
#if defined(LMNB_AVX512)
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m512 p = exp_neg_512(_mm512_sub_ps(_mm512_loadu_ps(s + b * KEYS), _mm512_set1_ps(m)));
        _mm512_storeu_ps(s + b * KEYS, p);
        acc = _mm512_add_ps(acc, p);
    }
    _mm512_storeu_ps(lanes, acc);
#elif defined(LMNB_AVX2)
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m256 p0 = exp_neg_256(_mm256_sub_ps(_mm256_loadu_ps(s + b * KEYS), _mm256_set1_ps(m)));
        const __m256 p1 = exp_neg_256(_mm256_sub_ps(_mm256_loadu_ps(s + b * KEYS + 8), _mm256_set1_ps(m)));
        _mm256_storeu_ps(s + b * KEYS, p0);
        _mm256_storeu_ps(s + b * KEYS + 8, p1);
        lo = _mm256_add_ps(lo, p0);
        hi = _mm256_add_ps(hi, p1);
    }
    _mm256_storeu_ps(lanes, lo);
    _mm256_storeu_ps(lanes + 8, hi);
#else
    for (int l = 0; l < 16; l++) lanes[l] = 0.0f;
    for (int64_t b = 0; b < nb; b++)
        for (int l = 0; l < 16; l++) {
            s[b * KEYS + l] = exp_neg(s[b * KEYS + l] - m);
            lanes[l] += s[b * KEYS + l];
        }
#endif
    return sum16(lanes);
}

#ifdef LMNB_AVX2
/* o[h][d0 ..] for NH heads and NV vectors of the head dim: per key, its V row's vectors
 * loaded once, an FMA for each head (p from s, a head's scores SPLIT apart) */
ALWAYS_INLINE void pv_tile(int NH, int NV, const float *s, int64_t n, const float *vc, int64_t stride,
                           const int64_t *slots, int64_t d0, float *o, int64_t ostride) {
    vecf acc[3][4];
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int i = 0; i < NV; i++) acc[h][i] = vzero();
    for (int64_t j = 0; j < n; j++) {
        const float *v = vc + slots[j] * stride + d0;
        vecf x[4];
        UNROLL for (int i = 0; i < NV; i++) x[i] = vload(v + i * VW);
        UNROLL for (int h = 0; h < NH; h++) {
            const vecf p = vset1(s[h * SPLIT + j]);
            UNROLL for (int i = 0; i < NV; i++) acc[h][i] = vfma(p, x[i], acc[h][i]);
        }
    }
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int i = 0; i < NV; i++) vstore(o + h * ostride + d0 + i * VW, acc[h][i]);
}
#endif

/* o[h] = sum_j p[h][j] v_j (each dim an FMA chain over the keys in order) for nh heads */
static void pv(int64_t nh, const float *s, int64_t n, const float *vc, int64_t stride, const int64_t *slots,
               int64_t D, float *o, int64_t ostride) {
#ifdef LMNB_AVX2
    const int nv = (D / VW) % 4 == 0 ? 4 : (D / VW) % 2 == 0 ? 2 : 1;
    for (int64_t h0 = 0; h0 < nh; h0 += 3) {
        const int nhb = nh - h0 < 3 ? (int)(nh - h0) : 3;
        for (int64_t d0 = 0; d0 < D; d0 += nv * VW) {
            const float *sh = s + h0 * SPLIT;
            float *oh = o + h0 * ostride;
#define PV_CASE(A, B) if (nhb == A && nv == B) pv_tile(A, B, sh, n, vc, stride, slots, d0, oh, ostride);
            PV_CASE(1, 1) PV_CASE(1, 2) PV_CASE(1, 4) PV_CASE(2, 1) PV_CASE(2, 2) PV_CASE(2, 4)
            PV_CASE(3, 1) PV_CASE(3, 2) PV_CASE(3, 4)
#undef PV_CASE
        }
    }
#else
    for (int64_t h = 0; h < nh; h++)
        for (int64_t d = 0; d < D; d++) o[h * ostride + d] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float *v = vc + slots[j] * stride;
        for (int64_t h = 0; h < nh; h++)
            for (int64_t d = 0; d < D; d++) o[h * ostride + d] = fmaf(s[h * SPLIT + j], v[d], o[h * ostride + d]);
    }
#endif
}

/* One unit: nh heads (queries q, D apart) against n <= SPLIT keys (K/V rows at kc/vc +
 * slots[j] * stride). Per head h, writes part[h * pstride ..]: o [D], m, l. sc: scratch of
 * nh * SPLIT floats. */
static void attend_unit(const float *q, int64_t nh, int64_t D, float scale, const float *kc, const float *vc,
                        int64_t stride, const int64_t *slots, int64_t n, float *sc, float *part, int64_t pstride) {
    const int64_t nb = (n + KEYS - 1) / KEYS;
    for (int64_t b = 0; b < nb; b++) {
        const float *k[KEYS];
        for (int j = 0; j < KEYS; j++) k[j] = kc + slots[b * KEYS + j < n ? b * KEYS + j : b * KEYS] * stride;
        for (int64_t h = 0; h < nh; h++) {
            float *s = sc + h * SPLIT + b * KEYS;
            if (D == 64) score_block(q + h * D, k, 64, scale, s);   /* unrolled for the common dim */
            else score_block(q + h * D, k, D, scale, s);
            for (int64_t j = n - b * KEYS; j < KEYS; j++) s[j] = -INFINITY;
        }
    }
    for (int64_t h = 0; h < nh; h++) {
        float *s = sc + h * SPLIT;
        const float m = max_blocks(s, nb);
        part[h * pstride + D] = m;
        part[h * pstride + D + 1] = exp_blocks(s, nb, m);
    }
    pv(nh, sc, n, vc, stride, slots, D, part, pstride);
}

/* The attention of R rows (see lmnb_decode_step for key_slots, key_off, key_cnt). */
typedef struct {
    int64_t R, heads, kv_heads, D, maxc;   /* maxc: units per row and head, at most */
    float scale;
    const float *q;                        /* row r, head h: q + r * qstride + h * D */
    int64_t qstride;
    const int64_t *slots, *off, *cnt;
    float *part;                           /* [R, heads, maxc, D + 2] */
} attn_job;

static int64_t attn_units_max(const int64_t *key_cnt, int64_t R) {
    int64_t n = 1;
    for (int64_t r = 0; r < R; r++) n = key_cnt[r] > n ? key_cnt[r] : n;
    return (n + SPLIT - 1) / SPLIT;
}

/* every unit, against the K/V caches k and v [slots, kv_heads, D] (inside a parallel
 * region: its threads share them) */
static void attn_units(const attn_job *a, const float *k, const float *v, float *sc) {
    const int64_t rep = a->heads / a->kv_heads, nkv = a->kv_heads * a->D, R = a->R, maxc = a->maxc;
    /* rows fastest: a verify step's rows of one key span follow each other */
#pragma omp for schedule(dynamic)
    for (int64_t u = 0; u < a->kv_heads * maxc * R; u++) {
        const int64_t r = u % R, c = u / R % maxc, kh = u / (R * maxc), k0 = c * SPLIT, n = a->cnt[r];
        if (k0 >= n) continue;
        attend_unit(a->q + r * a->qstride + kh * rep * a->D, rep, a->D, a->scale, k + kh * a->D,
                    v + kh * a->D, nkv, a->slots + a->off[r] + k0, n - k0 < SPLIT ? n - k0 : SPLIT, sc,
                    a->part + ((r * a->heads + kh * rep) * maxc + c) * (a->D + 2), maxc * (a->D + 2));
    }
}

/* row r's output [heads, D] from its units, merged in key order */
static void attn_merge(const attn_job *a, int64_t r, float *out) {
    const int64_t D = a->D, nc = (a->cnt[r] + SPLIT - 1) / SPLIT;
    for (int64_t h = 0; h < a->heads; h++) {
        const float *p = a->part + (r * a->heads + h) * a->maxc * (D + 2);
        float *o = out + h * D, mx = -INFINITY, l = 0.0f;
        for (int64_t c = 0; c < nc; c++) mx = p[c * (D + 2) + D] > mx ? p[c * (D + 2) + D] : mx;
        for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
        for (int64_t c = 0; c < nc; c++) {
            const float *pc = p + c * (D + 2), w = exp_neg(pc[D] - mx);
            l = fmaf(w, pc[D + 1], l);
            for (int64_t d = 0; d < D; d++) o[d] = fmaf(w, pc[d], o[d]);
        }
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < D; d++) o[d] *= inv;
    }
}

/* out [R, heads, D] = the attention of q [R, heads, D] over each row's keys (as in the
 * fused step). Returns 0, -1 when memory ran out, -2 for a head dim it does not take. */
int lmnb_attention(const float *q, int64_t R, int64_t heads, int64_t kv_heads, int64_t D, float scale,
                   const float *k_cache, const float *v_cache, const int64_t *key_slots,
                   const int64_t *key_off, const int64_t *key_cnt, float *out, int nthreads) {
    if (D % HEAD_LANES || heads % kv_heads) return -2;
    const int nt = nthreads > 0 ? nthreads : 1;
    const int64_t maxc = attn_units_max(key_cnt, R);
    float *mem = (float *)malloc(sizeof(float) * (size_t)(R * heads * maxc * (D + 2) + nt * heads * SPLIT));
    if (!mem) return -1;
    const attn_job a = {R, heads, kv_heads, D, maxc, scale, q, heads * D, key_slots, key_off, key_cnt, mem};
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        attn_units(&a, k_cache, v_cache, mem + R * heads * maxc * (D + 2) + thread_id() * heads * SPLIT);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) attn_merge(&a, r, out + r * heads * D);
    }
    free(mem);
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

/* sum_i a[i] b[i]: 16 lanes (i mod 16) of FMAs, lanes l and l + 8 added, then
 * ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)); the last n % 16 in order. The portable
 * C does the same operations. */
static float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float out;
#ifdef LMNB_AVX2
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    out = hsum8(_mm256_add_ps(s0, s1));
#else
    float p[16] = {0}, v[8];
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) p[l] = fmaf(a[i + l], b[i + l], p[l]);
    for (int l = 0; l < 8; l++) v[l] = p[l] + p[l + 8];
    out = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
#endif
    for (; i < n; i++) out += a[i] * b[i];
    return out;
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
 * Every row is computed as it would be alone. Returns 0, -1 when memory ran out, or -2 for
 * a head dim that is not a multiple of HEAD_LANES (or query heads not a multiple of KV heads). */
int lmnb_decode_step(const lmnb_model *m, int64_t R, float *x, const int64_t *pos,
                     const int64_t *out_slot, const int64_t *key_slots, const int64_t *key_off,
                     const int64_t *key_cnt, int nthreads) {
    const int64_t H = m->hidden, D = m->head_dim, nq = m->heads * D, nkv = m->kv_heads * D;
    const int64_t nqkv = nq + 2 * nkv, I = m->inter;
    if (D % HEAD_LANES || m->heads % m->kv_heads) return -2;
    int64_t kmax = H > I ? H : I;
    kmax = kmax > nq ? kmax : nq;
    const int64_t maxc = attn_units_max(key_cnt, R), nparts = R * m->heads * maxc * (D + 2);
    int nt = nthreads > 0 ? nthreads : 1;
    float *res = (float *)malloc(sizeof(float) * (size_t)(R * (2 * H + nqkv + nq + 3 * I) + nparts
                                                          + nt * m->heads * SPLIT));
    qbuf qb;
    if (!res || qbuf_alloc(&qb, R, kmax)) {
        free(res);
        return -1;
    }
    float *h = res + R * H, *qkv = h + R * H, *att = qkv + R * nqkv, *gu = att + R * nq;
    float *act = gu + R * 2 * I, *parts = act + R * I, *scores = parts + nparts;
    memcpy(res, x, sizeof(float) * (size_t)(R * H));
    const qrows xr = qbuf_rows(&qb);
    const attn_job aj = {R, m->heads, m->kv_heads, D, maxc, m->scale, qkv, nqkv, key_slots, key_off,
                         key_cnt, parts};

    /* The per-row phases (norms, quantization, rotary and the KV writes, residual adds) are
     * split by rows among the threads: a row's operations are the same whoever does them. */
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int t = thread_id(), T = thread_count();
        float *sc = scores + t * m->heads * SPLIT;
        int64_t n0, n1;
        for (int64_t li = 0; li < m->n_layers; li++) {
            const lmnb_layer *L = m->layers + li;
            /* attention block */
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) {
                rms_norm_row(res + r * H, L->norm1, m->eps, H, h + r * H);
                quant_row(&qb, r, h + r * H, H);
            }
            split_cols(L->qkv.n, t, T, &n0, &n1);
            linear_cols(&L->qkv, R, xr, n0, n1, qkv);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) {
                float *row = qkv + r * nqkv;
                const float *c = m->cos + pos[r] * D, *s = m->sin + pos[r] * D;
                rope_row(row, m->heads + m->kv_heads, D, c, s);   /* q and k heads are adjacent */
                memcpy(L->k_cache + out_slot[r] * nkv, row + nq, sizeof(float) * (size_t)nkv);
                memcpy(L->v_cache + out_slot[r] * nkv, row + nq + nkv, sizeof(float) * (size_t)nkv);
            }
            attn_units(&aj, L->k_cache, L->v_cache, sc);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) {
                attn_merge(&aj, r, att + r * nq);
                quant_row(&qb, r, att + r * nq, nq);
            }
            split_cols(L->o.n, t, T, &n0, &n1);
            linear_cols(&L->o, R, xr, n0, n1, h);
#pragma omp barrier
            /* MLP block */
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) {
                for (int64_t i = 0; i < H; i++) res[r * H + i] += h[r * H + i];
                rms_norm_row(res + r * H, L->norm2, m->eps, H, h + r * H);
                quant_row(&qb, r, h + r * H, H);
            }
            split_cols(L->gate_up.n, t, T, &n0, &n1);
            linear_cols(&L->gate_up, R, xr, n0, n1, gu);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t ri = 0; ri < R * I; ri++) {   /* silu(gate) * up, element by element */
                const float g = gu[ri / I * 2 * I + ri % I], u = gu[ri / I * 2 * I + I + ri % I];
                act[ri] = g / (1.0f + expf(-g)) * u;
            }
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) quant_row(&qb, r, act + r * I, I);
            split_cols(L->down.n, t, T, &n0, &n1);
            linear_cols(&L->down, R, xr, n0, n1, h);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++)
                for (int64_t i = 0; i < H; i++) res[r * H + i] += h[r * H + i];
        }
    }
    for (int64_t r = 0; r < R; r++) rms_norm_row(res + r * H, m->final_norm, m->eps, H, x + r * H);
    free(res);
    free(qb.q);
    return 0;
}
