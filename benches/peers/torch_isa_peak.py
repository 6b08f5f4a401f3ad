#!/usr/bin/env python3
"""PyTorch's single-thread throughput on this CPU: a 1024^3 matmul (MKL) and a 3x3
convolution 64 -> 64 on 64x64 (oneDNN), best of 20 short runs (the best run is the one
least disturbed by other processes). Restrict the instruction set as run_unet_compare.sh
does to see what PyTorch gets on a narrower CPU:

    python benches/peers/torch_isa_peak.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python ...
    ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 python ...

Compare with the engine's packed GEMM on each path:
POSTERIOR_SIMD=P RAYON_NUM_THREADS=1 POSTERIOR_BENCH_GEMM=1 cargo bench --bench nn -- gemm
"""

import time

import torch


def best(f, n=20):
    f()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return min(t)


def main() -> None:
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, conv = torch.randn(1, 64, 64, 64), torch.nn.Conv2d(64, 64, 3, padding=1)
    with torch.no_grad():
        tm = best(lambda: a @ b)
        tc = best(lambda: conv(x))
    print(
        f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, 1 thread: "
        f"matmul 1024^3 {2 * 1024**3 / tm / 1e9:.0f} GFLOP/s, "
        f"conv3x3 64->64 64x64 {2 * 64 * 64 * 9 * 64 * 64 / tc / 1e9:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
