//! `Vm`: one session with a guest, opened with `open_qemu` or `open_kvmi` (or a
//! `KvmiListener`), and `Pause`, the pause of the whole guest as a context manager.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use vmi_core::prelude::*;
use vmi_core::{AddressSpace, RegisterGroups, Space, Support};

use crate::errors::CoreResult;
use crate::guest::{Guest, GuestRef, SharedGuest};
use crate::registers::{self, Registers};

/// Longest C string read when no limit is given.
const DEFAULT_CSTR_MAX: usize = 4096;

/// Reads of at least this many bytes run with the GIL released. Below it, releasing and
/// re-taking the GIL would cost more than the copy (see the README's Speed section).
pub(crate) const DETACH_AT: usize = 16 * 1024;

/// A session with a guest. Memory, registers, pause, breakpoints, monitors and events go
/// through it; `close()` (or leaving a `with` block) ends it: breakpoints and monitors
/// are removed and what it paused resumes, once no object using it (a `Pause`, an
/// `Event`, a `Linux`) is left.
#[pyclass(module = "vmi", frozen)]
pub(crate) struct Vm {
    guest: GuestRef,
}

impl Vm {
    pub(crate) fn new(guest: Guest) -> Self {
        Self {
            guest: GuestRef::new(guest),
        }
    }

    /// The session, or `Disconnected` once closed.
    pub(crate) fn guest(&self) -> PyResult<SharedGuest> {
        self.guest.get().py()
    }
}

/// The address space a virtual access uses: the one `vcpu` is in, or `cr3` with the
/// paging mode of `vcpu`.
pub(crate) fn space(g: &Guest, vcpu: u16, cr3: Option<u64>) -> PyResult<Space> {
    Ok(match cr3 {
        None => Space::Vcpu(VcpuId(vcpu)),
        Some(cr3) => {
            let base: AddressSpace = g.address_space(VcpuId(vcpu)).py()?;
            Space::Explicit(base.with_cr3(Gpa(cr3)))
        }
    })
}

/// Fills a new `bytes` of `size` with `fill`, the GIL released for large sizes.
pub(crate) fn new_bytes<'py>(
    py: Python<'py>,
    size: usize,
    fill: impl Fn(&mut [u8]) -> vmi_core::Result<()> + Send + Sync,
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, size, |buf| {
        if size >= DETACH_AT {
            py.detach(|| fill(buf)).py()
        } else {
            fill(buf).py()
        }
    })
}

/// The guest's RAM ranges, or `Unsupported`.
pub(crate) fn memory_info(g: &Guest) -> vmi_core::Result<vmi_core::MemoryInfo> {
    g.backend()
        .memory_layout()
        .ok_or_else(|| {
            Error::unsupported(
                "memory layout",
                "this session does not report guest RAM ranges",
            )
        })?
        .memory_info()
}

/// Reads an unsigned little-endian integer of `N` bytes.
fn read_uint<const N: usize>(g: &GuestRef, gpa: u64) -> PyResult<u64> {
    let mut b = [0u8; 8];
    g.read_physical(Gpa(gpa), &mut b[..N]).py()?;
    Ok(u64::from_le_bytes(b))
}

