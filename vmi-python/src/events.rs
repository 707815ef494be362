//! Events, monitors and breakpoints.
//!
//! An `Event` owns the Rust `PendingEvent`: `reply()` answers it once, and an event never
//! answered gets the default answer (continue) when it is collected — or at the end of its
//! `with` block — exactly as a dropped `PendingEvent` does in Rust. Monitors and
//! breakpoints are handles that remove what they set on `close()`, at the end of their
//! `with` block, or when collected.

use std::sync::Mutex;

use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use vmi_core::event::{InterruptKind, RegisterAccess, RegisterFilter, RegisterId};
use vmi_core::prelude::*;
use vmi_core::{
    Action, Breakpoint as CoreBreakpoint, EventKind, Monitor as CoreMonitor, PendingEvent,
    Response, VcpuSet, View,
};

use crate::errors::{CoreResult, VmiError};
use crate::guest::GuestRef;
use crate::registers::{self, Registers};
use crate::vm::duration;

/// A trapped event, waiting for its answer until `reply()` (or until collected, when it
/// gets the default answer: continue).
#[pyclass(module = "vmi", frozen)]
pub(crate) struct Event {
    pending: Mutex<Option<PendingEvent>>,
    event: vmi_core::Event,
}

impl Event {
    pub(crate) fn new(pending: PendingEvent) -> Self {
        let event = pending.event().clone();
        Self {
            pending: Mutex::new(Some(pending)),
            event,
        }
    }

    /// Answers with `response` (once).
    fn answer(&self, py: Python<'_>, response: Response) -> PyResult<()> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match pending {
            Some(p) => py.detach(|| p.reply(response)).py(),
            None => Err(VmiError::new_err("this event was already answered")),
        }
    }
}

/// The fields of an event kind, by LibVMI's names.
fn details<'py>(py: Python<'py>, kind: &EventKind) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match kind {
        EventKind::MemoryAccess {
            gfn,
            offset,
            gla,
            access,
            page_walk,
        } => {
            d.set_item("gfn", gfn.0)?;
            d.set_item("offset", offset)?;
            d.set_item("gla", gla.map(|g| g.0))?;
            d.set_item("access", format!("{access:?}"))?;
            d.set_item("page_walk", page_walk)?;
        }
        EventKind::Register {
            register,
            access,
            value,
            previous,
        } => {
            let name = match register {
                RegisterId::Cr(n) => format!("cr{n}"),
                RegisterId::Msr(i) => format!("msr_{i:#x}"),
                RegisterId::Xcr(i) => format!("xcr{i}"),
                other => format!("{other:?}"),
            };
            d.set_item("register", name)?;
            d.set_item("access", format!("{access:?}").to_lowercase())?;
            d.set_item("value", value)?;
            d.set_item("previous", *previous)?;
        }
        EventKind::Breakpoint {
            gla,
            gfn,
            offset,
            insn_length,
        } => {
            d.set_item("gla", gla.0)?;
            d.set_item("gfn", gfn.0)?;
            d.set_item("offset", offset)?;
            d.set_item("insn_length", insn_length)?;
        }
        EventKind::Singlestep {
            gla,
            gfn,
            offset,
            failed,
        } => {
            d.set_item("gla", gla.0)?;
            d.set_item("gfn", gfn.map(|g| g.0))?;
            d.set_item("offset", offset)?;
            d.set_item("failed", failed)?;
        }
        EventKind::Cpuid {
            leaf,
            subleaf,
            insn_length,
        } => {
            d.set_item("leaf", leaf)?;
            d.set_item("subleaf", subleaf)?;
            d.set_item("insn_length", insn_length)?;
        }
        EventKind::Hypercall { gla, gfn, offset } => {
            d.set_item("gla", gla.0)?;
            d.set_item("gfn", gfn.map(|g| g.0))?;
            d.set_item("offset", offset)?;
        }
        EventKind::NextInterrupt {
            vector,
            error_code,
            cr2,
            ..
        }
        | EventKind::Trap {
            vector,
            error_code,
            cr2,
            ..
        } => {
            d.set_item("vector", vector)?;
            d.set_item("error_code", *error_code)?;
            d.set_item("cr2", cr2)?;
        }
        EventKind::Descriptor {
            descriptor,
            is_write,
            ..
        } => {
            d.set_item("descriptor", format!("{descriptor:?}").to_lowercase())?;
            d.set_item("is_write", is_write)?;
        }
        EventKind::Xsetbv {
            xcr,
            old_value,
            new_value,
        } => {
            d.set_item("xcr", xcr)?;
            d.set_item("old_value", old_value)?;
            d.set_item("new_value", new_value)?;
        }
        EventKind::DebugException {
            gla,
            gfn,
            offset,
            insn_length,
            dr6,
            ..
        } => {
            d.set_item("gla", gla.0)?;
            d.set_item("gfn", gfn.map(|g| g.0))?;
            d.set_item("offset", offset)?;
            d.set_item("insn_length", insn_length)?;
            d.set_item("dr6", *dr6)?;
        }
        _ => {}
    }
    Ok(d)
}

