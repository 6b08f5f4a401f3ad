//! Which vector instructions the network engine's kernels run on, chosen once per process.
//!
//! The crate is built for the baseline x86-64 target (SSE2, no FMA), so that one binary
//! runs on any x86-64 machine (the GPU hosts included). Loops written over plain slices
//! then vectorise four lanes wide, and `f32::mul_add` becomes a call into libm per element.
//! The engine therefore has three code paths ([`SimdPath`]):
//!
//! - `avx512`: AVX-512F + FMA (16-lane vectors, 32 registers);
//! - `avx2`: AVX2 + FMA (8-lane vectors, 16 registers): most AMD machines, older Intel;
//! - `portable`: whatever the build target gives (SSE2 on baseline x86-64, NEON on aarch64).
//!
//! [`active`] is the widest path the CPU has, unless the environment variable
//! `POSTERIOR_SIMD=avx512|avx2|portable` forces one (for tests and benchmarks of every path
//! on one machine). An unknown value, or a path the CPU lacks, prints one warning line on
//! stderr and the widest available path is used instead: the kernels cannot return an
//! error, and a run should not die over a tuning knob, while the warning makes a mistyped
//! benchmark visible. `POSTERIOR_SIMD=auto` (or unset, or empty) is the automatic choice.
//!
//! `run_wide` runs a closure inside a function compiled for the active path's
//! instructions: the closure is inlined there and its loops are compiled for them. Use it
//! around the innermost loop of a rayon task (not around a rayon call: the work must be
//! inlined into the dispatched function). The `wide!` macro writes the closure with
//! `#[inline(always)]`, which makes sure it is: `wide!(self.stats(block))`. The packed GEMM
//! (`nn::packed`) has its own micro-kernel per path and dispatches on [`active`] too.
//!
//! The results are identical on every path up to the rounding of fused multiply-adds and
//! the order of vectorised sums, which the kernels in this crate only allow where a few ulp
//! are immaterial.

use std::sync::atomic::{AtomicU8, Ordering};

/// A set of vector instructions the engine has kernels for (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdPath {
    /// AVX-512F + FMA.
    Avx512,
    /// AVX2 + FMA.
    Avx2,
    /// The build target's baseline (SSE2 on x86-64, NEON on aarch64).
    Portable,
}

impl SimdPath {
    /// Every path, widest first.
    pub const ALL: [SimdPath; 3] = [SimdPath::Avx512, SimdPath::Avx2, SimdPath::Portable];

    /// The name `POSTERIOR_SIMD` takes (`avx512`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Avx512 => "avx512",
            SimdPath::Avx2 => "avx2",
            SimdPath::Portable => "portable",
        }
    }

    /// Parses a `POSTERIOR_SIMD` value (case-insensitive); `None` for anything else.
    pub fn parse(s: &str) -> Option<SimdPath> {
        SimdPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            SimdPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The widest path this CPU can run.
    pub fn widest() -> SimdPath {
        SimdPath::ALL
            .into_iter()
            .find(|p| p.available())
            .unwrap_or(SimdPath::Portable)
    }

    fn code(self) -> u8 {
        match self {
            SimdPath::Avx512 => 1,
            SimdPath::Avx2 => 2,
            SimdPath::Portable => 3,
        }
    }
}

impl std::fmt::Display for SimdPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The path chosen from `POSTERIOR_SIMD` (`value`, unset as `None`) on this CPU, and the
/// warning to print when the request cannot be honoured.
fn choose(value: Option<&str>) -> (SimdPath, Option<String>) {
    let widest = SimdPath::widest();
    let value = match value.map(str::trim) {
        None | Some("") => return (widest, None),
        Some(v) if v.eq_ignore_ascii_case("auto") => return (widest, None),
        Some(v) => v,
    };
    match SimdPath::parse(value) {
        Some(p) if p.available() => (p, None),
        Some(p) => (
            widest,
            Some(format!(
                "posterior: warning: POSTERIOR_SIMD={} asks for a path this CPU lacks; using {widest}",
                p.name()
            )),
        ),
        None => (
            widest,
            Some(format!(
                "posterior: warning: POSTERIOR_SIMD={value:?} is not one of auto, avx512, avx2, portable; using {widest}"
            )),
        ),
    }
}

