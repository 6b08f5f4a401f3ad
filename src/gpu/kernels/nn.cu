// Network layer kernels: the device twins of src/nn (GroupNorm with fused modulation and
// SiLU, SiLU, elementwise updates, attention softmax, im2col/col2im around cuBLAS GEMMs,
// 2x resampling, channel concat/split, the sinusoidal timestep embedding) and the backward
// passes the input VJP needs.
//
// Conventions: f32 data, row-major NCHW (a batch of images is (N, C, H, W), "hw" = H * W);
// element counts are long long so batched activations past 2^31 entries index correctly.
// Elementwise kernels are grid-stride loops (any launch size is correct). Reductions
// accumulate in double, matching the CPU's f64 statistics.

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float silu_(float x) { return x * sigmoidf_(x); }
__device__ __forceinline__ float silu_grad_(float x, float g) {
    float s = sigmoidf_(x);
    return g * s * (1.0f + x * (1.0f - s));
}

// A 2-D loop over rows (grid y, each row one (sample, channel) plane or one output row) and
// the columns of a row (grid x, 32-bit): per-element index arithmetic stays 32-bit and the
// divisions by the plane size happen once per row, not per element (64-bit integer
// division is emulated on the GPU and dominated these kernels).
#define ROW_LOOP(r, rows) for (long long r = blockIdx.y; r < (long long)(rows); r += gridDim.y)
#define COL_LOOP(j, cols) \
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < (cols); j += blockDim.x * gridDim.x)

// Block-wide sum of a double (blockDim.x a multiple of 32, at most 1024); every thread gets
// the total.
__device__ double block_sum(double v) {
    __shared__ double warp_part[32];
    __shared__ double total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) warp_part[wid] = v;
    __syncthreads();
    if (wid == 0) {
        int nw = (blockDim.x + 31) >> 5;
        double s = lane < nw ? warp_part[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if (lane == 0) total = s;
    }
    __syncthreads();
    double r = total;
    __syncthreads();
    return r;
}

// ---------------------------------------------------------------- elementwise

extern "C" __global__ void silu_fwd(float* __restrict__ y, const float* __restrict__ x,
                                    long long n) {
    GRID_STRIDE(i, n) { y[i] = silu_(x[i]); }
}

// dx = dy * silu'(x)
extern "C" __global__ void silu_bwd(float* __restrict__ dx, const float* __restrict__ x,
                                    const float* __restrict__ dy, long long n) {
    GRID_STRIDE(i, n) { dx[i] = silu_grad_(x[i], dy[i]); }
}

// y = a * x + b * y
extern "C" __global__ void axpby(float* __restrict__ y, const float* __restrict__ x, float a,
                                 float b, long long n) {
    GRID_STRIDE(i, n) { y[i] = a * x[i] + b * y[i]; }
}

// Row kernels: rows = N * C planes of hw entries.

// y[n, c, :] = bias[c] (the start of a convolution output before its GEMM adds W col).
extern "C" __global__ void fill_bias_nchw(float* __restrict__ y, const float* __restrict__ bias,
                                          long long c, int hw, long long rows) {
    ROW_LOOP(r, rows) {
        float b = bias[r % c];
        float* yr = y + r * hw;
        COL_LOOP(j, hw) yr[j] = b;
    }
}

// y[n, c, :] += e[n * e_stride + c]: the additive timestep embedding.
extern "C" __global__ void add_channel(float* __restrict__ y, const float* __restrict__ e,
                                       long long e_stride, long long c, int hw,
                                       long long rows) {
    ROW_LOOP(r, rows) {
        float v = e[(r / c) * e_stride + r % c];
        float* yr = y + r * hw;
        COL_LOOP(j, hw) yr[j] += v;
    }
}

// y[n, c, :] *= 1 + e[n * e_stride + c]: the scale-shift norm's scale, in its backward.
extern "C" __global__ void mul_channel_plus1(float* __restrict__ y, const float* __restrict__ e,
                                             long long e_stride, long long c, int hw,
                                             long long rows) {
    ROW_LOOP(r, rows) {
        float v = 1.0f + e[(r / c) * e_stride + r % c];
        float* yr = y + r * hw;
        COL_LOOP(j, hw) yr[j] *= v;
    }
}