/// The action named `name`.
fn action(name: &str) -> PyResult<Action> {
    Ok(match name {
        "continue" => Action::Continue,
        "reinject" => Action::Reinject,
        "emulate" => Action::Emulate,
        "emulate_no_write" => Action::EmulateNoWrite,
        "deny" => Action::Deny,
        "retry" => Action::Retry,
        other => {
            return Err(PyValueError::new_err(format!(
            "unknown action {other:?} (continue, reinject, emulate, emulate_no_write, deny, retry)"
        )))
        }
    })
}

#[pymethods]
impl Event {
    /// The vCPU that trapped.
    #[getter]
    fn vcpu(&self) -> u16 {
        self.event.vcpu.0
    }

    /// What happened: `"breakpoint"`, `"register access"`, `"singlestep"`, …
    #[getter]
    fn kind(&self) -> &'static str {
        self.event.kind.name()
    }

    /// The kind's fields (`gla`, `value`, `previous`, `register`, …) as a dict.
    #[getter]
    fn details<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        details(py, &self.event.kind)
    }

    /// The registers the event brought (only the groups the backend delivers).
    #[getter]
    fn registers(&self) -> Registers {
        Registers {
            snapshot: self.event.registers.to_snapshot(),
        }
    }

    /// The SLAT view active on the vCPU.
    #[getter]
    fn view(&self) -> u16 {
        self.event.view.0
    }

    /// Whether the event was answered.
    #[getter]
    fn answered(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Answers the event (once): `action` is `"continue"` (default), `"reinject"`,
    /// `"emulate"`, `"emulate_no_write"`, `"deny"` or `"retry"`; `registers` a mapping
    /// written to the vCPU before it resumes; `singlestep` toggles single-stepping;
    /// `value` replaces the value of a register write; `view` switches the SLAT view.
    #[pyo3(signature = (action="continue", *, registers=None, singlestep=false, value=None, view=None))]
    fn reply(
        &self,
        py: Python<'_>,
        action: &str,
        registers: Option<&Bound<'_, PyAny>>,
        singlestep: bool,
        value: Option<u64>,
        view: Option<u16>,
    ) -> PyResult<()> {
        let mut r = Response::action(self::action(action)?);
        if singlestep {
            r = r.toggle_singlestep();
        }
        if let Some(v) = value {
            r = r.with_value(v);
        }
        if let Some(v) = view {
            r = r.with_view(View(v));
        }
        if let Some(values) = registers {
            let snap = registers::apply(&vmi_core::RegisterSnapshot::default(), values);
            // Registers not in the event snapshot cannot be set one by one: start from it.
            let snap = match snap {
                Ok(s) => s,
                Err(_) => registers::apply(&self.event.registers, values)?,
            };
            r = r.with_registers(snap);
        }
        self.answer(py, r)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Answers with the default (continue) if the block did not.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        if !self.answered() {
            self.answer(py, Response::continue_())?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<vmi.Event {} on vCPU {}{}>",
            self.event.kind.name(),
            self.event.vcpu.0,
            if self.answered() { ", answered" } else { "" }
        )
    }
}

/// Waits up to `timeout` seconds for the next event (GIL released).
pub(crate) fn wait(py: Python<'_>, guest: &GuestRef, timeout: f64) -> PyResult<Option<Event>> {
    let t = duration(timeout)?;
    let g = guest.get().py()?;
    let pending = py.detach(|| g.events()?.wait_event(t)).py()?;
    Ok(pending.map(Event::new))
}

/// The events of a session, as an iterator: each `next()` waits up to `timeout` seconds
/// and the iteration ends when none came (or after `count` events).
#[pyclass(module = "vmi")]
pub(crate) struct Events {
    pub(crate) guest: GuestRef,
    pub(crate) timeout: f64,
    pub(crate) remaining: Option<usize>,
}

#[pymethods]
impl Events {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Event> {
        if self.remaining == Some(0) {
            return Err(PyStopIteration::new_err(()));
        }
        match wait(py, &self.guest, self.timeout)? {
            Some(ev) => {
                if let Some(n) = self.remaining.as_mut() {
                    *n -= 1;
                }
                Ok(ev)
            }
            None => Err(PyStopIteration::new_err(())),
        }
    }
}

/// What a monitor or breakpoint handle removes when it ends.
enum Armed {
    Monitor(CoreMonitor),
    Breakpoint(CoreBreakpoint),
}

impl Armed {
    fn remove(&self, guest: &GuestRef) -> vmi_core::Result<()> {
        // A closed session removed everything when it ended.
        let Ok(guest) = guest.get() else {
            return Ok(());
        };
        match self {
            Armed::Monitor(m) => guest.events()?.disable(m),
            Armed::Breakpoint(b) => guest.breakpoints()?.clear_breakpoint(*b),
        }
    }
}

