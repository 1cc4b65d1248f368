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
    const qrows xr = qbuf_rows(&qb);

    /* The per-row phases (norms, quantization, rotary and the KV writes, residual adds) are
     * split by rows among the threads: a row's operations are the same whoever does them. */
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int t = thread_id(), T = thread_count();
        float *sc = scores + t * max_keys;
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
#pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) quant_row(&qb, r, att + r * nq, nq);
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
