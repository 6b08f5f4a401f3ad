//! PNG, JPEG and TIFF through the `image` crate.

use std::path::Path;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb};
use ndarray::{Array2, Array3, ArrayView3};

use super::{guard, write_atomic, Intensity, LoadedImage};
use crate::error::{Error, Result};

/// A decoded raster: the `image` crate's picture, or a grayscale float TIFF (which the
/// `image` crate does not decode) as (H, W) values as stored.
enum Decoded {
    Picture(DynamicImage),
    FloatGray(Array2<f32>),
}

/// Decodes `path` after checking its claimed size (width x height within the element cap,
/// [`image::Limits`] on the decoder's allocations: a small PNG that claims 20000 x 20000
/// pixels is refused before it is inflated) and, for JPEG, that the file is complete.
fn decode(path: &Path) -> Result<Decoded> {
    let bytes = super::read_bytes(path, crate::limits::max_file_bytes())?;
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))
    };
    let format = reader()?.format();
    let fmt = format
        .map(|f| format!("{f:?}"))
        .unwrap_or_else(|| "image".into());
    let malformed = |e: &dyn std::fmt::Display| {
        Error::file(
            path,
            format!("cannot decode as {fmt} (truncated or malformed file?): {e}"),
        )
    };
    if format == Some(ImageFormat::Tiff) {
        // Before the `image` crate, which refuses float gray TIFFs even for their size.
        if let Some(gray) = guard::no_panic(path, &fmt, || float_gray_tiff(path, &bytes))? {
            return Ok(Decoded::FloatGray(gray));
        }
    }
    let (w, h) = guard::no_panic(path, &fmt, || {
        reader()?.into_dimensions().map_err(|e| malformed(&e))
    })?;
    crate::limits::check_elements(
        &format!("{} ({fmt}, {w} x {h} pixels)", path.display()),
        &[h as usize, w as usize],
    )?;
    let mut r = reader()?;
    r.limits(limits());
    let img = guard::no_panic(path, &fmt, || r.decode().map_err(|e| malformed(&e)))?;
    if format == Some(ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(Error::file(
            path,
            "truncated JPEG: no end-of-image marker after the scan data (the decoder would fill \
             the missing rows with gray)",
        ));
    }
    Ok(Decoded::Picture(img))
}

/// The decoder's allocation limits: room for the largest allowed image as RGBA f32.
fn limits() -> image::Limits {
    let cap = crate::limits::max_elements();
    let mut l = image::Limits::default();
    l.max_image_width = Some(u32::try_from(cap).unwrap_or(u32::MAX));
    l.max_image_height = Some(u32::try_from(cap).unwrap_or(u32::MAX));
    l.max_alloc = Some(cap.saturating_mul(16));
    l
}

/// Whether a JPEG's scan data is followed by its end-of-image marker (FF D9). In
/// entropy-coded data every FF byte is followed by 00 or a restart marker, so FF D9 after
/// the first start-of-scan (FF DA) can only be the end-of-image marker; a thumbnail's own
/// FF D9 (inside APP1) comes before the first scan.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if matches!(marker, 0x01 | 0xD0..=0xD8) {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if marker == 0xDA {
            let scan = i + 2 + len;
            return scan <= bytes.len() && bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]);
        }
        i += 2 + len;
    }
    false
}

/// A single-channel float32/float64 TIFF as (H, W) values as stored; `None` for every
/// other TIFF (left to the `image` crate).
fn float_gray_tiff(path: &Path, bytes: &[u8]) -> Result<Option<Array2<f32>>> {
    use tiff::decoder::{Decoder, DecodingResult};
    let bad = |e: tiff::TiffError| Error::file(path, format!("cannot decode as TIFF: {e}"));
    let mut d = Decoder::new(std::io::Cursor::new(bytes)).map_err(bad)?;
    if !matches!(d.colortype().map_err(bad)?, tiff::ColorType::Gray(32 | 64)) {
        return Ok(None);
    }
    let (w, h) = d.dimensions().map_err(bad)?;
    crate::limits::check_elements(
        &format!("{} (TIFF, {w} x {h} pixels)", path.display()),
        &[h as usize, w as usize],
    )?;
    let cap = crate::limits::max_elements() as usize;
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size = cap.saturating_mul(8);
    limits.intermediate_buffer_size = cap.saturating_mul(8);
    let mut d = d.with_limits(limits);
    let values: Vec<f32> = match d.read_image().map_err(bad)? {
        DecodingResult::F32(v) => v,
        DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        _ => return Ok(None),
    };
    Array2::from_shape_vec((h as usize, w as usize), values)
        .map(Some)
        .map_err(|e| {
            Error::file(
                path,
                format!("TIFF pixel count disagrees with {w} x {h}: {e}"),
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
    let img = match decode(path)? {
        Decoded::Picture(img) => img,
        Decoded::FloatGray(a) => {
            return Ok(LoadedImage {
                data: a.insert_axis(ndarray::Axis(0)),
                intensity: Intensity::scaled(1.0, "float"),
                source: path.display().to_string(),
            })
        }
    };
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
    let b = match decode(path)? {
        Decoded::Picture(img) => img.into_luma16(),
        Decoded::FloatGray(a) => return Ok(a),
    };
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