/// 0 until resolved, then [`SimdPath::code`].
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The path every kernel runs on: `POSTERIOR_SIMD` when it names a path the CPU has, else
/// the widest the CPU has. Resolved on the first call (which prints the warning, if any);
/// later calls are one atomic load.
#[inline]
pub fn active() -> SimdPath {
    match ACTIVE.load(Ordering::Relaxed) {
        1 => SimdPath::Avx512,
        2 => SimdPath::Avx2,
        3 => SimdPath::Portable,
        _ => resolve(),
    }
}

#[cold]
fn resolve() -> SimdPath {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let value = std::env::var("POSTERIOR_SIMD").ok();
        let (path, warning) = choose(value.as_deref());
        if let Some(w) = warning {
            eprintln!("{w}");
        }
        ACTIVE.store(path.code(), Ordering::Relaxed);
    });
    active()
}

/// `wide!(expr)`: evaluates `expr` (which may borrow locals) compiled for the active
/// [`SimdPath`]; see the module documentation.
macro_rules! wide {
    ($($body:tt)*) => {
        $crate::nn::simd::run_wide($crate::nn::simd::active(), #[inline(always)] || { $($body)* })
    };
}
pub(crate) use wide;

/// Runs `f` compiled for `path`'s instructions (the portable build when the CPU lacks
/// them). `f` must be inlined to profit: call it through [`wide!`].
#[inline(always)]
pub(crate) fn run_wide<R>(path: SimdPath, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match path {
        // SAFETY: the CPU supports every feature the callee is compiled for.
        SimdPath::Avx512 if path.available() => return unsafe { x86::avx512(f) },
        // SAFETY: as above.
        SimdPath::Avx2 if path.available() => return unsafe { x86::avx2(f) },
        _ => {}
    }
    let _ = path;
    f()
}

/// `a b + c`, fused where the build target has fused multiply-add as a baseline
/// instruction (aarch64, or x86-64 built for a CPU with FMA), else a multiply and an add:
/// on baseline x86-64 `f32::mul_add` is a libm call per element. For loops that must stay
/// fast on the portable path; inside the AVX paths `f32::mul_add` is one instruction.
#[inline(always)]
pub(crate) fn madd(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
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
    use super::*;

    #[test]
    fn every_available_path_runs_the_closure_and_returns_its_value() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let want: f32 = xs.iter().map(|v| v * 2.0 + 1.0).sum();
        for path in SimdPath::ALL {
            if !path.available() {
                eprintln!("simd path {path}: skipped (this CPU lacks it)");
                continue;
            }
            let s = run_wide(path, || xs.iter().map(|v| v.mul_add(2.0, 1.0)).sum::<f32>());
            // Every term is exact in f32 (multiples of 0.5 below 2^10); only the summation
            // order may differ between the vectorised and the plain loop.
            assert!(
                (s - want).abs() <= 1e-6 * want.abs(),
                "{path}: {s} vs {want}"
            );
        }
        let s = wide!(xs.iter().map(|v| madd(*v, 2.0, 1.0)).sum::<f32>());
        assert!(
            (s - want).abs() <= 1e-6 * want.abs(),
            "active: {s} vs {want}"
        );
    }

    #[test]
    fn posterior_simd_values_are_parsed_or_warned_about() {
        let widest = SimdPath::widest();
        assert_eq!(choose(None), (widest, None));
        assert_eq!(choose(Some("")), (widest, None));
        assert_eq!(choose(Some(" AUTO ")), (widest, None));
        // The portable path exists everywhere.
        assert_eq!(choose(Some("Portable")), (SimdPath::Portable, None));
        let (p, w) = choose(Some("avx3"));
        assert_eq!(p, widest);
        let w = w.expect("an unknown value warns");
        assert!(
            w.contains("\"avx3\"") && w.contains("avx512, avx2, portable"),
            "{w}"
        );
        for path in [SimdPath::Avx512, SimdPath::Avx2] {
            let (p, w) = choose(Some(path.name()));
            if path.available() {
                assert_eq!((p, w), (path, None));
            } else {
                assert_eq!(p, widest);
                assert!(w.expect("warns").contains("lacks"));
            }
        }
        for path in SimdPath::ALL {
            assert_eq!(SimdPath::parse(path.name()), Some(path));
        }
        assert!(SimdPath::available(active()));
    }
}
