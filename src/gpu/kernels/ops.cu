// Forward operators on the device: masks, separable resampling (super-resolution), the
// pack/unpack passes around cuFFT for Cartesian MRI and circular blur, and the ray-driven
// CT projector with its matched back-projection.
//
// Conventions (as in the operators crate): f32 data; an image batch is (N, C, H, W)
// row-major; complex data are channel pairs (re, im) on the host side and interleaved
// float2 inside the FFT work buffers. Every kernel is a grid-stride loop over its outputs,
// so any launch size is correct.

typedef unsigned int u32;

#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

// y[i] = m[i % hw] * x[i] over n entries: inpainting apply = adjoint = normal.
extern "C" __global__ void mask_apply(const float* __restrict__ x, const float* __restrict__ m,
                                      float* __restrict__ y, long long n, int hw) {
    GRID_STRIDE(i, n) { y[i] = m[i % hw] * x[i]; }
}

// One axis of a separable resampling as a CSR matrix (rows = outputs):
// dst[o, r, q] = sum_{k in ptr[r]..ptr[r+1]} w[k] * src[o, idx[k], q], with o < outer,
// r < len_out, q < inner (inner = 1 resamples the last axis, inner = width the rows).
// The adjoint runs the same kernel with the transposed CSR matrix (same weights).
extern "C" __global__ void csr_axis(const float* __restrict__ src, float* __restrict__ dst,
                                    int outer, int len_in, int len_out, int inner,
                                    const int* __restrict__ ptr, const int* __restrict__ idx,
                                    const float* __restrict__ w) {
    long long n = (long long)outer * len_out * inner;
    GRID_STRIDE(i, n) {
        int q = (int)(i % inner);
        long long rest = i / inner;
        int r = (int)(rest % len_out);
        long long o = rest / len_out;
        const float* s = src + o * (long long)len_in * inner + q;
        float acc = 0.0f;
        for (int k = ptr[r]; k < ptr[r + 1]; ++k) acc += w[k] * s[(long long)idx[k] * inner];
        dst[i] = acc;
    }
}

// ---- Cartesian MRI (SENSE) around an unnormalised cuFFT C2C transform ----
// Shapes: image batch x (N, 2, H, W); k-space y (N, coils, 2, H, W); work buffer
// buf (N, coils, H, W) float2; sensitivities sens (coils, H, W) float2 (NULL: one coil of
// ones). The centred transform is F = fftshift . fft2 . ifftshift / sqrt(H W): the packing
// pass reads with ifftshift, the unpacking pass writes with fftshift and scales.
// ifftshift as a gather: out[p] = in[(p + n/2) % n]; fftshift: out[p] = in[(p + n - n/2) % n].

// buf[b, c, p, q] = S_c[i, j] x[b, i, j], (i, j) = ifftshift source of (p, q).
extern "C" __global__ void mri_pack_image(const float* __restrict__ x,
                                          const float2* __restrict__ sens,
                                          float2* __restrict__ buf, int batch, int coils, int h,
                                          int w) {
    long long hw = (long long)h * w;
    long long n = (long long)batch * coils * hw;
    GRID_STRIDE(t, n) {
        int q = (int)(t % w);
        int p = (int)((t / w) % h);
        int c = (int)((t / hw) % coils);
        long long b = t / (hw * coils);
        int i = (p + h / 2) % h, j = (q + w / 2) % w;
        long long pix = (long long)i * w + j;
        float re = x[b * 2 * hw + pix], im = x[b * 2 * hw + hw + pix];
        if (sens) {
            float2 s = sens[c * hw + pix];
            float r2 = s.x * re - s.y * im, i2 = s.x * im + s.y * re;
            re = r2;
            im = i2;
        }
        buf[t] = make_float2(re, im);
    }
}

