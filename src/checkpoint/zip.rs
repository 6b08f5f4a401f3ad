//! A minimal zip reader: the container of PyTorch's `.pt` files (`torch.save` since 1.6).
//!
//! Reads the central directory (zip64 included), then each entry on demand: stored entries
//! (what `torch.save` writes) are sliced out of the file, deflated ones are inflated with
//! `flate2`; every entry's CRC-32 is checked. Every offset and size is checked against the
//! file's length before it is used, and an entry's claimed size against the element cap of
//! [`crate::limits`] before anything is allocated for it: a truncated or forged archive is an
//! error naming the file and the entry, never a panic. Encrypted entries, multi-disk
//! archives and compression methods other than stored (0) and deflate (8) are refused.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One entry of the central directory.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

impl Entry {
    /// The entry's uncompressed size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A zip archive held in memory.
#[derive(Debug)]
pub struct ZipArchive {
    path: PathBuf,
    bytes: Vec<u8>,
    entries: BTreeMap<String, Entry>,
}

const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const EOCD64_LOCATOR: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl ZipArchive {
    /// Reads `path` and its central directory.
    pub fn open(path: &Path) -> Result<ZipArchive> {
        let bytes = crate::io::read_bytes(path, crate::limits::max_file_bytes())?;
        Self::parse(path, bytes)
    }

    /// Parses the bytes of an archive (`path` names it in messages).
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<ZipArchive> {
        let err = |m: String| Error::file(path, m);
        let eocd = find_eocd(&bytes).ok_or_else(|| {
            err(if bytes.starts_with(&[0x80]) {
                "a pickle without a zip container: a legacy (PyTorch < 1.6) checkpoint; re-save it with a recent PyTorch (torch.save(torch.load(f), f))".into()
            } else {
                format!(
                    "not a zip archive (no end-of-central-directory record in {} bytes): not a PyTorch .pt file, or truncated",
                    bytes.len()
                )
            })
        })?;
        let short = || err("the end-of-central-directory record is truncated".into());
        let disk = u16_at(&bytes, eocd + 4).ok_or_else(short)?;
        let cd_disk = u16_at(&bytes, eocd + 6).ok_or_else(short)?;
        if disk != 0 || cd_disk != 0 {
            return Err(Error::Unsupported(format!(
                "{}: multi-disk zip archives are not supported",
                path.display()
            )));
        }
        let mut count = u64::from(u16_at(&bytes, eocd + 10).ok_or_else(short)?);
        let mut cd_size = u64::from(u32_at(&bytes, eocd + 12).ok_or_else(short)?);
        let mut cd_offset = u64::from(u32_at(&bytes, eocd + 16).ok_or_else(short)?);
        if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            // zip64: the locator sits just before the classic record.
            let loc = eocd
                .checked_sub(20)
                .filter(|&l| u32_at(&bytes, l) == Some(EOCD64_LOCATOR))
                .ok_or_else(|| {
                    err("zip64 archive without its end-of-central-directory locator".into())
                })?;
            let rec = u64_at(&bytes, loc + 8)
                .and_then(|r| usize::try_from(r).ok())
                .filter(|&r| u32_at(&bytes, r) == Some(EOCD64))
                .ok_or_else(|| {
                    err(
                        "the zip64 end-of-central-directory record is missing or out of range"
                            .into(),
                    )
                })?;
            count = u64_at(&bytes, rec + 32).ok_or_else(short)?;
            cd_size = u64_at(&bytes, rec + 40).ok_or_else(short)?;
            cd_offset = u64_at(&bytes, rec + 48).ok_or_else(short)?;
        }
        let cd_end = cd_offset
            .checked_add(cd_size)
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| {
                err(format!(
                    "the central directory ({cd_size} bytes at offset {cd_offset}) lies outside the {}-byte file (truncated?)",
                    bytes.len()
                ))
            })?;
        // Each central record takes at least 46 bytes: a count beyond that is forged.
        if count > cd_size / 46 {
            return Err(err(format!(
                "the archive claims {count} entries in a {cd_size}-byte central directory"
            )));
        }
        let mut entries = BTreeMap::new();
        let mut at = cd_offset as usize;
        for i in 0..count {
            let e = read_central(&bytes, at, cd_end as usize).ok_or_else(|| {
                err(format!(
                    "central directory record {i} is malformed or truncated"
                ))
            })?;
            at = e.1;
            entries.insert(e.0.name.clone(), e.0);
        }
        Ok(ZipArchive {
            path: path.to_path_buf(),
            bytes,
            entries,
        })
    }

    /// The archive's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entry names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// The uncompressed bytes of entry `name`, CRC-checked (borrowed for a stored entry).
    pub fn read(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let err = |m: String| Error::file(&self.path, format!("zip entry `{name}`: {m}"));
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| err("missing from the archive".into()))?;
        if e.flags & 1 != 0 {
            return Err(err("is encrypted".into()));
        }
        crate::limits::check_elements(&format!("zip entry `{name}` (bytes)"), &[e.size as usize])?;
        let lo = usize::try_from(e.local_offset).map_err(|_| err("offset out of range".into()))?;
        if u32_at(&self.bytes, lo) != Some(LOCAL) {
            return Err(err(format!(
                "no local header at offset {lo} (truncated or corrupt archive)"
            )));
        }
        let n = u16_at(&self.bytes, lo + 26).unwrap_or(0) as usize;
        let m = u16_at(&self.bytes, lo + 28).unwrap_or(0) as usize;
        let start = lo + 30 + n + m;
        let data = usize::try_from(e.compressed)
            .ok()
            .and_then(|c| start.checked_add(c))
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(|| {
                err(format!(
                    "its {} bytes at offset {start} run past the end of the {}-byte file (truncated?)",
                    e.compressed,
                    self.bytes.len()
                ))
            })?;
        let out = match e.method {
            0 => {
                if e.compressed != e.size {
                    return Err(err(format!(
                        "stored entry with {} compressed but {} uncompressed bytes",
                        e.compressed, e.size
                    )));
                }
                Cow::Borrowed(data)
            }
            8 => {
                let mut out = Vec::with_capacity(e.size as usize);
                flate2::read::DeflateDecoder::new(data)
                    .take(e.size + 1)
                    .read_to_end(&mut out)
                    .map_err(|x| err(format!("cannot inflate: {x}")))?;
                if out.len() as u64 != e.size {
                    return Err(err(format!(
                        "inflates to {} bytes, the directory says {}",
                        out.len(),
                        e.size
                    )));
                }
                Cow::Owned(out)
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: zip entry `{name}` uses compression method {other}; only stored (0) and deflate (8) are supported",
                    self.path.display()
                )))
            }
        };
        let crc = crc32fast::hash(&out);
        if crc != e.crc {
            return Err(err(format!(
                "CRC-32 mismatch (stored {:08x}, computed {crc:08x}): the file is corrupt",
                e.crc
            )));
        }
        Ok(out)
    }
}

