//! Run-time dispatch of elementwise loops to the widest vector instructions the CPU has.
//!
//! The crate is built for the baseline x86-64 target (SSE2, no FMA), so that one binary
//! runs on any x86-64 machine (the GPU hosts included). Loops written over plain slices
//! then vectorise four lanes wide, and `f32::mul_add` becomes a call into libm per element.
//! [`run_wide`] runs a closure inside a function compiled for AVX-512F + FMA (or AVX2 + FMA),
//! chosen once per call by CPU feature detection (a cached atomic load): the closure is
//! inlined there and its loops are compiled for those instructions.
//!
//! Use it around the innermost loop of a rayon task (not around a rayon call: the work must
//! be inlined into the dispatched function). The [`wide!`] macro writes the closure with
//! `#[inline(always)]`, which makes sure it is: `wide!(self.stats(block))`.
//!
//! The results are identical on every path up to the rounding of fused multiply-adds, which the kernels in this crate only use where a few ulp are
//! immaterial (the `exp` polynomial).

/// `wide!(expr)`: evaluates `expr` (which may borrow locals) compiled for the widest vector
/// extension the CPU supports; see the module documentation.
macro_rules! wide {
    ($($body:tt)*) => {
        $crate::nn::simd::run_wide(#[inline(always)] || { $($body)* })
    };
}
pub(crate) use wide;

/// Runs `f`, compiled for the widest vector extension the CPU supports. `f` must be inlined
/// to profit: call it through [`wide!`].
#[inline(always)]
pub(crate) fn run_wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports every feature the callee is compiled for.
            return unsafe { x86::avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { x86::avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// `f()` compiled with AVX-512F (512-bit vectors) and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub(super) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// `f()` compiled with AVX2 (256-bit vectors) and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn wide_runs_the_closure_and_returns_its_value() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let s = wide!(xs.iter().map(|v| v.mul_add(2.0, 1.0)).sum::<f32>());
        let want: f32 = xs.iter().map(|v| v * 2.0 + 1.0).sum();
        // Every term is exact in f32 (multiples of 0.5 below 2^10); only the summation
        // order may differ between the vectorised and the plain loop.
        assert!((s - want).abs() <= 1e-6 * want.abs(), "{s} vs {want}");
    }
}
