//! NIfTI-1 volumes (`.nii`, `.nii.gz`) through the `nifti` crate, reoriented to the
//! display convention described in the `io` module docs.

use std::path::Path;

use ::nifti::{InMemNiftiVolume, IntoNdArray, NiftiHeader, NiftiType};
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis, Ix3};

use super::{guard, Intensity, LoadedImage, ReadOptions, SliceAxis};
use crate::error::{Error, Result};

/// The 3x3 direction part of the voxel-to-world (RAS+) map: column v is the world
/// direction of voxel axis v. From the sform, else the qform, else the identity.
fn directions(h: &::nifti::NiftiHeader) -> [[f64; 3]; 3] {
    if h.sform_code > 0 {
        let rows = [h.srow_x, h.srow_y, h.srow_z];
        let mut m = [[0.0; 3]; 3];
        for (r, row) in rows.iter().enumerate() {
            for c in 0..3 {
                m[r][c] = row[c] as f64;
            }
        }
        return m;
    }
    if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let a2 = 1.0 - (b * b + c * c + d * d);
        let a = if a2 > 0.0 { a2.sqrt() } else { 0.0 };
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        return [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                qfac * 2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                qfac * 2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                qfac * (a * a + d * d - c * c - b * b),
            ],
        ];
    }
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
}

/// For each world axis (x = R, y = A, z = S): the voxel axis most nearly parallel to it,
/// and whether that voxel axis runs against the world axis. Greedy on |m|, largest first;
/// a degenerate matrix falls back to the identity.
fn orientation(m: [[f64; 3]; 3]) -> [(usize, bool); 3] {
    let mut out = [(0usize, false); 3];
    let mut used_w = [false; 3];
    let mut used_v = [false; 3];
    for _ in 0..3 {
        let mut best: Option<(usize, usize, f64)> = None;
        for (w, row) in m.iter().enumerate() {
            for (v, &val) in row.iter().enumerate() {
                if used_w[w] || used_v[v] || !val.is_finite() {
                    continue;
                }
                if best.is_none_or(|(_, _, b)| val.abs() > b) {
                    best = Some((w, v, val.abs()));
                }
            }
        }
        match best {
            Some((w, v, mag)) if mag > 0.0 => {
                used_w[w] = true;
                used_v[v] = true;
                out[w] = (v, m[w][v] < 0.0);
            }
            _ => return [(0, false), (1, false), (2, false)],
        }
    }
    out
}

/// The size of the NIfTI-1 header plus its 4-byte extension flag.
const HEADER_BYTES: usize = 352;

/// Reads a `.nii` or `.nii.gz` file's header and voxel bytes.
///
/// Checked before the voxels are allocated: the header's datatype is a real scalar type
/// and its bitpix agrees with it, the dimensions are valid and within the element cap,
/// `vox_offset` is a finite offset at or past the header (the voxels are read from there),
/// scl_slope/scl_inter are finite where they apply, and an uncompressed file holds every
/// voxel byte. A `.gz` file is read to its end, so gzip's CRC and length trailer are
/// checked: a corrupt or cut-short archive is refused, not read as if whole.
fn read_file(path: &Path) -> Result<(NiftiHeader, Vec<u8>)> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buffered = std::io::BufReader::new(file);
    let gz = {
        use std::io::BufRead;
        let head = buffered
            .fill_buf()
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let mut source: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::GzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let io_err = |what: &str, e: std::io::Error| {
        let why = if gz {
            "the gzip data is corrupt or cut short (its CRC or length check failed)".to_string()
        } else {
            e.to_string()
        };
        Error::file(path, format!("{what}: {why}"))
    };
    let mut head = Vec::with_capacity(HEADER_BYTES);
    (&mut source)
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| io_err("cannot read the NIfTI header", e))?;
    if head.len() < 348 {
        return Err(Error::file(
            path,
            format!(
                "truncated or not a NIfTI-1 file: {} bytes, shorter than the 348-byte header",
                head.len()
            ),
        ));
    }
    let header = guard::no_panic(path, "NIfTI", || {
        NiftiHeader::from_reader(&head[..348])
            .map_err(|e| Error::file(path, format!("not a readable NIfTI-1 header: {e}")))
    })?;
    let (n, element_bytes, vox_offset) = check_header(path, &header)?;
    let nbytes = n * element_bytes;
    if !gz && file_len < vox_offset.saturating_add(nbytes) {
        return Err(Error::file(
            path,
            format!(
                "truncated: the header claims {nbytes} bytes of voxels from vox_offset {vox_offset}, \
                 but the file has {file_len} bytes"
            ),
        ));
    }
    // Skip the extensions (up to vox_offset), then read the voxels.
    let skip = vox_offset.saturating_sub(head.len() as u64);
    if head.len() > vox_offset as usize {
        // vox_offset = 348 with no extension flag: the first voxel bytes are in `head`.
        return Err(Error::Unsupported(format!(
            "{}: vox_offset {vox_offset} lies inside the 352-byte header block; expected at least 352",
            path.display()
        )));
    }
    let skipped = std::io::copy(&mut (&mut source).take(skip), &mut std::io::sink())
        .map_err(|e| io_err("cannot read the NIfTI extensions", e))?;
    let mut raw = Vec::new();
    raw.try_reserve_exact(nbytes as usize).map_err(|_| {
        Error::TooLarge(format!(
            "{}: cannot allocate {nbytes} bytes for the NIfTI voxels",
            path.display()
        ))
    })?;
    (&mut source)
        .take(nbytes)
        .read_to_end(&mut raw)
        .map_err(|e| io_err("cannot read the NIfTI voxels", e))?;
    if skipped < skip || (raw.len() as u64) < nbytes {
        return Err(Error::file(
            path,
            format!(
                "truncated: the header claims {nbytes} bytes of voxels from vox_offset {vox_offset}, \
                 but the data ends after {}",
                skipped + raw.len() as u64 + head.len() as u64
            ),
        ));
    }
    if gz {
        // Read to the end so the gzip trailer (CRC-32 and length) is verified.
        std::io::copy(&mut source, &mut std::io::sink())
            .map_err(|e| io_err("cannot read to the end of the gzip data", e))?;
    }
    Ok((header, raw))
}