/// The offset of the end-of-central-directory record (searched backwards over the
/// comment's maximal length).
fn find_eocd(b: &[u8]) -> Option<usize> {
    let last = b.len().checked_sub(22)?;
    let first = last.saturating_sub(0xFFFF);
    (first..=last).rev().find(|&i| u32_at(b, i) == Some(EOCD))
}

/// One central directory record at `at` (ending before `end`), and where the next starts.
fn read_central(b: &[u8], at: usize, end: usize) -> Option<(Entry, usize)> {
    if at + 46 > end || u32_at(b, at)? != CENTRAL {
        return None;
    }
    let flags = u16_at(b, at + 8)?;
    let method = u16_at(b, at + 10)?;
    let crc = u32_at(b, at + 16)?;
    let mut compressed = u64::from(u32_at(b, at + 20)?);
    let mut size = u64::from(u32_at(b, at + 24)?);
    let n = u16_at(b, at + 28)? as usize;
    let m = u16_at(b, at + 30)? as usize;
    let k = u16_at(b, at + 32)? as usize;
    let mut local_offset = u64::from(u32_at(b, at + 42)?);
    let next = at + 46 + n + m + k;
    if next > end {
        return None;
    }
    let name = String::from_utf8(b[at + 46..at + 46 + n].to_vec()).ok()?;
    // zip64 extra field: the 8-byte values replace the saturated 32-bit ones, in order.
    let mut x = at + 46 + n;
    let x_end = x + m;
    while x + 4 <= x_end {
        let id = u16_at(b, x)?;
        let len = u16_at(b, x + 2)? as usize;
        let mut p = x + 4;
        if x + 4 + len > x_end {
            return None;
        }
        if id == 1 {
            for slot in [&mut size, &mut compressed, &mut local_offset] {
                if *slot == 0xFFFF_FFFF && p + 8 <= x + 4 + len {
                    *slot = u64_at(b, p)?;
                    p += 8;
                }
            }
        }
        x += 4 + len;
    }
    Some((
        Entry {
            name,
            method,
            flags,
            crc,
            compressed,
            size,
            local_offset,
        },
        next,
    ))
}
