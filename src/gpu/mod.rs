//! The CUDA path: device context, device tensors, NVRTC-compiled kernels and cuBLAS GEMMs.
//!
//! Built on `cudarc` with run-time loading of every CUDA library, so the crate builds and all
//! CPU paths run on machines without CUDA. Choose the device with [`select`]
//! (`--device auto|cpu|cuda` on the command line). Every kernel has a CPU twin in
//! [`crate::nn`] (or the operators crate) and a parity test that runs where a GPU exists and
//! prints `skipped: <reason>` where none does.
//!
//! Conventions as on the CPU: f32, row-major NCHW, parameters in PyTorch's layout.

pub mod context;
pub mod nn;
pub mod ops;
pub mod sampler;
pub mod tensor;
pub mod unet;

pub use context::{
    compile_kernel, cufft_present, gpu_for_test, launch_1d, nvrtc_present, probe_libraries, select,
    Backend, DeviceChoice, Gpu, KernelSource,
};
pub use tensor::GpuTensor;