// dst[n, dst_off + k, :] = src[n, src_off + k, :] for k < c (rows = n * c): concat and split
// of skips.
extern "C" __global__ void channel_copy(float* __restrict__ dst, long long dst_c,
                                        long long dst_off, const float* __restrict__ src,
                                        long long src_c, long long src_off, long long c,
                                        int hw, long long rows) {
    ROW_LOOP(r, rows) {
        long long k = r % c, b = r / c;
        float* d = dst + (b * dst_c + dst_off + k) * hw;
        const float* sp = src + (b * src_c + src_off + k) * hw;
        COL_LOOP(j, hw) d[j] = sp[j];
    }
}

// ---------------------------------------------------------------- GroupNorm
//
// The (n, g) block of a (N, C, *) input is contiguous: blk = (C / groups) * hw entries from
// (n * groups + g) * blk. Statistics are sums in double over chunks of a block (grid
// (chunks, N * groups)), combined by a finalize kernel into stats[2 ng] = mean,
// stats[2 ng + 1] = 1 / sqrt(var + eps) (biased variance), both double.

extern "C" __global__ void gn_partial(const float* __restrict__ x, long long blk,
                                      long long chunk_len, double* __restrict__ part) {
    long long ng = blockIdx.y;
    long long start = (long long)blockIdx.x * chunk_len;
    long long end = min(start + chunk_len, blk);
    const float* xb = x + ng * blk;
    double s = 0.0, s2 = 0.0;
    for (long long j = start + threadIdx.x; j < end; j += blockDim.x) {
        double v = xb[j];
        s += v;
        s2 += v * v;
    }
    s = block_sum(s);
    s2 = block_sum(s2);
    if (threadIdx.x == 0) {
        long long o = (ng * gridDim.x + blockIdx.x) * 2;
        part[o] = s;
        part[o + 1] = s2;
    }
}

extern "C" __global__ void gn_finalize(const double* __restrict__ part, int chunks,
                                       long long blk, float eps, double* __restrict__ stats,
                                       int ng_total) {
    int ng = blockIdx.x * blockDim.x + threadIdx.x;
    if (ng >= ng_total) return;
    double s = 0.0, s2 = 0.0;
    for (int k = 0; k < chunks; ++k) {
        s += part[(ng * (long long)chunks + k) * 2];
        s2 += part[(ng * (long long)chunks + k) * 2 + 1];
    }
    double len = blk > 0 ? (double)blk : 1.0;
    double mean = s / len;
    double var = fmax(s2 / len - mean * mean, 0.0);
    stats[2 * ng] = mean;
    stats[2 * ng + 1] = 1.0 / sqrt(var + (double)eps);
}

// y = ((x - mean) * (rstd w[c]) + b[c]) * (1 + scale[n, c]) + shift[n, c], then SiLU when
// silu != 0. scale/shift may be null (no modulation); their row stride is mod_stride (the
// width of the embedding projection the scale-shift halves are read from).
extern "C" __global__ void gn_apply(float* __restrict__ y, const float* __restrict__ x,
                                    const double* __restrict__ stats,
                                    const float* __restrict__ w, const float* __restrict__ b,
                                    const float* __restrict__ scale,
                                    const float* __restrict__ shift, long long mod_stride,
                                    int silu, long long c, long long groups, int hw,
                                    long long rows) {
    long long cg = c / groups;
    ROW_LOOP(r, rows) {
        long long ch = r % c, n = r / c;
        long long ng = n * groups + ch / cg;
        float m = (float)stats[2 * ng];
        float a = (float)(stats[2 * ng + 1] * (double)w[ch]);
        float bb = b[ch];
        float mul = 1.0f, add = 0.0f;
        if (scale != nullptr) {
            mul = 1.0f + scale[n * mod_stride + ch];
            add = shift[n * mod_stride + ch];
        }
        const float* xr = x + r * hw;
        float* yr = y + r * hw;
        COL_LOOP(j, hw) {
            float v = (xr[j] - m) * a + bb;
            if (scale != nullptr) v = v * mul + add;
            yr[j] = silu ? silu_(v) : v;
        }
    }
}