/// Validates the header fields the voxel reader relies on; returns the number of voxels,
/// the bytes per voxel and the voxel offset.
fn check_header(path: &Path, h: &NiftiHeader) -> Result<(u64, u64, u64)> {
    let bad = |m: String| Error::file(path, m);
    if &h.magic == b"ni1\0" {
        return Err(Error::Unsupported(format!(
            "{}: a NIfTI-1 header of a .hdr/.img pair; expected a single .nii or .nii.gz file",
            path.display()
        )));
    }
    if &h.magic != b"n+1\0" {
        return Err(bad(format!(
            "not a NIfTI-1 file: magic {:?}, expected \"n+1\"",
            String::from_utf8_lossy(&h.magic)
        )));
    }
    let dtype = h.data_type().map_err(|_| {
        bad(format!(
            "NIfTI datatype code {} is not a known type",
            h.datatype
        ))
    })?;
    use NiftiType::*;
    if !matches!(
        dtype,
        Uint8 | Int8 | Uint16 | Int16 | Uint32 | Int32 | Uint64 | Int64 | Float32 | Float64
    ) {
        return Err(Error::Unsupported(format!(
            "{}: NIfTI data type {dtype:?} is not supported; expected a real scalar type \
             (integer, float32 or float64)",
            path.display()
        )));
    }
    let element_bytes = dtype.size_of() as u64;
    if h.bitpix as i64 != 8 * element_bytes as i64 {
        return Err(bad(format!(
            "the header's bitpix {} disagrees with its datatype {dtype:?} ({} bits): corrupt header",
            h.bitpix,
            8 * element_bytes
        )));
    }
    let dims: Vec<usize> = h
        .dim()
        .map_err(|_| {
            bad(format!(
                "NIfTI dimensions {:?} are invalid: expected dim[0] in 1..=7 and dim[1..=dim[0]] >= 1",
                h.dim
            ))
        })?
        .iter()
        .map(|&d| d as usize)
        .collect();
    let n = crate::limits::check_elements(&format!("{} (NIfTI)", path.display()), &dims)?;
    let off = h.vox_offset;
    if !((0.0..=1e12).contains(&off) && off.fract() == 0.0) {
        return Err(bad(format!(
            "vox_offset {off} is not a byte offset; expected a whole number >= 352"
        )));
    }
    let slope = h.scl_slope;
    if slope.is_finite() && slope != 0.0 {
        crate::limits::check_number("scl_slope", slope as f64)
            .and_then(|_| crate::limits::check_number("scl_inter", h.scl_inter as f64))
            .map_err(|e| bad(format!("{e} (NIfTI intensity scaling)")))?;
    }
    Ok((n, element_bytes, off as u64))
}

