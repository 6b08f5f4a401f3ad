//! PNG, JPEG and TIFF through the `image` crate.

use std::path::Path;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb};
use ndarray::{Array2, Array3, ArrayView3};

use super::{write_atomic, Intensity, LoadedImage};
use crate::error::{Error, Result};

fn decode(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let format = reader.format();
    reader.decode().map_err(|e| {
        let fmt = format
            .map(|f| format!("{f:?}"))
            .unwrap_or_else(|| "image".into());
        Error::file(
            path,
            format!("cannot decode as {fmt} (truncated or malformed file?): {e}"),
        )
    })
}

/// (C, H, W) from interleaved samples.
fn planar<T: Copy>(w: u32, h: u32, c: usize, samples: &[T], f: impl Fn(T) -> f32) -> Array3<f32> {
    let (w, h) = (w as usize, h as usize);
    Array3::from_shape_fn((c, h, w), |(k, y, x)| f(samples[(y * w + x) * c + k]))
}

/// Reads PNG/JPEG/TIFF as (C, H, W): see the module docs of `io` for the units.
pub(super) fn read(path: &Path) -> Result<LoadedImage> {
    let img = decode(path)?;
    let (w, h) = (img.width(), img.height());
    let (data, intensity) = match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) => {
            let b = img.into_luma8();
            (
                planar(w, h, 1, b.as_raw(), |v| v as f32 / 255.0),
                Intensity::scaled(255.0, "8-bit"),
            )
        }
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => {
            let b = img.into_rgb8();
            (
                planar(w, h, 3, b.as_raw(), |v| v as f32 / 255.0),
                Intensity::scaled(255.0, "8-bit"),
            )
        }
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => {
            let b = img.into_luma16();
            (
                planar(w, h, 1, b.as_raw(), |v| v as f32 / 65535.0),
                Intensity::scaled(65535.0, "16-bit"),
            )
        }
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => {
            let b = img.into_rgb16();
            (
                planar(w, h, 3, b.as_raw(), |v| v as f32 / 65535.0),
                Intensity::scaled(65535.0, "16-bit"),
            )
        }
        other => {
            let b = other.into_rgb32f();
            (
                planar(w, h, 3, b.as_raw(), |v| v),
                Intensity::scaled(1.0, "float"),
            )
        }
    };
    Ok(LoadedImage {
        data,
        intensity,
        source: path.display().to_string(),
    })
}

/// Reads PNG/JPEG/TIFF as one grayscale (H, W) plane in [0, 1] (colour converted to luma).
pub(super) fn read_luma(path: &Path) -> Result<Array2<f32>> {
    let b = decode(path)?.into_luma16();
    let (w, h) = b.dimensions();
    Array2::from_shape_vec(
        (h as usize, w as usize),
        b.as_raw().iter().map(|&v| v as f32 / 65535.0).collect(),
    )
    .map_err(|e| Error::file(path, e))
}

/// Writes 8-bit PNG (`png = true`) or 16-bit TIFF, mapping [lo, hi] to the full range.
pub(super) fn write(
    path: &Path,
    image: ArrayView3<f32>,
    lo: f32,
    hi: f32,
    png: bool,
) -> Result<()> {
    let (c, h, w) = image.dim();
    if c != 1 && c != 3 {
        return Err(Error::file(
            path,
            format!("image has {c} channels; expected 1 (gray) or 3 (RGB) to write PNG/TIFF"),
        ));
    }
    if h == 0 || w == 0 || h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(Error::file(
            path,
            format!("cannot write an image of size {h}x{w}"),
        ));
    }
    let top = if png { 255.0 } else { 65535.0 };
    let q = |v: f32| (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * top).round();
    // Interleaved (H, W, C) order.
    let inter = image.permuted_axes([1, 2, 0]);
    let (w32, h32) = (w as u32, h as u32);
    let encode_err = |e: image::ImageError| Error::file(path, format!("could not encode: {e}"));
    write_atomic(path, |tmp| {
        let fmt = if png {
            ImageFormat::Png
        } else {
            ImageFormat::Tiff
        };
        if png {
            let buf: Vec<u8> = inter.iter().map(|&v| q(v) as u8).collect();
            if c == 1 {
                ImageBuffer::<Luma<u8>, _>::from_raw(w32, h32, buf)
                    .map(|b| b.save_with_format(tmp, fmt))
            } else {
                ImageBuffer::<Rgb<u8>, _>::from_raw(w32, h32, buf)
                    .map(|b| b.save_with_format(tmp, fmt))
            }
        } else {
            let buf: Vec<u16> = inter.iter().map(|&v| q(v) as u16).collect();
            if c == 1 {
                ImageBuffer::<Luma<u16>, _>::from_raw(w32, h32, buf)
                    .map(|b| b.save_with_format(tmp, fmt))
            } else {
                ImageBuffer::<Rgb<u16>, _>::from_raw(w32, h32, buf)
                    .map(|b| b.save_with_format(tmp, fmt))
            }
        }
        .ok_or_else(|| Error::file(path, "internal error: pixel buffer size mismatch"))?
        .map_err(encode_err)
    })
}