#[pymethods]
impl Vm {
    /// The backend: `"legacy"` (unpatched QEMU) or `"kvmi"`.
    #[getter]
    fn backend(&self) -> PyResult<&'static str> {
        Ok(self.guest()?.kind())
    }

    /// How guest RAM is reached: `"shared"` (mapped from QEMU's shared memory backend),
    /// `"procmem"`, `"qmp"` or `"kvmi"`.
    #[getter]
    fn ram_access(&self) -> PyResult<&'static str> {
        Ok(self.guest()?.ram_access())
    }

    /// The backend's name and version, as it reports them.
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.guest()?.backend().name().into_owned())
    }

    /// Whether the session is open.
    #[getter]
    fn is_open(&self) -> bool {
        self.guest.is_open()
    }

    /// Number of vCPUs.
    fn vcpu_count(&self, py: Python<'_>) -> PyResult<u32> {
        let g = self.guest()?;
        py.detach(|| g.vcpus()?.vcpu_count()).py()
    }

    /// The capability report: `{name: (support, detail)}` with support `"yes"`,
    /// `"partial"` (detail: the limits) or `"no"` (detail: why).
    fn capabilities<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let report = self.guest()?.backend().capabilities();
        let d = PyDict::new(py);
        for (cap, support) in report.rows() {
            let row = match support {
                Support::Supported => ("yes", None),
                Support::Partial(l) => ("partial", Some(l.to_string())),
                Support::Unsupported(r) => ("no", Some(r.to_string())),
            };
            d.set_item(cap.name(), row)?;
        }
        Ok(d)
    }

    /// The capability report as the backend prints it.
    fn capability_report(&self) -> PyResult<String> {
        Ok(self.guest()?.backend().capabilities().to_string())
    }

    /// Guest RAM as `[(start, end)]` physical ranges (end exclusive).
    fn memory_ranges(&self, py: Python<'_>) -> PyResult<Vec<(u64, u64)>> {
        let g = self.guest()?;
        let info = py.detach(|| memory_info(&g)).py()?;
        Ok(info.ranges.iter().map(|r| (r.start.0, r.end())).collect())
    }

    /// `size` bytes of guest-physical memory at `gpa`.
    fn read<'py>(&self, py: Python<'py>, gpa: u64, size: usize) -> PyResult<Bound<'py, PyBytes>> {
        let g = &self.guest;
        new_bytes(py, size, |buf| g.read_physical(Gpa(gpa), buf))
    }

    /// One byte of guest-physical memory.
    fn read_u8(&self, gpa: u64) -> PyResult<u64> {
        read_uint::<1>(&self.guest, gpa)
    }

    /// A little-endian u16 of guest-physical memory.
    fn read_u16(&self, gpa: u64) -> PyResult<u64> {
        read_uint::<2>(&self.guest, gpa)
    }

    /// A little-endian u32 of guest-physical memory.
    fn read_u32(&self, gpa: u64) -> PyResult<u64> {
        read_uint::<4>(&self.guest, gpa)
    }

    /// A little-endian u64 of guest-physical memory.
    fn read_u64(&self, gpa: u64) -> PyResult<u64> {
        read_uint::<8>(&self.guest, gpa)
    }

    /// The NUL-terminated string at `gpa` (without the NUL), at most `max_len` bytes.
    #[pyo3(signature = (gpa, max_len=DEFAULT_CSTR_MAX))]
    fn read_cstr<'py>(
        &self,
        py: Python<'py>,
        gpa: u64,
        max_len: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let g = self.guest()?;
        let mut out = Vec::new();
        let mut at = gpa;
        while out.len() < max_len {
            // Up to the end of the page, so a string ending before unmapped memory reads.
            let chunk = ((0x1000 - (at & 0xfff)) as usize).min(max_len - out.len());
            let mut buf = vec![0u8; chunk];
            g.read_physical(Gpa(at), &mut buf).py()?;
            if let Some(nul) = buf.iter().position(|&b| b == 0) {
                out.extend_from_slice(&buf[..nul]);
                return Ok(PyBytes::new(py, &out));
            }
            out.extend_from_slice(&buf);
            at += chunk as u64;
        }
        Ok(PyBytes::new(py, &out))
    }

    /// Writes `data` to guest-physical memory at `gpa` (the session must be writable).
    fn write(&self, py: Python<'_>, gpa: u64, data: &[u8]) -> PyResult<()> {
        let g = self.guest()?;
        py.detach(|| g.writer()?.write_physical(Gpa(gpa), data))
            .py()
    }

    /// Writes a little-endian u64 to guest-physical memory.
    fn write_u64(&self, py: Python<'_>, gpa: u64, value: u64) -> PyResult<()> {
        self.write(py, gpa, &value.to_le_bytes())
    }

    /// Writes a little-endian u32 to guest-physical memory.
    fn write_u32(&self, py: Python<'_>, gpa: u64, value: u32) -> PyResult<()> {
        self.write(py, gpa, &value.to_le_bytes())
    }

    /// The guest-physical address `va` maps to, in the address space `vcpu` is in (or
    /// `cr3`'s). Raises `PageFault` where the guest would fault.
    #[pyo3(signature = (va, vcpu=0, cr3=None))]
    fn translate(&self, py: Python<'_>, va: u64, vcpu: u16, cr3: Option<u64>) -> PyResult<u64> {
        let g = self.guest()?;
        let s = space(&g, vcpu, cr3)?;
        py.detach(|| g.translate_va(s, Gva(va)).map(|t| t.gpa.0))
            .py()
    }

    /// `size` bytes of virtual memory at `va`, in the address space `vcpu` is in (or
    /// `cr3`'s).
    #[pyo3(signature = (va, size, vcpu=0, cr3=None))]
    fn read_va<'py>(
        &self,
        py: Python<'py>,
        va: u64,
        size: usize,
        vcpu: u16,
        cr3: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let g = self.guest()?;
        let s = space(&g, vcpu, cr3)?;
        new_bytes(py, size, |buf| g.read_va(s, Gva(va), buf))
    }

    /// A little-endian u32 of virtual memory.
    #[pyo3(signature = (va, vcpu=0, cr3=None))]
    fn read_va_u32(&self, va: u64, vcpu: u16, cr3: Option<u64>) -> PyResult<u32> {
        let g = self.guest()?;
        g.read_va_u32(space(&g, vcpu, cr3)?, Gva(va)).py()
    }

    /// A little-endian u64 of virtual memory.
    #[pyo3(signature = (va, vcpu=0, cr3=None))]
    fn read_va_u64(&self, va: u64, vcpu: u16, cr3: Option<u64>) -> PyResult<u64> {
        let g = self.guest()?;
        g.read_va_u64(space(&g, vcpu, cr3)?, Gva(va)).py()
    }

    /// The NUL-terminated string at virtual `va` (without the NUL).
    #[pyo3(signature = (va, max_len=DEFAULT_CSTR_MAX, vcpu=0, cr3=None))]
    fn read_va_cstr<'py>(
        &self,
        py: Python<'py>,
        va: u64,
        max_len: usize,
        vcpu: u16,
        cr3: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let g = self.guest()?;
        let s = space(&g, vcpu, cr3)?;
        let bytes = g.read_va_cstr(s, Gva(va), max_len).py()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Writes `data` to virtual memory at `va` (translated page by page).
    #[pyo3(signature = (va, data, vcpu=0, cr3=None))]
    fn write_va(
        &self,
        py: Python<'_>,
        va: u64,
        data: &[u8],
        vcpu: u16,
        cr3: Option<u64>,
    ) -> PyResult<()> {
        let g = self.guest()?;
        let s = space(&g, vcpu, cr3)?;
        py.detach(|| {
            let writer = g.writer()?;
            let mut done = 0usize;
            while done < data.len() {
                let at = va.wrapping_add(done as u64);
                let chunk = ((0x1000 - (at & 0xfff)) as usize).min(data.len() - done);
                let gpa = g.translate_va(s, Gva(at))?.gpa;
                writer.write_physical(gpa, &data[done..done + chunk])?;
                done += chunk;
            }
            Ok(())
        })
        .py()
    }

    /// The registers of `vcpu`, as a read-only mapping (`regs["rip"]`, `regs.cr3`).
    #[pyo3(signature = (vcpu=0))]
    fn registers(&self, py: Python<'_>, vcpu: u16) -> PyResult<Registers> {
        let g = self.guest()?;
        let snapshot = py.detach(|| g.all_registers(VcpuId(vcpu))).py()?;
        Ok(Registers { snapshot })
    }

    /// One register of `vcpu` by name (`"rax"`, `"cr3"`, `"fs_base"`, `"msr_0xc0000080"`).
    #[pyo3(signature = (name, vcpu=0))]
    fn register(&self, py: Python<'_>, name: &str, vcpu: u16) -> PyResult<u64> {
        let reg = registers::parse(name)?;
        let g = self.guest()?;
        let msrs: Vec<u32> = match reg {
            vmi_core::Register::Msr(i) => vec![i],
            _ => Vec::new(),
        };
        let snap = py
            .detach(|| g.registers(VcpuId(vcpu), reg.group(), &msrs))
            .py()?;
        snap.get(reg).ok_or_else(|| {
            crate::errors::core(Error::unsupported(
                "register read",
                format!("the backend did not return {name}"),
            ))
        })
    }

    /// Sets registers of `vcpu` from a mapping `{name: value}`; the others keep their
    /// values. The vCPU must be stopped (paused, or in an event).
    #[pyo3(signature = (values, vcpu=0))]
    fn set_registers(&self, py: Python<'_>, values: &Bound<'_, PyAny>, vcpu: u16) -> PyResult<()> {
        let g = self.guest()?;
        let items = values.call_method0("items")?;
        let mut groups = RegisterGroups::empty();
        let mut msrs = Vec::new();
        for item in items.try_iter()? {
            let (name, _): (String, u64) = item?.extract()?;
            let reg = registers::parse(&name)?;
            groups |= reg.group();
            if let vmi_core::Register::Msr(i) = reg {
                msrs.push(i);
            }
        }
        let base = py
            .detach(|| g.registers(VcpuId(vcpu), groups, &msrs))
            .py()?;
        let snap = registers::apply(&base, values)?;
        py.detach(|| g.register_writer()?.set_registers(VcpuId(vcpu), &snap))
            .py()
    }

    /// Sets one register of `vcpu` (which must be stopped).
    #[pyo3(signature = (name, value, vcpu=0))]
    fn set_register(&self, py: Python<'_>, name: &str, value: u64, vcpu: u16) -> PyResult<()> {
        let d = PyDict::new(py);
        d.set_item(name, value)?;
        self.set_registers(py, d.as_any(), vcpu)
    }

    /// Pauses the whole guest until the returned `Pause` is resumed: use it as a context
    /// manager (`with vm.pause():`), which resumes also when the block raises. Pauses
    /// nest: the guest runs again when the last one ends.
    fn pause(&self, py: Python<'_>) -> PyResult<Pause> {
        Pause::start(py, self.guest()?)
    }

    /// Whether some pause of this guest is held.
    #[getter]
    fn is_paused(&self) -> PyResult<bool> {
        Ok(self.guest()?.vcpus().py()?.is_paused())
    }

    /// Waits up to `timeout` seconds for the next event; `None` if none came. The event
    /// must be answered with `reply()`; one never answered is answered with the default
    /// (continue) when collected.
    #[pyo3(signature = (timeout=1.0))]
    fn wait_event(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<crate::events::Event>> {
        crate::events::wait(py, &self.guest, timeout)
    }

    /// The events, as an iterator: each step waits up to `timeout` seconds; it ends when
    /// none came in that time, or after `count` events.
    #[pyo3(signature = (timeout=1.0, count=None))]
    fn events(&self, timeout: f64, count: Option<usize>) -> PyResult<crate::events::Events> {
        duration(timeout)?;
        Ok(crate::events::Events {
            guest: self.guest.clone(),
            timeout,
            remaining: count,
        })
    }

    /// Sets a breakpoint at virtual `address` (in every address space, or only `cr3`'s;
    /// or at a guest-physical address with `physical=True`). Returns a handle that removes
    /// it on `close()`, at the end of its `with` block, or when collected; hits arrive as
    /// `"breakpoint"` events.
    #[pyo3(signature = (address, cr3=None, physical=false))]
    fn breakpoint(
        &self,
        py: Python<'_>,
        address: u64,
        cr3: Option<u64>,
        physical: bool,
    ) -> PyResult<crate::events::Trap> {
        crate::events::breakpoint(py, self.guest.clone(), address, cr3, physical)
    }

    /// Enables a monitor: `"cr0"`, `"cr3"`, `"cr4"`, `"cr8"` (register writes, or
    /// `access="read"|"rw"`, `equal=`, `on_change=`), `"msr"` (`index=`, or every MSR),
    /// `"int3"`, `"next_interrupt"`, `"singlestep"` (`vcpus=`, default all), `"cpuid"`,
    /// `"hypercall"`, `"descriptor"`, `"debug"`, `"xsetbv"`, `"memory"`. Returns a handle
    /// that disables it on `close()`, at the end of its `with` block, or when collected.
    #[pyo3(signature = (kind, *, access="write", index=None, vcpus=None, equal=None, on_change=false))]
    #[allow(clippy::too_many_arguments)]
    fn monitor(
        &self,
        py: Python<'_>,
        kind: &str,
        access: &str,
        index: Option<u32>,
        vcpus: Option<Vec<u16>>,
        equal: Option<u64>,
        on_change: bool,
    ) -> PyResult<crate::events::Trap> {
        let o = crate::events::MonitorOptions {
            access,
            index,
            vcpus,
            equal,
            on_change,
        };
        crate::events::monitor(py, self.guest.clone(), kind, o)
    }

    /// Attaches Linux OS awareness (symbols and types from the guest's own kallsyms and
    /// BTF). Pause the guest first for a consistent view.
    #[pyo3(signature = (vcpu=0))]
    fn linux(&self, py: Python<'_>, vcpu: u16) -> PyResult<crate::linux::Linux> {
        crate::linux::attach(py, self.guest.clone(), vcpu)
    }

    /// Guest-physical memory as a read-only binary file (holes read as zeros), e.g. for
    /// Volatility 3.
    fn physical_file(&self, py: Python<'_>) -> PyResult<crate::physfile::PhysicalFile> {
        crate::physfile::PhysicalFile::open(py, self.guest.clone())
    }

    /// Ends the session: breakpoints and monitors are removed and the guest runs on
    /// (once a `Pause` still held is resumed). Objects made from this `Vm` raise
    /// `Disconnected` afterwards.
    fn close(&self) {
        self.guest.close();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match self.guest() {
            Ok(g) => format!("<vmi.Vm {} ram={}>", g.kind(), g.ram_access()),
            Err(_) => "<vmi.Vm closed>".to_owned(),
        }
    }
}

