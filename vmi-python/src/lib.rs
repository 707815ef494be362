//! Python bindings of the vmi crates: the native module `vmi._vmi` behind the `vmi`
//! Python package (built with maturin; see the crate's README).
//!
//! One `Vm` is one introspection session, opened through either backend:
//! vmi-legacy (an unpatched QEMU's QMP socket, optionally its GDB stub) or vmi-kvm (a
//! KVMi listener socket). Everything Python holds that must be undone — a pause, a
//! breakpoint, a monitor, an event waiting for its answer — is a Rust guard inside a
//! Python object: leaving a `with` block, closing it, or the object being collected
//! undoes it, also when Python code raised.
//!
//! Every wait (pause, events, connecting) and every bulk read runs with the GIL released,
//! so other Python threads go on meanwhile.

mod errors;
mod events;
mod guest;
mod linux;
mod physfile;
mod registers;
mod vm;

use pyo3::prelude::*;

/// The native part of the `vmi` package (import `vmi`, not this).
#[pymodule]
fn _vmi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    vm::register(m)?;
    registers::register(m)?;
    events::register(m)?;
    linux::register(m)?;
    physfile::register(m)?;
    Ok(())
}