// y[b, c, :, k, l] = scale * M[k, l] * buf[b, c, fftshift source of (k, l)].
extern "C" __global__ void mri_unpack_kspace(const float2* __restrict__ buf,
                                             const float* __restrict__ mask,
                                             float* __restrict__ y, int batch, int coils, int h,
                                             int w, float scale) {
    long long hw = (long long)h * w;
    long long n = (long long)batch * coils * hw;
    GRID_STRIDE(t, n) {
        int l = (int)(t % w);
        int k = (int)((t / w) % h);
        long long bc = t / hw;
        int p = (k + h - h / 2) % h, q = (l + w - w / 2) % w;
        float2 v = buf[bc * hw + (long long)p * w + q];
        float s = scale * mask[(long long)k * w + l];
        y[bc * 2 * hw + (long long)k * w + l] = s * v.x;
        y[bc * 2 * hw + hw + (long long)k * w + l] = s * v.y;
    }
}

// buf[b, c, p, q] = M[k, l] y[b, c, :, k, l], (k, l) = ifftshift source of (p, q).
extern "C" __global__ void mri_pack_kspace(const float* __restrict__ y,
                                           const float* __restrict__ mask,
                                           float2* __restrict__ buf, int batch, int coils, int h,
                                           int w) {
    long long hw = (long long)h * w;
    long long n = (long long)batch * coils * hw;
    GRID_STRIDE(t, n) {
        int q = (int)(t % w);
        int p = (int)((t / w) % h);
        long long bc = t / hw;
        int k = (p + h / 2) % h, l = (q + w / 2) % w;
        long long pix = (long long)k * w + l;
        float m = mask[pix];
        buf[t] = make_float2(m * y[bc * 2 * hw + pix], m * y[bc * 2 * hw + hw + pix]);
    }
}

// x[b, :, i, j] = scale * sum_c conj(S_c[i, j]) buf[b, c, fftshift source of (i, j)],
// coils summed in order (deterministic).
extern "C" __global__ void mri_unpack_image(const float2* __restrict__ buf,
                                            const float2* __restrict__ sens,
                                            float* __restrict__ x, int batch, int coils, int h,
                                            int w, float scale) {
    long long hw = (long long)h * w;
    long long n = (long long)batch * hw;
    GRID_STRIDE(t, n) {
        int j = (int)(t % w);
        int i = (int)((t / w) % h);
        long long b = t / hw;
        int p = (i + h - h / 2) % h, q = (j + w - w / 2) % w;
        long long src = (long long)p * w + q;
        long long pix = (long long)i * w + j;
        float re = 0.0f, im = 0.0f;
        for (int c = 0; c < coils; ++c) {
            float2 v = buf[(b * coils + c) * hw + src];
            if (sens) {
                float2 s = sens[c * hw + pix];
                re += s.x * v.x + s.y * v.y;
                im += s.x * v.y - s.y * v.x;
            } else {
                re += v.x;
                im += v.y;
            }
        }
        x[b * 2 * hw + pix] = scale * re;
        x[b * 2 * hw + hw + pix] = scale * im;
    }
}

// ---- Circular blur through an unnormalised cuFFT C2C transform ----
// buf[t] = (x[t], 0) over n real entries (every channel its own complex image).
extern "C" __global__ void real_to_complex(const float* __restrict__ x, float2* __restrict__ buf,
                                           long long n) {
    GRID_STRIDE(t, n) { buf[t] = make_float2(x[t], 0.0f); }
}

// buf[t] *= K[t % hw] (or conj(K) when conj != 0).
extern "C" __global__ void spectrum_multiply(float2* __restrict__ buf,
                                             const float2* __restrict__ k, long long n, int hw,
                                             int conj) {
    GRID_STRIDE(t, n) {
        float2 a = buf[t];
        float2 s = k[t % hw];
        if (conj) s.y = -s.y;
        buf[t] = make_float2(a.x * s.x - a.y * s.y, a.x * s.y + a.y * s.x);
    }
}

