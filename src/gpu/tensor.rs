//! A dense f32 tensor resident on the GPU: a shape and a device buffer in row-major
//! (C, "standard") order, the same layout as the CPU's `ndarray` arrays in standard layout.

use cudarc::driver::CudaSlice;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::Gpu;
use crate::{Error, Result};

/// `shape` is the logical shape (e.g. NCHW for an image batch); `data` holds
/// `shape.iter().product()` f32 in row-major order.
#[derive(Debug)]
pub struct GpuTensor {
    pub shape: Vec<usize>,
    pub data: CudaSlice<f32>,
}

impl GpuTensor {
    /// Uploads a host array (any memory layout; copied in row-major order).
    pub fn from_host(gpu: &Gpu, host: ArrayViewD<f32>) -> Result<GpuTensor> {
        let shape = host.shape().to_vec();
        let data = match host.as_slice() {
            Some(s) => gpu.upload(s)?,
            None => gpu.upload(&host.iter().copied().collect::<Vec<f32>>())?,
        };
        Ok(GpuTensor { shape, data })
    }

    /// Uploads a flat row-major slice with the given shape.
    pub fn from_slice(gpu: &Gpu, shape: &[usize], host: &[f32]) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if n != host.len() {
            return Err(Error::Invalid(format!(
                "GpuTensor: shape {shape:?} needs {n} values, found {}",
                host.len()
            )));
        }
        Ok(GpuTensor {
            shape: shape.to_vec(),
            data: gpu.upload(host)?,
        })
    }

    /// A zero-filled tensor.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<GpuTensor> {
        Ok(GpuTensor {
            shape: shape.to_vec(),
            data: gpu.zeros(shape.iter().product())?,
        })
    }

    /// A tensor whose contents are unspecified until a kernel writes all of them.
    pub fn uninit(gpu: &Gpu, shape: &[usize]) -> Result<GpuTensor> {
        Ok(GpuTensor {
            shape: shape.to_vec(),
            data: gpu.alloc(shape.iter().product())?,
        })
    }

    /// Wraps a device buffer, checking that its length matches the shape.
    pub fn from_device(shape: &[usize], data: CudaSlice<f32>) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Invalid(format!(
                "GpuTensor: shape {shape:?} needs {n} values, the buffer holds {}",
                data.len()
            )));
        }
        Ok(GpuTensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// Downloads to a host array (synchronizes the stream).
    pub fn to_host(&self, gpu: &Gpu) -> Result<ArrayD<f32>> {
        let v = gpu.download(&self.data)?;
        ArrayD::from_shape_vec(IxDyn(&self.shape), v)
            .map_err(|e| Error::Invalid(format!("GpuTensor: download of {:?}: {e}", self.shape)))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The same data under a new shape with the same element count.
    pub fn reshape(self, shape: &[usize]) -> Result<GpuTensor> {
        GpuTensor::from_device(shape, self.data)
    }

    /// A device-side copy.
    pub fn try_clone(&self, gpu: &Gpu) -> Result<GpuTensor> {
        let mut data = gpu.alloc(self.len())?;
        gpu.stream()
            .memcpy_dtod(&self.data, &mut data)
            .map_err(super::context::cuda_err("device-to-device copy"))?;
        Ok(GpuTensor {
            shape: self.shape.clone(),
            data,
        })
    }
}
