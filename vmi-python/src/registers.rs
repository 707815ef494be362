//! Registers by name: the table of names Python uses, and `Registers`, a read-only
//! mapping over one vCPU's register snapshot.

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use vmi_core::registers::{SegmentField, SegmentRegister};
use vmi_core::{Register, RegisterSnapshot};

/// Names of the registers that are not segments, descriptor tables or MSRs.
const PLAIN: [(&str, Register); 31] = [
    ("rax", Register::Rax),
    ("rbx", Register::Rbx),
    ("rcx", Register::Rcx),
    ("rdx", Register::Rdx),
    ("rsi", Register::Rsi),
    ("rdi", Register::Rdi),
    ("rbp", Register::Rbp),
    ("rsp", Register::Rsp),
    ("r8", Register::R8),
    ("r9", Register::R9),
    ("r10", Register::R10),
    ("r11", Register::R11),
    ("r12", Register::R12),
    ("r13", Register::R13),
    ("r14", Register::R14),
    ("r15", Register::R15),
    ("rip", Register::Rip),
    ("rflags", Register::Rflags),
    ("cr0", Register::Cr0),
    ("cr2", Register::Cr2),
    ("cr3", Register::Cr3),
    ("cr4", Register::Cr4),
    ("cr8", Register::Cr8),
    ("dr0", Register::Dr0),
    ("dr1", Register::Dr1),
    ("dr2", Register::Dr2),
    ("dr3", Register::Dr3),
    ("dr6", Register::Dr6),
    ("dr7", Register::Dr7),
    ("xcr0", Register::Xcr0),
    ("efer", Register::Efer),
];

/// Descriptor-table registers.
const TABLES: [(&str, Register); 4] = [
    ("gdtr_base", Register::GdtrBase),
    ("gdtr_limit", Register::GdtrLimit),
    ("idtr_base", Register::IdtrBase),
    ("idtr_limit", Register::IdtrLimit),
];

/// Segment registers: `cs` is the selector, `cs_base`, `cs_limit`, `cs_ar` (VMX access
/// rights) the rest.
const SEGMENTS: [(&str, SegmentRegister); 8] = [
    ("cs", SegmentRegister::Cs),
    ("ds", SegmentRegister::Ds),
    ("es", SegmentRegister::Es),
    ("fs", SegmentRegister::Fs),
    ("gs", SegmentRegister::Gs),
    ("ss", SegmentRegister::Ss),
    ("ldtr", SegmentRegister::Ldtr),
    ("tr", SegmentRegister::Tr),
];

/// Suffixes of the segment fields.
const FIELDS: [(&str, SegmentField); 4] = [
    ("", SegmentField::Selector),
    ("_base", SegmentField::Base),
    ("_limit", SegmentField::Limit),
    ("_ar", SegmentField::Attributes),
];

/// Every register name with its register, MSRs aside (`msr_0xc0000080`).
fn named() -> impl Iterator<Item = (String, Register)> {
    let segs = SEGMENTS.into_iter().flat_map(|(s, reg)| {
        FIELDS
            .into_iter()
            .map(move |(suffix, f)| (format!("{s}{suffix}"), Register::Segment(reg, f)))
    });
    PLAIN
        .into_iter()
        .chain(TABLES)
        .map(|(n, r)| (n.to_owned(), r))
        .chain(segs)
}

/// The register a name means (case-insensitive); MSRs as `msr_0x…` or `msr_<decimal>`.
pub(crate) fn parse(name: &str) -> PyResult<Register> {
    let lower = name.to_ascii_lowercase();
    if let Some(index) = lower.strip_prefix("msr_") {
        let parsed = match index.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => index.parse(),
        };
        return parsed
            .map(Register::Msr)
            .map_err(|_| PyValueError::new_err(format!("bad MSR index in {name:?}")));
    }
    named()
        .find(|(n, _)| *n == lower)
        .map(|(_, r)| r)
        .ok_or_else(|| PyKeyError::new_err(format!("no register named {name:?}")))
}

/// `(name, value)` of every register the snapshot holds, in table order, MSRs last.
pub(crate) fn entries(snap: &RegisterSnapshot) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = named()
        .filter_map(|(n, r)| snap.get(r).map(|v| (n, v)))
        .collect();
    out.extend(
        snap.msrs
            .iter()
            .filter(|(i, _)| *i != vmi_core::registers::msr::EFER)
            .map(|(i, v)| (format!("msr_{i:#x}"), v)),
    );
    out
}

/// The registers of one vCPU at one moment: a read-only mapping from register name
/// (`"rax"`, `"cr3"`, `"cs_base"`, `"msr_0xc0000080"`) to value. Attribute access works
/// too (`regs.rip`). Only what the backend read is present.
#[pyclass(module = "vmi", frozen, mapping)]
pub(crate) struct Registers {
    pub(crate) snapshot: RegisterSnapshot,
}

impl Registers {
    /// The value of `name`, `KeyError` when unknown or absent.
    fn value(&self, name: &str) -> PyResult<u64> {
        let reg = parse(name)?;
        self.snapshot
            .get(reg)
            .ok_or_else(|| PyKeyError::new_err(format!("{name} was not read")))
    }
}

#[pymethods]
impl Registers {
    fn __getitem__(&self, name: &str) -> PyResult<u64> {
        self.value(name)
    }

    fn __getattr__(&self, name: &str) -> PyResult<u64> {
        self.value(name)
            .map_err(|_| pyo3::exceptions::PyAttributeError::new_err(name.to_owned()))
    }

    fn __contains__(&self, name: &str) -> bool {
        self.value(name).is_ok()
    }

    fn __len__(&self) -> usize {
        entries(&self.snapshot).len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.try_iter().map(Bound::into_any)
    }

    /// The register names present.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let names: Vec<String> = entries(&self.snapshot)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        PyList::new(py, names)
    }

    /// The values, in the order of `keys()`.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let values: Vec<u64> = entries(&self.snapshot)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        PyList::new(py, values)
    }

    /// `(name, value)` pairs.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, entries(&self.snapshot))
    }

    /// The value of `name`, or `default` when absent.
    #[pyo3(signature = (name, default=None))]
    fn get(&self, name: &str, default: Option<u64>) -> Option<u64> {
        self.value(name).ok().or(default)
    }

    /// A plain `dict` copy.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (n, v) in entries(&self.snapshot) {
            d.set_item(n, v)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let shown: Vec<String> = entries(&self.snapshot)
            .into_iter()
            .take(18)
            .map(|(n, v)| format!("{n}={v:#x}"))
            .collect();
        format!(
            "Registers({}{})",
            shown.join(", "),
            if self.__len__() > 18 { ", …" } else { "" }
        )
    }
}

/// A snapshot holding `values` set on top of `base` (the registers as read, so only the
/// named ones change).
pub(crate) fn apply(
    base: &RegisterSnapshot,
    values: &Bound<'_, PyAny>,
) -> PyResult<RegisterSnapshot> {
    let mut snap = base.clone();
    let items = if let Ok(d) = values.cast::<PyDict>() {
        d.items().into_any()
    } else {
        values.call_method0("items")?
    };
    for item in items.try_iter()? {
        let (name, value): (String, u64) = item?.extract()?;
        snap.set(parse(&name)?, value)
            .map_err(crate::errors::core)?;
    }
    Ok(snap)
}

/// Adds the classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Registers>()
}
