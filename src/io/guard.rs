//! A boundary around third-party decoders: a panic inside one becomes an error naming the
//! file, and the panic hook prints nothing for it.
//!
//! We validate header fields ourselves before calling a decoder wherever we can (NIfTI
//! datatype and bitpix, DICOM bits and sizes); this guard is for what slips past. The
//! quiet hook is installed once and wraps whatever hook was there, so panics elsewhere
//! (and in other threads) are printed as before.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use crate::error::{Error, Result};

thread_local! {
    /// Set while this thread runs a guarded decoder: its panics are not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `decode` (a call into a third-party decoder of the file `path`, a `format` such as
/// "NIfTI"); a panic inside it becomes an [`Error::File`] saying the decoder failed.
pub(crate) fn no_panic<T>(
    path: &Path,
    format: &str,
    decode: impl FnOnce() -> Result<T>,
) -> Result<T> {
    install_quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let out = panic::catch_unwind(AssertUnwindSafe(decode));
    QUIET.with(|q| q.set(was));
    out.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown reason".into());
        Err(Error::file(
            path,
            format!("malformed {format} file: the decoder failed ({why})"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_file_error_and_a_normal_result_passes() {
        let p = Path::new("x.dcm");
        let e = no_panic::<()>(p, "DICOM", || panic!("bits_stored out of range")).unwrap_err();
        assert_eq!(e.kind(), "file");
        assert!(e.to_string().contains("bits_stored out of range"), "{e}");
        assert_eq!(no_panic(p, "DICOM", || Ok(3)).unwrap(), 3);
        // The flag is restored: a later panic outside the guard is printed again.
        assert!(!QUIET.with(Cell::get));
    }
}