// buf[t] *= |K[t % hw]|^2 (the normal operator of the blur).
extern "C" __global__ void spectrum_multiply_power(float2* __restrict__ buf,
                                                   const float2* __restrict__ k, long long n,
                                                   int hw) {
    GRID_STRIDE(t, n) {
        float2 s = k[t % hw];
        float p = s.x * s.x + s.y * s.y;
        buf[t] = make_float2(buf[t].x * p, buf[t].y * p);
    }
}

// x[t] = scale * re(buf[t]).
extern "C" __global__ void complex_real_part(const float2* __restrict__ buf, float* __restrict__ x,
                                             long long n, float scale) {
    GRID_STRIDE(t, n) { x[t] = scale * buf[t].x; }
}

// ---- CT: Joseph's ray-driven projector ----
// One ray per entry of params (4 floats each): (cols, a0, slope, weight). Along the major
// axis index m (columns when cols != 0, else rows) the minor coordinate is
// r = a0 + m * slope; the image is interpolated linearly between floor(r) and floor(r) + 1
// (neighbours outside the grid count as zero) and every sample weighs `weight`. The
// forward projection gathers along the ray (one thread per ray, no atomics); the
// back-projection scatters the same weights with atomicAdd, so it is the exact adjoint up
// to the order of f32 additions.

__device__ __forceinline__ void ct_sample(float a0, float slope, int m, int* i0,
                                          float* frac) {
    float r = __fadd_rn(a0, __fmul_rn((float)m, slope));
    float rf = floorf(r);
    *frac = r - rf;
    *i0 = (int)rf;
}

// y[b, ray] = sum over the samples of ray; image batch (N, H, W), sinogram (N, rays).
extern "C" __global__ void ct_forward(const float* __restrict__ x,
                                      const float4* __restrict__ params, float* __restrict__ y,
                                      int batch, int rays, int h, int w) {
    long long n = (long long)batch * rays;
    GRID_STRIDE(t, n) {
        int ray = (int)(t % rays);
        long long b = t / rays;
        float4 pr = params[ray];
        int cols = pr.x != 0.0f;
        int n_major = cols ? w : h, n_minor = cols ? h : w;
        const float* img = x + b * (long long)h * w;
        float acc = 0.0f;
        for (int m = 0; m < n_major; ++m) {
            int i0;
            float frac;
            ct_sample(pr.y, pr.z, m, &i0, &frac);
            if (i0 < -1 || i0 >= n_minor) continue;
            if (i0 >= 0) {
                long long idx = cols ? (long long)i0 * w + m : (long long)m * w + i0;
                acc += pr.w * (1.0f - frac) * img[idx];
            }
            if (i0 + 1 < n_minor) {
                long long idx = cols ? (long long)(i0 + 1) * w + m : (long long)m * w + i0 + 1;
                acc += pr.w * frac * img[idx];
            }
        }
        y[t] = acc;
    }
}

// x[b] += the back-projection of y[b]; x must be zeroed first.
extern "C" __global__ void ct_adjoint(const float* __restrict__ y,
                                      const float4* __restrict__ params, float* __restrict__ x,
                                      int batch, int rays, int h, int w) {
    long long n = (long long)batch * rays;
    GRID_STRIDE(t, n) {
        float val = y[t];
        if (val == 0.0f) continue;
        int ray = (int)(t % rays);
        long long b = t / rays;
        float4 pr = params[ray];
        int cols = pr.x != 0.0f;
        int n_major = cols ? w : h, n_minor = cols ? h : w;
        float* img = x + b * (long long)h * w;
        for (int m = 0; m < n_major; ++m) {
            int i0;
            float frac;
            ct_sample(pr.y, pr.z, m, &i0, &frac);
            if (i0 < -1 || i0 >= n_minor) continue;
            if (i0 >= 0) {
                long long idx = cols ? (long long)i0 * w + m : (long long)m * w + i0;
                atomicAdd(img + idx, pr.w * (1.0f - frac) * val);
            }
            if (i0 + 1 < n_minor) {
                long long idx = cols ? (long long)(i0 + 1) * w + m : (long long)m * w + i0 + 1;
                atomicAdd(img + idx, pr.w * frac * val);
            }
        }
    }
}
