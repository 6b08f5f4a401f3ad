// Sampler maths on the device: fused update steps, per-sample reductions (f64 accumulation,
// as the CPU's `dot`), the device-side scalars of conjugate gradients, Adam, and SMC weight
// normalisation and systematic resampling.
//
// Batches are (N, D) flattened: sample b owns entries [b D, (b + 1) D). Per-sample scalars
// live in small device arrays so that no step needs the host: a kernel that uses a scalar
// reads it from device memory.

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

// out = a x + b y (out may alias x or y).
extern "C" __global__ void axpby(float* out, const float* x, const float* y, float a, float b,
                                 long long n) {
    GRID_STRIDE(i, n) { out[i] = a * x[i] + b * y[i]; }
}

// out = a x.
extern "C" __global__ void scale(float* out, const float* x, float a, long long n) {
    GRID_STRIDE(i, n) { out[i] = a * x[i]; }
}

// Tweedie from an eps-predicting network: x0[b, c, :] = (x[b, c, :] - s eps[b, c, :]) / a
// for the first `channels` of the network output `net` (N, out_channels, HW).
extern "C" __global__ void tweedie(const float* __restrict__ x, const float* __restrict__ net,
                                   float* __restrict__ x0, int batch, int channels,
                                   int out_channels, long long hw, float a, float s) {
    long long n = (long long)batch * channels * hw;
    GRID_STRIDE(i, n) {
        long long p = i % hw;
        long long bc = i / hw;
        int c = (int)(bc % channels);
        long long b = bc / channels;
        float e = net[(b * out_channels + c) * hw + p];
        x0[i] = (x[i] - s * e) / a;
    }
}

// The cotangent of the network output for the VJP of Tweedie's x0 = (x - s eps) / a:
// cot[b, c, :] = -(s / a) v[b, c, :] on the eps channels, 0 on the others.
extern "C" __global__ void tweedie_cotangent(const float* __restrict__ v, float* __restrict__ cot,
                                             int batch, int channels, int out_channels,
                                             long long hw, float s_over_a) {
    long long n = (long long)batch * out_channels * hw;
    GRID_STRIDE(i, n) {
        long long p = i % hw;
        long long bc = i / hw;
        int c = (int)(bc % out_channels);
        long long b = bc / out_channels;
        cot[i] = c < channels ? -s_over_a * v[(b * channels + c) * hw + p] : 0.0f;
    }
}

// g += v / a (the direct term of the Tweedie VJP).
extern "C" __global__ void add_divided(float* g, const float* v, float a, long long n) {
    GRID_STRIDE(i, n) { g[i] += v[i] / a; }
}

// DPS's ancestral step with guidance: out = ((c_x0 x0 + c_x x) + sd z) - zeta g.
extern "C" __global__ void dps_ancestral(float* __restrict__ out, const float* __restrict__ x,
                                         const float* __restrict__ x0,
                                         const float* __restrict__ z, const float* __restrict__ g,
                                         float c_x0, float c_x, float sd, float zeta,
                                         long long n) {
    GRID_STRIDE(i, n) {
        float m = c_x0 * x0[i];
        m += c_x * x[i];
        m += sd * z[i];
        out[i] = m - zeta * g[i];
    }
}

// The clean-knot DPS step: out = x0 - zeta g.
extern "C" __global__ void dps_final(float* __restrict__ out, const float* __restrict__ x0,
                                     const float* __restrict__ g, float zeta, long long n) {
    GRID_STRIDE(i, n) { out[i] = x0[i] - zeta * g[i]; }
}

// The DDIM-form update shared by DDS and DPS-with-DDIM: eps = (x - a x0) / s;
// out = ((a' x0c + keep eps) + sigma z) - zeta g, where z and g may be NULL (no noise, no
// guidance). DDS passes its corrected x0c; DPS passes x0c = x0.
extern "C" __global__ void ddim_update(float* __restrict__ out, const float* __restrict__ x,
                                       const float* __restrict__ x0,
                                       const float* __restrict__ x0c,
                                       const float* __restrict__ z, const float* __restrict__ g,
                                       float a, float s, float a_next, float keep, float sigma,
                                       float zeta, long long n) {
    GRID_STRIDE(i, n) {
        float e = (x[i] - a * x0[i]) / s;
        float v = a_next * x0c[i];
        v += keep * e;
        if (z) v += sigma * z[i];
        if (g) v -= zeta * g[i];
        out[i] = v;
    }
}