/// Reads the volume as (x, y, z) in RAS+ order (x increasing to the patient's right,
/// y anterior, z superior), values with scl_slope/scl_inter applied.
fn read_ras(path: &Path) -> Result<Array3<f32>> {
    let (header, raw) = read_file(path)?;
    let mut header = header;
    header.fix();
    let dims: Vec<usize> = header
        .dim()
        .map_err(|e| Error::file(path, e))?
        .iter()
        .map(|&d| d as usize)
        .collect();
    if dims.iter().skip(3).any(|&d| d > 1) {
        return Err(Error::file(
            path,
            format!("NIfTI array of dimensions {dims:?}; expected one 3-D volume (x, y, z), not a series"),
        ));
    }
    // Converted without the crate's scaling (it maps NaN slopes to NaN values); the NIfTI
    // rule is applied below: scl_slope of 0 or non-finite means no scaling.
    let mut unscaled = header.clone();
    unscaled.scl_slope = 0.0;
    unscaled.scl_inter = 0.0;
    let mut arr = guard::no_panic(path, "NIfTI", || {
        let vol = InMemNiftiVolume::from_raw_data(&unscaled, raw)
            .map_err(|e| Error::file(path, format!("not a readable NIfTI-1 volume: {e}")))?;
        vol.into_ndarray::<f32>()
            .map_err(|e| Error::file(path, format!("not a readable NIfTI-1 volume: {e}")))
    })?;
    while arr.ndim() > 3 {
        let last = arr.ndim() - 1;
        arr = arr.index_axis_move(Axis(last), 0);
    }
    while arr.ndim() < 3 {
        arr.insert_axis_inplace(Axis(arr.ndim()));
    }
    let mut arr = arr
        .into_dimensionality::<Ix3>()
        .map_err(|e| Error::file(path, e))?;
    let (slope, inter) = (header.scl_slope, header.scl_inter);
    if slope.is_finite() && slope != 0.0 {
        arr.mapv_inplace(|v| v * slope + inter);
    }
    let orient = orientation(directions(&header));
    let mut ras = arr.permuted_axes([orient[0].0, orient[1].0, orient[2].0]);
    for (w, &(_, flip)) in orient.iter().enumerate() {
        if flip {
            ras.invert_axis(Axis(w));
        }
    }
    Ok(ras)
}

/// A plane P[u, v] of the RAS volume shown with u's high end on the left, v's at the top.
fn display(p: ArrayView2<f32>) -> Array2<f32> {
    p.slice(s![..;-1, ..;-1]).t().to_owned()
}

fn ras_slice(
    path: &Path,
    ras: ArrayView3<f32>,
    opts: &ReadOptions,
) -> Result<(Array2<f32>, usize)> {
    let axis = match opts.axis {
        SliceAxis::Axial => 2,
        SliceAxis::Coronal => 1,
        SliceAxis::Sagittal => 0,
    };
    let n = ras.len_of(Axis(axis));
    let k = opts.slice.unwrap_or(n / 2);
    if k >= n {
        return Err(Error::file(
            path,
            format!(
                "{} slice {k} is out of range: the volume has {n} {} slices (valid 0..={})",
                opts.axis.name(),
                opts.axis.name(),
                n.saturating_sub(1)
            ),
        ));
    }
    Ok((display(ras.index_axis(Axis(axis), k)), k))
}

/// One slice, normalised by its maximum (scale 1 for a slice with no positive value).
pub(super) fn read_slice(path: &Path, opts: &ReadOptions) -> Result<LoadedImage> {
    let ras = read_ras(path)?;
    let (img, k) = ras_slice(path, ras.view(), opts)?;
    let max = img.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scale = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    Ok(LoadedImage {
        data: (img / scale).insert_axis(Axis(0)),
        intensity: Intensity::scaled(scale, "nifti"),
        source: format!("{}[{} {k}]", path.display(), opts.axis.name()),
    })
}

/// The stack of axial slices (D, H, W), inferior to superior, as displayed.
pub(super) fn read_volume(path: &Path) -> Result<Array3<f32>> {
    let ras = read_ras(path)?;
    let v = ras.slice(s![..;-1, ..;-1, ..]).permuted_axes([2, 1, 0]);
    Ok(v.as_standard_layout().into_owned())
}