/// A monitor or breakpoint set in the guest until `close()`, the end of its `with` block,
/// or the handle being collected.
#[pyclass(module = "vmi", frozen)]
pub(crate) struct Trap {
    guest: GuestRef,
    armed: Mutex<Option<Armed>>,
    what: String,
}

impl Trap {
    fn remove(&self) -> vmi_core::Result<()> {
        let armed = self.armed.lock().unwrap_or_else(|e| e.into_inner()).take();
        match armed {
            Some(a) => a.remove(&self.guest),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl Trap {
    /// Removes it from the guest (once).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.remove()).py()
    }

    /// Whether it is still set.
    #[getter]
    fn active(&self) -> bool {
        self.armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<vmi.Trap {}{}>",
            self.what,
            if self.active() { "" } else { ", removed" }
        )
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Sets a breakpoint at virtual `va` (any address space, or only `cr3`'s), or at a
/// guest-physical address with `physical=True`.
pub(crate) fn breakpoint(
    py: Python<'_>,
    guest: GuestRef,
    address: u64,
    cr3: Option<u64>,
    physical: bool,
) -> PyResult<Trap> {
    let bp = match (physical, cr3) {
        (true, _) => CoreBreakpoint::physical(Gpa(address)),
        (false, Some(cr3)) => CoreBreakpoint::in_space(Gva(address), Gpa(cr3)),
        (false, None) => CoreBreakpoint::at(Gva(address)),
    };
    let g = guest.get().py()?;
    py.detach(|| g.breakpoints()?.set_breakpoint(bp)).py()?;
    Ok(Trap {
        guest,
        armed: Mutex::new(Some(Armed::Breakpoint(bp))),
        what: format!("breakpoint at {address:#x}"),
    })
}

/// The register access named `s`.
fn access(s: &str) -> PyResult<RegisterAccess> {
    Ok(match s {
        "read" => RegisterAccess::Read,
        "write" => RegisterAccess::Write,
        "rw" | "readwrite" => RegisterAccess::ReadWrite,
        other => {
            return Err(PyValueError::new_err(format!(
                "access {other:?}: read, write or rw"
            )))
        }
    })
}

/// Options of [`monitor`].
pub(crate) struct MonitorOptions<'a> {
    pub(crate) access: &'a str,
    pub(crate) index: Option<u32>,
    pub(crate) vcpus: Option<Vec<u16>>,
    pub(crate) equal: Option<u64>,
    pub(crate) on_change: bool,
}

/// Enables the monitor named `kind`: `"cr0"`, `"cr3"`, `"cr4"` (register writes, or
/// `access`), `"msr"` (with `index`; all MSRs without), `"int3"`, `"next_interrupt"`,
/// `"singlestep"` (on `vcpus`, default all), `"cpuid"`, `"hypercall"`, `"descriptor"`,
/// `"debug"`, `"xsetbv"`, `"memory"`.
pub(crate) fn monitor(
    py: Python<'_>,
    guest: GuestRef,
    kind: &str,
    o: MonitorOptions<'_>,
) -> PyResult<Trap> {
    let g = guest.get().py()?;
    let filter = RegisterFilter {
        equal: o.equal,
        on_change: o.on_change,
        asynchronous: false,
    };
    let m = match kind {
        cr @ ("cr0" | "cr3" | "cr4" | "cr8") => CoreMonitor::ControlRegister {
            cr: cr[2..].parse().unwrap_or(0),
            access: access(o.access)?,
            filter,
        },
        "msr" => match o.index {
            Some(index) => CoreMonitor::Msr {
                index,
                access: access(o.access)?,
                filter,
            },
            None => CoreMonitor::AllMsrs {
                access: access(o.access)?,
            },
        },
        "int3" => CoreMonitor::Interrupt(InterruptKind::Int3),
        "next_interrupt" => CoreMonitor::Interrupt(InterruptKind::Next),
        "singlestep" => {
            let set = match o.vcpus {
                Some(list) => {
                    let mut s = VcpuSet::new();
                    for v in list {
                        s.insert(VcpuId(v));
                    }
                    s
                }
                None => {
                    let n = py.detach(|| g.vcpus()?.vcpu_count()).py()?;
                    VcpuSet::first(n)
                }
            };
            CoreMonitor::Singlestep(set)
        }
        "cpuid" => CoreMonitor::Cpuid,
        "hypercall" => CoreMonitor::Hypercall,
        "descriptor" => CoreMonitor::Descriptor,
        "debug" => CoreMonitor::DebugException,
        "xsetbv" => CoreMonitor::Xsetbv,
        "memory" => CoreMonitor::MemoryAccess,
        other => {
            return Err(PyValueError::new_err(format!("unknown monitor {other:?}")));
        }
    };
    py.detach(|| g.events()?.enable(&m)).py()?;
    Ok(Trap {
        guest,
        armed: Mutex::new(Some(Armed::Monitor(m))),
        what: format!("monitor {kind}"),
    })
}

/// Adds the classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Event>()?;
    m.add_class::<Events>()?;
    m.add_class::<Trap>()?;
    Ok(())
}
