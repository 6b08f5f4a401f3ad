//! DICOM images through dicom-object / dicom-pixeldata (pure Rust, native codecs).

use std::path::Path;

use dicom_object::Tag;
use dicom_pixeldata::PixelDecoder;
use ndarray::{s, Array3, Array4, Axis};

use super::{Intensity, LoadedImage, ReadOptions};
use crate::error::{Error, Result};

const MODALITY: Tag = Tag(0x0008, 0x0060);
const RESCALE_TYPE: Tag = Tag(0x0028, 0x1054);

/// Lowest CT value kept, in HU (air); lower values (field-of-view padding) are raised.
const CT_FLOOR_HU: f32 = -1000.0;

/// Reads one frame (`opts.slice`, default the middle one) of a DICOM file. CT (Modality
/// CT, or Rescale Type HU) comes out as HU / 1000 + 1 clipped at 0; other monochrome
/// images as value / max(frame) (MONOCHROME1 inverted first: max + min - value); RGB as
/// value / (2^bits stored - 1). `opts.axis` is not used: frames are taken as stored.
pub(super) fn read(path: &Path, opts: &ReadOptions) -> Result<LoadedImage> {
    let obj = dicom_object::open_file(path).map_err(|e| {
        Error::file(path, format!("not a readable DICOM file (expected a DICOM part-10 file with the DICM preamble): {e}"))
    })?;
    let text = |tag: Tag| -> Option<String> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_uppercase())
    };
    let modality = text(MODALITY).unwrap_or_default();
    let is_ct = modality == "CT" || text(RESCALE_TYPE).as_deref() == Some("HU");
    let pixels = obj
        .decode_pixel_data()
        .map_err(|e| Error::file(path, format!("cannot decode the DICOM pixel data: {e}")))?;
    let bits = pixels.bits_stored();
    let monochrome1 = pixels.photometric_interpretation().to_string() == "MONOCHROME1";
    // (frames, rows, cols, samples), modality LUT (rescale slope/intercept) applied.
    let arr = pixels
        .to_ndarray::<f32>()
        .map_err(|e| Error::file(path, format!("cannot convert the DICOM pixel data: {e}")))?;
    // dicom-pixeldata has its own ndarray version: copy over in logical order.
    let (n, rows, cols, samples) = arr.dim();
    let arr = Array4::from_shape_vec((n, rows, cols, samples), arr.iter().copied().collect())
        .map_err(|e| Error::file(path, e))?;
    let k = opts.slice.unwrap_or(n / 2);
    if k >= n {
        return Err(Error::file(
            path,
            format!(
                "frame {k} is out of range: the file has {n} frame(s) (valid 0..={})",
                n.saturating_sub(1)
            ),
        ));
    }
    // (C, H, W)
    let frame: Array3<f32> = arr
        .slice(s![k, .., .., ..])
        .permuted_axes([2, 0, 1])
        .as_standard_layout()
        .into_owned();
    let source = if n > 1 {
        format!("{}[frame {k}]", path.display())
    } else {
        path.display().to_string()
    };
    let (data, intensity) = if is_ct && samples == 1 {
        let data = frame.mapv(|hu| (hu.max(CT_FLOOR_HU) / 1000.0) + 1.0);
        let intensity = Intensity {
            scale: 1000.0,
            offset: -1000.0,
            unit: "HU".into(),
            clip_min: Some(CT_FLOOR_HU),
        };
        (data, intensity)
    } else if samples == 1 {
        let max = frame.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = frame.iter().copied().fold(f32::INFINITY, f32::min);
        let frame = if monochrome1 {
            frame.mapv(|v| max + min - v)
        } else {
            frame
        };
        let top = frame.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let scale = if top.is_finite() && top > 0.0 {
            top
        } else {
            1.0
        };
        (frame / scale, Intensity::scaled(scale, "dicom"))
    } else if samples == 3 {
        let scale = ((1u64 << bits.clamp(1, 32)) - 1) as f32;
        (frame / scale, Intensity::scaled(scale, "dicom"))
    } else {
        return Err(Error::file(
            path,
            format!("{samples} samples per pixel; expected 1 (monochrome) or 3 (RGB)"),
        ));
    };
    debug_assert_eq!(data.len_of(Axis(0)), samples);
    Ok(LoadedImage {
        data,
        intensity,
        source,
    })
}