// Backward partial sums per chunk of an (n, g) block: sum w[c] dy and sum w[c] dy (x - m).
extern "C" __global__ void gn_bwd_partial(const float* __restrict__ x,
                                          const float* __restrict__ dy,
                                          const double* __restrict__ stats,
                                          const float* __restrict__ w, long long groups,
                                          long long cg, long long hw, long long chunk_len,
                                          double* __restrict__ part) {
    long long ng = blockIdx.y;
    long long blk = cg * hw;
    long long start = (long long)blockIdx.x * chunk_len;
    long long end = min(start + chunk_len, blk);
    long long c0 = (ng % groups) * cg;
    float m = (float)stats[2 * ng];
    const float* xb = x + ng * blk;
    const float* db = dy + ng * blk;
    double s1 = 0.0, s2 = 0.0;
    for (long long j = start + threadIdx.x; j < end; j += blockDim.x) {
        // j < cg * hw: a per-block offset, 32-bit.
        double wd = (double)w[c0 + (int)j / (int)hw] * (double)db[j];
        s1 += wd;
        s2 += wd * (double)(xb[j] - m);
    }
    s1 = block_sum(s1);
    s2 = block_sum(s2);
    if (threadIdx.x == 0) {
        long long o = (ng * gridDim.x + blockIdx.x) * 2;
        part[o] = s1;
        part[o + 1] = s2;
    }
}

// coef[2 ng] = mean(w dy), coef[2 ng + 1] = rstd * mean(w dy (x - m)), as f32.
extern "C" __global__ void gn_bwd_finalize(const double* __restrict__ part, int chunks,
                                           long long blk, const double* __restrict__ stats,
                                           float* __restrict__ coef, int ng_total) {
    int ng = blockIdx.x * blockDim.x + threadIdx.x;
    if (ng >= ng_total) return;
    double s1 = 0.0, s2 = 0.0;
    for (int k = 0; k < chunks; ++k) {
        s1 += part[(ng * (long long)chunks + k) * 2];
        s2 += part[(ng * (long long)chunks + k) * 2 + 1];
    }
    double len = blk > 0 ? (double)blk : 1.0;
    double r = (double)(float)stats[2 * ng + 1];
    coef[2 * ng] = (float)(s1 / len);
    coef[2 * ng + 1] = (float)(r * s2 / len);
}

// dx = rstd (dy w[c] - m1 - xh m2), xh = (x - mean) rstd.
extern "C" __global__ void gn_bwd_apply(float* __restrict__ dx, const float* __restrict__ x,
                                        const float* __restrict__ dy,
                                        const double* __restrict__ stats,
                                        const float* __restrict__ coef,
                                        const float* __restrict__ w, long long c,
                                        long long groups, int hw, long long rows) {
    long long cg = c / groups;
    ROW_LOOP(row, rows) {
        long long ch = row % c, n = row / c;
        long long ng = n * groups + ch / cg;
        float m = (float)stats[2 * ng];
        float r = (float)stats[2 * ng + 1];
        float wc = w[ch], m1 = coef[2 * ng], m2 = coef[2 * ng + 1];
        const float* xr = x + row * hw;
        const float* dr = dy + row * hw;
        float* o = dx + row * hw;
        COL_LOOP(j, hw) {
            float xh = (xr[j] - m) * r;
            o[j] = r * (dr[j] * wc - m1 - xh * m2);
        }
    }
}

// ---------------------------------------------------------------- attention softmax