// DDS's right-hand side: b[i] = g aty[i % d] + c x0[i].
extern "C" __global__ void dds_rhs(float* __restrict__ b, const float* __restrict__ x0,
                                   const float* __restrict__ aty, float c, float g, long long d,
                                   long long n) {
    GRID_STRIDE(i, n) {
        float v = g * aty[i % d];
        v += c * x0[i];
        b[i] = v;
    }
}

// DDS's system matrix after the normal operator: o = g o + c v.
extern "C" __global__ void hess_finish(float* __restrict__ o, const float* __restrict__ v,
                                       float c, float g, long long n) {
    GRID_STRIDE(i, n) { o[i] = g * o[i] + c * v[i]; }
}

// r[b, :] = (A x)[b, :] - y (y shared by the batch), in place on ax.
extern "C" __global__ void sub_measurement(float* ax, const float* __restrict__ y, long long m,
                                           long long n) {
    GRID_STRIDE(i, n) { ax[i] -= y[i % m]; }
}

// ---- per-sample reductions ----
// partial[b * blocks + k] = sum over the k-th stripe of sample b of x y, in f64.
// Launch: grid (blocks, N), block 256 threads.
extern "C" __global__ void dot_partial(const float* __restrict__ x, const float* __restrict__ y,
                                       double* __restrict__ partial, long long d) {
    __shared__ double sh[256];
    int b = blockIdx.y;
    const float* xs = x + (long long)b * d;
    const float* ys = y + (long long)b * d;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < d;
         i += (long long)blockDim.x * gridDim.x)
        acc += (double)xs[i] * (double)ys[i];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = sh[0];
}

// out[b] = sum_k partial[b * blocks + k], one thread per sample (a fixed order).
extern "C" __global__ void sum_partials(const double* __restrict__ partial,
                                        double* __restrict__ out, int batch, int blocks) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    double s = 0.0;
    for (int k = 0; k < blocks; ++k) s += partial[b * blocks + k];
    out[b] = s;
}

// DPS: norm[b] = sqrt(sq[b]); inv[b] = 1 / norm[b] (0 where the residual is exactly 0).
extern "C" __global__ void inverse_norms(const double* __restrict__ sq, double* __restrict__ norm,
                                         float* __restrict__ inv, int batch) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    double n = sqrt(sq[b]);
    norm[b] = n;
    inv[b] = n > 0.0 ? (float)(1.0 / n) : 0.0f;
}

// x[b, :] = x[b, :] / sqrt(sq[b]) in f64, rounded to f32 (the CPU power iteration's
// normalisation); left unchanged where sq[b] = 0.
extern "C" __global__ void normalise_by(float* x, const double* __restrict__ sq, long long d,
                                        long long n) {
    GRID_STRIDE(i, n) {
        double s = sq[i / d];
        if (s > 0.0) x[i] = (float)((double)x[i] / sqrt(s));
    }
}

// x[b, :] *= s[b].
extern "C" __global__ void scale_per_sample(float* x, const float* __restrict__ s, long long d,
                                            long long n) {
    GRID_STRIDE(i, n) { x[i] *= s[i / d]; }
}

// ---- conjugate gradients, one system per sample, scalars on the device ----
// State per sample b (doubles): st[b * 6 + k], k = 0 rr, 1 b_norm, 2 rayleigh_max,
// 3 active (1 or 0), 4 alpha, 5 beta; iterations run so far: iters[b].
// The kernels mirror the CPU's `conjugate_gradient`: the loop runs while active, which is
// cleared when the iteration limit is reached (the host launches exactly max_iters rounds),
// when ||r|| <= tol ||b||, or when <p, M p> / <p, p> <= 1e-6 of the largest seen.

// After r = b - M x and p = r: rr = <r, r>, b_norm = max(||b||, MIN_POSITIVE), active.
extern "C" __global__ void cg_init(const double* __restrict__ rr, const double* __restrict__ bb,
                                   double* __restrict__ st, int* __restrict__ iters, double tol,
                                   int batch) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    double* s = st + b * 6;
    s[0] = rr[b];
    s[1] = fmax(sqrt(bb[b]), 2.2250738585072014e-308);
    s[2] = 0.0;
    s[3] = sqrt(s[0]) > tol * s[1] ? 1.0 : 0.0;
    s[4] = 0.0;
    s[5] = 0.0;
    iters[b] = 0;
}

// Given <p, M p> and <p, p>: the Rayleigh test and alpha = rr / pMp (0 when inactive).
extern "C" __global__ void cg_alpha(const double* __restrict__ pmp, const double* __restrict__ pp,
                                    double* __restrict__ st, int batch) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    double* s = st + b * 6;
    s[4] = 0.0;
    if (s[3] == 0.0) return;
    double ray = pmp[b] / fmax(pp[b], 2.2250738585072014e-308);
    s[2] = fmax(s[2], ray);
    if (isnan(ray) || ray <= 1e-6 * s[2]) {
        s[3] = 0.0;
        return;
    }
    s[4] = s[0] / pmp[b];
}