/// Writes a volume `(D, H, W)` (slices of images shown with row 0 at the top) as NIfTI-1
/// float32, gzip-compressed for `.nii.gz`, atomically. Voxel axes: x = image columns (left
/// to right), y = image rows from the bottom (so viewers show row 0 at the top), z = slices;
/// the sform maps them to millimetres by `voxel_mm = (column, row, slice)` spacing with the
/// volume's first voxel at the origin (no patient orientation is known for raw data).
pub fn write_volume(path: &Path, volume: ArrayView3<f32>, voxel_mm: [f32; 3]) -> Result<()> {
    let (d, h, w) = volume.dim();
    let xyz = Array3::from_shape_fn((w, h, d), |(x, y, z)| volume[[z, h - 1 - y, x]]);
    let mut header = ::nifti::NiftiHeader::default();
    header.pixdim[1..4].copy_from_slice(&voxel_mm);
    header.xyzt_units = 2; // millimetres
    header.sform_code = 1; // scanner-anatomical (here: the voxel grid in mm)
    header.srow_x = [voxel_mm[0], 0.0, 0.0, 0.0];
    header.srow_y = [0.0, voxel_mm[1], 0.0, 0.0];
    header.srow_z = [0.0, 0.0, voxel_mm[2], 0.0];
    let gz = super::extension(path) == "nii.gz";
    super::write_atomic(path, |tmp| {
        // The writer picks its file names from the extension, and replaces whatever
        // follows the last dot before it (`.x.nii.tmp-1-0.nii` would become `.x.nii.nii`):
        // write a dot-free `.NAME.nii[.gz]` beside the temporary file, then move it there.
        let stem = tmp
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches('.')
                    .replace('.', "_")
            })
            .unwrap_or_default();
        let named = tmp.with_file_name(format!(".{stem}{}", if gz { ".nii.gz" } else { ".nii" }));
        let written = ::nifti::writer::WriterOptions::new(&named)
            .reference_header(&header)
            .write_header_file(false)
            .compress(gz)
            .write_nifti(&xyz)
            .map_err(|e| Error::file(path, format!("could not write NIfTI: {e}")))
            .and_then(|()| {
                std::fs::rename(&named, tmp)
                    .map_err(|e| Error::file(path, format!("could not write NIfTI: {e}")))
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&named);
        }
        written
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_of_lsa_affine() {
        // The ITK brain fixture: i -> L (-x), j -> S (+z), k -> A (+y).
        let m = [[-2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 2.0, 0.0]];
        assert_eq!(orientation(m), [(0, true), (2, false), (1, false)]);
    }

    #[test]
    fn orientation_of_oblique_affine_picks_dominant_axes() {
        let m = [[0.9, 0.3, 0.0], [-0.2, 0.1, -1.0], [0.1, 0.95, 0.05]];
        assert_eq!(orientation(m), [(0, false), (2, true), (1, false)]);
    }

    #[test]
    fn qform_identity_and_flip() {
        let mut h = ::nifti::NiftiHeader {
            sform_code: 0,
            qform_code: 1,
            quatern_b: 0.0,
            quatern_c: 0.0,
            quatern_d: 0.0,
            pixdim: [-1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            ..Default::default()
        };
        let m = directions(&h);
        assert_eq!(orientation(m), [(0, false), (1, false), (2, true)]);
        // 180 degrees about z: b = c = 0, d = 1 -> x and y flipped.
        h.pixdim[0] = 1.0;
        h.quatern_d = 1.0;
        assert_eq!(
            orientation(directions(&h)),
            [(0, true), (1, true), (2, false)]
        );
    }

    #[test]
    fn display_puts_high_ends_left_and_top() {
        // P[u, v] = 10 u + v, u in 0..2, v in 0..3.
        let p = Array2::from_shape_fn((2, 3), |(u, v)| (10 * u + v) as f32);
        let d = display(p.view());
        assert_eq!(d.dim(), (3, 2));
        assert_eq!(d[[0, 0]], 12.0); // max u, max v
        assert_eq!(d[[2, 1]], 0.0);
    }

    #[test]
    fn volumes_write_and_read_back_as_nii_and_nii_gz_leaving_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let v = Array3::from_shape_fn((2, 5, 4), |(z, y, x)| (z * 20 + y * 4 + x) as f32);
        for name in ["a.nii", "b.nii.gz", "c.d.nii"] {
            let p = dir.path().join(name);
            write_volume(&p, v.view(), [1.0, 1.0, 1.0]).unwrap();
            // Read back as displayed: the writer's unit sform has +x to the right, which the
            // reader shows in radiological convention (patient left on the image's right).
            let back = read_volume(&p).unwrap();
            assert_eq!(back.slice(s![.., .., ..;-1]), v, "{name}");
        }
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a.nii", "b.nii.gz", "c.d.nii"]);
    }
}
