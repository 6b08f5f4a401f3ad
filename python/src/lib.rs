//! The `posterior` Python module (distribution `posterior-imaging`): operators, priors,
//! posterior samplers and benchmark suites on numpy arrays.
//!
//! Conventions (the library's): float32 arrays; an image is `(C, H, W)`, a batch
//! `(N, C, H, W)`; complex data a leading (re, im) pair (a complex image `(2, H, W)`,
//! multi-coil k-space `(coils, 2, H, W)`), complex64/complex128 arrays accepted and split
//! ([`convert`]). Long work runs with the GIL released; a Python prior takes it back for
//! each call; Ctrl-C interrupts a reconstruction with `KeyboardInterrupt`.

use pyo3::prelude::*;

mod convert;
mod operator;
mod prior;
mod recon;

#[pymodule]
fn _posterior(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<operator::Operator>()?;
    m.add_class::<prior::Prior>()?;
    m.add_class::<prior::CallablePrior>()?;
    m.add_class::<prior::Info>()?;
    m.add_class::<recon::Result_>()?;
    m.add_function(wrap_pyfunction!(operator::operator, m)?)?;
    m.add_function(wrap_pyfunction!(recon::reconstruct, m)?)?;
    m.add_function(wrap_pyfunction!(recon::bench, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
