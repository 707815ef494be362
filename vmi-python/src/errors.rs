//! Python exceptions for the Rust errors: a small hierarchy under `VmiError`, each
//! carrying the Rust error's text, and the fields a handler acts on (`address` of a page
//! fault, `feature` and `reason` of an unsupported request).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    vmi,
    VmiError,
    PyException,
    "Base of every error the vmi package raises; its text is the Rust error's."
);
create_exception!(
    vmi,
    Disconnected,
    VmiError,
    "The session with the guest or its VMM is gone."
);
create_exception!(vmi, Timeout, VmiError, "A wait ran out of time.");
create_exception!(
    vmi,
    Unsupported,
    VmiError,
    "The backend or host cannot do this; `feature` and `reason` say what and why."
);
create_exception!(
    vmi,
    PageFault,
    VmiError,
    "Translating a virtual address failed: `address` is the virtual address; the guest \
     would take a page fault there."
);
create_exception!(
    vmi,
    UnmappedPhysical,
    VmiError,
    "A guest-physical range not backed by guest memory; `address` is its start."
);
create_exception!(
    vmi,
    LinuxError,
    VmiError,
    "Linux OS awareness (vmi-linux) failed: a symbol, type or field not found, or guest \
     data that does not hold together."
);

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("VmiError", py.get_type::<VmiError>())?;
    m.add("Disconnected", py.get_type::<Disconnected>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("Unsupported", py.get_type::<Unsupported>())?;
    m.add("PageFault", py.get_type::<PageFault>())?;
    m.add("UnmappedPhysical", py.get_type::<UnmappedPhysical>())?;
    m.add("LinuxError", py.get_type::<LinuxError>())?;
    Ok(())
}

/// An exception of class `T` with `text` and extra attributes.
fn with_attrs<T: pyo3::PyTypeInfo>(text: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    Python::attach(|py| {
        let made = py.get_type::<T>().call1((text.clone(),)).and_then(|exc| {
            for (name, value) in attrs {
                exc.setattr(*name, value)?;
            }
            Ok(exc)
        });
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    })
}

/// The Python exception for a vmi-core error.
pub(crate) fn core(e: vmi_core::Error) -> PyErr {
    use vmi_core::Error as E;
    let text = e.to_string();
    Python::attach(|py| match &e {
        E::Disconnected { .. } => Disconnected::new_err(text),
        E::Timeout { .. } => Timeout::new_err(text),
        E::Unsupported { feature, reason } => with_attrs::<Unsupported>(
            text,
            &[
                (
                    "feature",
                    feature
                        .to_string()
                        .into_pyobject(py)
                        .unwrap()
                        .into_any()
                        .unbind(),
                ),
                (
                    "reason",
                    reason
                        .to_string()
                        .into_pyobject(py)
                        .unwrap()
                        .into_any()
                        .unbind(),
                ),
            ],
        ),
        E::PageFault { gva, .. } => with_attrs::<PageFault>(
            text,
            &[(
                "address",
                gva.0.into_pyobject(py).unwrap().into_any().unbind(),
            )],
        ),
        E::UnmappedPhysical { gpa, .. } => with_attrs::<UnmappedPhysical>(
            text,
            &[(
                "address",
                gpa.0.into_pyobject(py).unwrap().into_any().unbind(),
            )],
        ),
        _ => VmiError::new_err(text),
    })
}

/// The Python exception for a vmi-linux error (its vmi-core errors keep their class).
pub(crate) fn linux(e: vmi_linux::Error) -> PyErr {
    match e {
        vmi_linux::Error::Vmi(inner) => core(inner),
        other => LinuxError::new_err(other.to_string()),
    }
}

/// `Result` of vmi-core into `PyResult`.
pub(crate) trait CoreResult<T> {
    /// Maps the error with [`core`].
    fn py(self) -> PyResult<T>;
}

impl<T> CoreResult<T> for vmi_core::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(core)
    }
}

/// `Result` of vmi-linux into `PyResult`.
pub(crate) trait LinuxResult<T> {
    /// Maps the error with [`linux`].
    fn py(self) -> PyResult<T>;
}

impl<T> LinuxResult<T> for vmi_linux::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(linux)
    }
}
