//! A process-wide allocator setting that the network engine profits from.

/// Makes glibc's `malloc` serve every allocation from its heap and keep freed memory for
/// reuse instead of returning it to the system.
///
/// By default glibc maps every allocation of 32 MiB or more (an FFHQ-256 activation is
/// 256 x 256 x 128 floats = 32 MiB) with a fresh `mmap`, whose pages then fault in one by
/// one on first write and are unmapped again on free: 6-9% of an FFHQ-256 forward in perf
/// (`exc_page_fault`, `clear_page`). With this setting the second and later forwards reuse
/// the same memory: FFHQ-256 forward 2.18-2.31 s -> 2.05 s, forward + VJP 5.35 s -> 4.7 s
/// (`POSTERIOR_BENCH_FFHQ=1 POSTERIOR_BENCH_QUICK=3 cargo bench --bench nn -- none`).
///
/// The price: the process keeps its peak heap until it exits. The command-line tool and
/// the benchmarks call this at start-up; a library user decides for their own process.
/// Calling it more than once is harmless. A no-op where the C library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes glibc's allocation thresholds; it is called
            // before the engine allocates and does not invalidate live allocations.
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_allocations_still_work_after_the_setting() {
        super::keep_freed_memory();
        super::keep_freed_memory();
        // 64 MiB from the heap, written, freed and allocated again.
        for round in 0..2 {
            let mut v = vec![0.0f32; 1 << 24];
            v[(1 << 24) - 1] = round as f32 + 1.0;
            assert_eq!(v.iter().sum::<f32>(), round as f32 + 1.0);
        }
    }
}