// In place, one block per row of length t: p = softmax(scale * p) (max subtracted, the sum
// in double).
extern "C" __global__ void softmax_rows(float* __restrict__ p, long long t, float scale) {
    float* row = p + (long long)blockIdx.x * t;
    __shared__ float smax[32];
    __shared__ float gmax;
    float mx = __int_as_float(0xff800000);
    for (long long j = threadIdx.x; j < t; j += blockDim.x) mx = fmaxf(mx, row[j] * scale);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_down_sync(0xffffffffu, mx, o));
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) smax[wid] = mx;
    __syncthreads();
    if (wid == 0) {
        int nw = (blockDim.x + 31) >> 5;
        float m = lane < nw ? smax[lane] : __int_as_float(0xff800000);
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, o));
        if (lane == 0) gmax = m;
    }
    __syncthreads();
    mx = gmax;
    double s = 0.0;
    for (long long j = threadIdx.x; j < t; j += blockDim.x) {
        float e = expf(row[j] * scale - mx);
        row[j] = e;
        s += (double)e;
    }
    s = block_sum(s);
    float inv = (float)(1.0 / s);
    for (long long j = threadIdx.x; j < t; j += blockDim.x) row[j] *= inv;
}

// In place, one block per row: dp = scale * p * (dp - sum_j p_j dp_j).
extern "C" __global__ void softmax_bwd_rows(float* __restrict__ dp, const float* __restrict__ p,
                                            long long t, float scale) {
    long long o = (long long)blockIdx.x * t;
    double s = 0.0;
    for (long long j = threadIdx.x; j < t; j += blockDim.x)
        s += (double)p[o + j] * (double)dp[o + j];
    float d = (float)block_sum(s);
    for (long long j = threadIdx.x; j < t; j += blockDim.x)
        dp[o + j] = scale * p[o + j] * (dp[o + j] - d);
}

// ---------------------------------------------------------------- convolution

// col[img][(c kh + i) kw + j][oy wo + ox] = x[img][c][oy s - p + i][ox s - p + j] (zero
// outside the image), for nimg images of (ci, h, w). Rows (grid y) are (img, kernel row
// (c, i, j)); columns the ho * wo output positions.
extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ col, int ci,
                                  int h, int w, int kh, int kw, int s, int p, int ho, int wo,
                                  long long nimg) {
    int hwo = ho * wo;
    long long k = (long long)ci * kh * kw;
    ROW_LOOP(r, nimg * k) {
        int kk = (int)(r % k);
        long long img = r / k;
        int j = kk % kw, ii = (kk / kw) % kh, c = kk / (kw * kh);
        const float* xc = x + (img * ci + c) * (long long)h * w;
        float* cr = col + r * hwo;
        COL_LOOP(q, hwo) {
            int oy = q / wo, ox = q - oy * wo;
            int y = oy * s - p + ii, xx = ox * s - p + j;
            cr[q] = (y >= 0 && y < h && xx >= 0 && xx < w) ? xc[y * w + xx] : 0.0f;
        }
    }
}

// The adjoint of im2col as a gather (no atomics, deterministic): every input pixel sums the
// column entries that read it. Rows are (img, c) planes; columns the h * w pixels.
extern "C" __global__ void col2im(const float* __restrict__ col, float* __restrict__ dx, int ci,
                                  int h, int w, int kh, int kw, int s, int p, int ho, int wo,
                                  long long nimg) {
    long long hwo = (long long)ho * wo;
    int hw = h * w;
    ROW_LOOP(r, nimg * ci) {
        int c = (int)(r % ci);
        long long img = r / ci;
        const float* cb = col + (img * ci * kh * kw + (long long)c * kh * kw) * hwo;
        float* o = dx + r * hw;
        COL_LOOP(q, hw) {
            int y = q / w, xx = q - y * w;
            float acc = 0.0f;
            for (int a = 0; a < kh; ++a) {
                int ty = y + p - a;
                if (ty < 0 || ty % s != 0) continue;
                int oy = ty / s;
                if (oy >= ho) continue;
                for (int b = 0; b < kw; ++b) {
                    int tx = xx + p - b;
                    if (tx < 0 || tx % s != 0) continue;
                    int ox = tx / s;
                    if (ox >= wo) continue;
                    acc += cb[(long long)(a * kw + b) * hwo + oy * wo + ox];
                }
            }
            o[q] = acc;
        }
    }
}