/// The answer of the thread holding a pause: how pausing went, then how resuming went.
type PauseThread = (mpsc::Sender<()>, JoinHandle<vmi_core::Result<()>>);

/// A pause of the whole guest, held until `resume()`, the end of its `with` block, or the
/// object being collected — whichever comes first; resuming twice is a no-op.
#[pyclass(module = "vmi", frozen)]
pub(crate) struct Pause {
    holder: Mutex<Option<PauseThread>>,
}

impl Pause {
    /// Pauses the guest. The guard borrows the session, so a thread owning the session
    /// handle holds it until told to release it (or until this object is dropped, which
    /// drops the sender).
    fn start(py: Python<'_>, guest: SharedGuest) -> PyResult<Self> {
        let (paused_tx, paused_rx) = mpsc::sync_channel::<vmi_core::Result<()>>(1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vmi-pause".into())
            .spawn(move || {
                let guard = match guest.vcpus().and_then(|v| v.pause()) {
                    Ok(guard) => guard,
                    Err(e) => {
                        let _ = paused_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = paused_tx.send(Ok(()));
                // A message or the sender dropped: either way, resume.
                let _ = release_rx.recv();
                guard.resume()
            })
            .map_err(|e| PyValueError::new_err(format!("cannot start the pause thread: {e}")))?;
        let paused = py.detach(move || paused_rx.recv());
        match paused {
            Ok(Ok(())) => Ok(Self {
                holder: Mutex::new(Some((release_tx, thread))),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(crate::errors::core(e))
            }
            Err(_) => Err(crate::errors::VmiError::new_err("the pause thread died")),
        }
    }

    /// Resumes (once), waiting for the guest to run; `Ok` if already resumed.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let held = self.holder.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((tx, thread)) = held else {
            return Ok(());
        };
        let _ = tx.send(());
        match py.detach(|| thread.join()) {
            Ok(r) => r.py(),
            Err(_) => Err(crate::errors::VmiError::new_err(
                "the pause thread panicked",
            )),
        }
    }
}

#[pymethods]
impl Pause {
    /// Resumes the guest (unless another pause still holds it).
    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        self.release(py)
    }

    /// Whether this pause is still held.
    #[getter]
    fn active(&self) -> bool {
        self.holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self
            .holder
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// Opens an unpatched QEMU through its QMP socket (and its GDB stub for registers of a
/// running guest, pause by the stub, breakpoints and events). Guest RAM is mapped from
/// QEMU's shared memory backend when it has one.
#[pyfunction]
#[pyo3(signature = (qmp, gdb=None, writable=false, timeout=10.0))]
fn open_qemu(
    py: Python<'_>,
    qmp: PathBuf,
    gdb: Option<PathBuf>,
    writable: bool,
    timeout: f64,
) -> PyResult<Vm> {
    let mut cfg = vmi_legacy::LegacyConfig::new(qmp);
    cfg.gdb_socket = gdb;
    cfg.writable = writable;
    cfg.timeout = duration(timeout)?;
    let vm = py.detach(|| vmi_legacy::LegacyQemu::connect(cfg)).py()?;
    Ok(Vm::new(Guest::Legacy(Box::new(vm))))
}

/// Listens on the UNIX socket `path` for a KVM-VMI host (QEMU with
/// `-object introspection…`) and returns its session, waiting at most `timeout` seconds.
#[pyfunction]
#[pyo3(signature = (path, secret=None, timeout=60.0))]
fn open_kvmi(py: Python<'_>, path: PathBuf, secret: Option<Vec<u8>>, timeout: f64) -> PyResult<Vm> {
    let listener = KvmiListener::new(path, secret)?;
    listener.accept(py, timeout)
}

/// A bound KVMi listener socket: bind first, start the host, then `accept()`.
#[pyclass(module = "vmi", frozen)]
pub(crate) struct KvmiListener {
    inner: vmi_kvm::KvmiListener,
}

#[pymethods]
impl KvmiListener {
    /// Binds the UNIX socket `path`; `secret` is the cookie secret QEMU was given.
    #[new]
    #[pyo3(signature = (path, secret=None))]
    fn new(path: PathBuf, secret: Option<Vec<u8>>) -> PyResult<Self> {
        let cfg = vmi_kvm::Config {
            secret,
            ..vmi_kvm::Config::default()
        };
        let inner = vmi_kvm::KvmiListener::bind(path, cfg).py()?;
        Ok(Self { inner })
    }

    /// Waits up to `timeout` seconds for the host and returns the session.
    #[pyo3(signature = (timeout=60.0))]
    fn accept(&self, py: Python<'_>, timeout: f64) -> PyResult<Vm> {
        let t = duration(timeout)?;
        let vm = py.detach(|| self.inner.accept(t)).py()?;
        Ok(Vm::new(Guest::Kvmi(Box::new(vm))))
    }
}

/// Seconds as a `Duration`; negative or NaN rejected.
pub(crate) fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("bad timeout {seconds} s")))
}

/// Adds the classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Vm>()?;
    m.add_class::<Pause>()?;
    m.add_class::<KvmiListener>()?;
    m.add_function(wrap_pyfunction!(open_qemu, m)?)?;
    m.add_function(wrap_pyfunction!(open_kvmi, m)?)?;
    Ok(())
}
