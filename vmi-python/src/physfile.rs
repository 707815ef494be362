//! `PhysicalFile`: guest-physical memory as a read-only, seekable binary file, the way a
//! raw memory dump presents it — what Volatility 3's file layer reads. Addresses where the
//! guest has no RAM (the PCI hole) read as zeros, like a raw dump's padding.

use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use vmi_core::prelude::*;

use crate::errors::CoreResult;
use crate::guest::GuestRef;
use crate::vm::DETACH_AT;

/// Guest-physical memory as a binary file of `size` bytes (the end of the highest RAM
/// range): `read`, `readinto`, `seek`, `tell`. Holes read as zeros.
#[pyclass(module = "vmi", frozen)]
pub(crate) struct PhysicalFile {
    guest: GuestRef,
    /// RAM ranges `(start, end)`, sorted.
    ranges: Vec<(u64, u64)>,
    size: u64,
    /// Position, or `None` once closed.
    pos: Mutex<Option<u64>>,
}

impl PhysicalFile {
    /// A file over the guest's RAM ranges.
    pub(crate) fn open(py: Python<'_>, guest: GuestRef) -> PyResult<Self> {
        let g = guest.get().py()?;
        let info = py.detach(|| crate::vm::memory_info(&g)).py()?;
        let mut ranges: Vec<(u64, u64)> =
            info.ranges.iter().map(|r| (r.start.0, r.end())).collect();
        ranges.sort_unstable();
        let size = ranges.iter().map(|r| r.1).max().unwrap_or(0);
        Ok(Self {
            guest,
            ranges,
            size,
            pos: Mutex::new(Some(0)),
        })
    }

    /// Fills `buf` with the bytes at `at`: RAM read, holes zeroed.
    fn fill(&self, at: u64, buf: &mut [u8]) -> vmi_core::Result<()> {
        buf.fill(0);
        let end = at + buf.len() as u64;
        let mut requests: Vec<(Gpa, &mut [u8])> = Vec::new();
        let mut rest: &mut [u8] = buf;
        let mut rest_at = at;
        for &(s, e) in &self.ranges {
            let lo = s.max(rest_at);
            let hi = e.min(end);
            if lo >= hi {
                continue;
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut((lo - rest_at) as usize);
            let (chunk, tail) = tail.split_at_mut((hi - lo) as usize);
            requests.push((Gpa(lo), chunk));
            rest = tail;
            rest_at = hi;
        }
        match requests.as_mut_slice() {
            [] => Ok(()),
            [(gpa, one)] => self.guest.read_physical(*gpa, one),
            many => self.guest.read_physical_many(many),
        }
    }

    /// The position, or `ValueError` once closed.
    fn position(&self) -> PyResult<u64> {
        self.pos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| PyValueError::new_err("I/O operation on closed file"))
    }

    fn set_position(&self, to: u64) {
        let mut p = self.pos.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_some() {
            *p = Some(to);
        }
    }

    /// How many bytes a read of `want` (negative: to the end) at `at` returns.
    fn span(&self, at: u64, want: i64) -> usize {
        let left = self.size.saturating_sub(at);
        let n = if want < 0 {
            left
        } else {
            left.min(want as u64)
        };
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

#[pymethods]
impl PhysicalFile {
    /// Reads up to `size` bytes (all to the end when negative) from the position.
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let at = self.position()?;
        let n = self.span(at, size);
        let bytes = PyBytes::new_with(py, n, |buf| {
            if n >= DETACH_AT {
                py.detach(|| self.fill(at, buf)).py()
            } else {
                self.fill(at, buf).py()
            }
        })?;
        self.set_position(at + n as u64);
        Ok(bytes)
    }

    /// Moves the position (`whence` 0: from the start, 1: from here, 2: from the end).
    #[pyo3(signature = (offset, whence=0))]
    fn seek(&self, offset: i64, whence: i32) -> PyResult<u64> {
        let base = match whence {
            0 => 0i128,
            1 => i128::from(self.position()?),
            2 => i128::from(self.size),
            _ => return Err(PyValueError::new_err(format!("bad whence {whence}"))),
        };
        self.position()?;
        let to = base + i128::from(offset);
        let to = u64::try_from(to).map_err(|_| PyOSError::new_err("negative seek position"))?;
        self.set_position(to);
        Ok(to)
    }

    /// The position.
    fn tell(&self) -> PyResult<u64> {
        self.position()
    }

    /// The file's size: the end of the highest RAM range.
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    /// The RAM ranges `(start, end)`.
    #[getter]
    fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.clone()
    }

    fn readable(&self) -> bool {
        true
    }

    fn seekable(&self) -> bool {
        true
    }

    fn writable(&self) -> bool {
        false
    }

    /// Closes this file (the session stays open).
    fn close(&self) {
        *self.pos.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether the file is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.pos.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }
}

/// Adds the class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PhysicalFile>()
}