// ---------------------------------------------------------------- resampling

// Rows are output rows (plane, y); columns the output row's pixels.

// (nc, h, w) -> (nc, 2h, 2w), nearest.
extern "C" __global__ void up2x(float* __restrict__ y, const float* __restrict__ x, int h, int w,
                                long long nc) {
    ROW_LOOP(r, nc * 2 * h) {
        int oy = (int)(r % (2 * h));
        long long b = r / (2 * h);
        const float* xr = x + (b * h + oy / 2) * (long long)w;
        float* yr = y + r * 2 * w;
        COL_LOOP(ox, 2 * w) yr[ox] = xr[ox / 2];
    }
}

// Adjoint of up2x: dx (nc, h, w) = sum of each 2x2 block of dy (nc, 2h, 2w).
extern "C" __global__ void up2x_bwd(float* __restrict__ dx, const float* __restrict__ dy, int h,
                                    int w, long long nc) {
    ROW_LOOP(r, nc * h) {
        int ii = (int)(r % h);
        long long b = r / h;
        const float* d = dy + (b * 2 * h + 2 * ii) * (long long)(2 * w);
        float* o = dx + r * w;
        COL_LOOP(j, w) o[j] = d[2 * j] + d[2 * j + 1] + d[2 * w + 2 * j] + d[2 * w + 2 * j + 1];
    }
}

// (nc, h, w) -> (nc, h/2, w/2), 2x2 mean (odd last row/column dropped).
extern "C" __global__ void pool2x(float* __restrict__ y, const float* __restrict__ x, int h,
                                  int w, long long nc) {
    int ho = h / 2, wo = w / 2;
    ROW_LOOP(r, nc * ho) {
        int ii = (int)(r % ho);
        long long b = r / ho;
        const float* sp = x + (b * h + 2 * ii) * (long long)w;
        float* yr = y + r * wo;
        COL_LOOP(j, wo) yr[j] = 0.25f * (sp[2 * j] + sp[2 * j + 1] + sp[w + 2 * j] + sp[w + 2 * j + 1]);
    }
}

// Adjoint of pool2x: dx (nc, h, w) gets a quarter of its block's gradient, zero on a
// dropped odd row/column.
extern "C" __global__ void pool2x_bwd(float* __restrict__ dx, const float* __restrict__ dy,
                                      int h, int w, long long nc) {
    int ho = h / 2, wo = w / 2;
    ROW_LOOP(r, nc * h) {
        int y = (int)(r % h);
        long long b = r / h;
        const float* d = dy + (b * ho + y / 2) * (long long)wo;
        float* o = dx + r * w;
        bool row_in = y / 2 < ho;
        COL_LOOP(xx, w) o[xx] = (row_in && xx / 2 < wo) ? 0.25f * d[xx / 2] : 0.0f;
    }
}

// ---------------------------------------------------------------- timestep embedding

// out (n, dim) = [cos(t freqs), sin(t freqs)] (+ a zero column when dim is odd); freqs (half)
// are computed on the host exactly as the CPU's embedding does.
extern "C" __global__ void timestep_embed(float* __restrict__ out, const float* __restrict__ t,
                                          const float* __restrict__ freqs, int n, int half,
                                          int dim) {
    long long total = (long long)n * dim;
    GRID_STRIDE(i, total) {
        int j = (int)(i % dim), b = (int)(i / dim);
        float v = 0.0f;
        if (j < half) v = cosf(t[b] * freqs[j]);
        else if (j < 2 * half) v = sinf(t[b] * freqs[j - half]);
        out[i] = v;
    }
}

// y[r, :] = bias for rows r < rows of width cols (a linear layer's output before its GEMM).
extern "C" __global__ void fill_bias_rows(float* __restrict__ y, const float* __restrict__ bias,
                                          long long cols, long long total) {
    GRID_STRIDE(i, total) { y[i] = bias[i % cols]; }
}