// x += alpha p; r -= alpha M p (per sample, alpha as f32 as the CPU does).
extern "C" __global__ void cg_step(float* __restrict__ x, float* __restrict__ r,
                                   const float* __restrict__ p, const float* __restrict__ mp,
                                   const double* __restrict__ st, long long d, long long n) {
    GRID_STRIDE(i, n) {
        const double* s = st + (i / d) * 6;
        if (s[3] == 0.0) continue;
        float alpha = (float)s[4];
        x[i] += alpha * p[i];
        r[i] -= alpha * mp[i];
    }
}

// Given the new <r, r>: beta, the iteration count, and the residual test.
extern "C" __global__ void cg_beta(const double* __restrict__ rr_new, double* __restrict__ st,
                                   int* __restrict__ iters, double tol, int batch) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    double* s = st + b * 6;
    if (s[3] == 0.0) return;
    s[5] = rr_new[b] / s[0];
    s[0] = rr_new[b];
    iters[b] += 1;
    // The CPU loop re-tests ||r|| > tol ||b|| before its next iteration; this kernel ends a
    // sample's loop as soon as that test fails (its p update is then skipped too, which
    // changes nothing the CPU would use: x is final).
    if (!(sqrt(s[0]) > tol * s[1])) s[3] = 0.0;
}

// p = r + beta p for the samples still running.
extern "C" __global__ void cg_direction(float* __restrict__ p, const float* __restrict__ r,
                                        const double* __restrict__ st, long long d, long long n) {
    GRID_STRIDE(i, n) {
        const double* s = st + (i / d) * 6;
        if (s[3] == 0.0) continue;
        float beta = (float)s[5];
        p[i] = r[i] + beta * p[i];
    }
}

// ---- Adam (bias-corrected, no weight decay), as the CPU's RED-diff optimiser ----
// c1 = 1 - b1^k, c2 = 1 - b2^k computed by the host in f64 and passed as f32.
extern "C" __global__ void adam_step(float* __restrict__ x, float* __restrict__ m,
                                     float* __restrict__ v, const float* __restrict__ g, float lr,
                                     float b1, float b2, float c1, float c2, float eps,
                                     long long n) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        x[i] -= lr * (mi / c1) / (sqrtf(vi / c2) + eps);
    }
}

// ---- SMC ----
// Normalised weights from log-weights (log-sum-exp, f64) and systematic resampling at
// positions (u + j) / m, as the CPU's `normalise_log_weights` and `systematic`: one thread,
// the same sequential order (particle counts are small). status[0] = 1 when no log-weight
// is finite (the CPU's error case), else 0; the indices are then left untouched.
extern "C" __global__ void smc_resample(const double* __restrict__ logw, int n,
                                        double* __restrict__ w, int* __restrict__ idx, int m,
                                        double u, int* __restrict__ status) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double mx = -__longlong_as_double(0x7ff0000000000000LL);
    for (int i = 0; i < n; ++i) mx = fmax(mx, logw[i]);
    if (!isfinite(mx)) {
        status[0] = 1;
        return;
    }
    status[0] = 0;
    double s = 0.0;
    for (int i = 0; i < n; ++i) {
        w[i] = exp(logw[i] - mx);
        s += w[i];
    }
    for (int i = 0; i < n; ++i) w[i] /= s;
    double cum = 0.0;
    int i = 0, last = n > 0 ? n - 1 : 0;
    for (int j = 0; j < m; ++j) {
        double p = (u + (double)j) / (double)m;
        while (i < last && cum + w[i] <= p) {
            cum += w[i];
            i += 1;
        }
        idx[j] = i;
    }
}

// SMC's Gaussian log-weight increments: logw[b] += -sq[b] / (2 var), sq[b] the squared
// residual norm of particle b (as the CPU's `-q / (2.0 * var)`).
extern "C" __global__ void add_gaussian_log_weights(double* __restrict__ logw,
                                                    const double* __restrict__ sq, double var,
                                                    int batch) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    logw[b] += -sq[b] / (2.0 * var);
}

// out[j, :] = x[idx[j], :] (gathers resampled particles; out must not alias x).
extern "C" __global__ void gather_rows(const float* __restrict__ x, const int* __restrict__ idx,
                                       float* __restrict__ out, long long d, long long n) {
    GRID_STRIDE(i, n) { out[i] = x[(long long)idx[i / d] * d + i % d]; }
}
