//! Linux OS awareness (vmi-linux) from Python: symbols, processes and their memory,
//! modules, the kernel log, struct fields by name, and the ISF Volatility 3 reads.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use vmi_core::VcpuId;
use vmi_linux::{LinuxOptions, Process as CoreProcess};

use crate::errors::LinuxResult;
use crate::guest::GuestRef;
use crate::vm::new_bytes;

/// A Linux guest, understood from its own memory (kallsyms and BTF): attach with
/// `vm.linux()` while the guest is paused.
#[pyclass(module = "vmi", frozen)]
pub(crate) struct Linux {
    linux: vmi_linux::Linux<GuestRef>,
}

/// Attaches to the Linux kernel the registers of `vcpu` locate.
pub(crate) fn attach(py: Python<'_>, guest: GuestRef, vcpu: u16) -> PyResult<Linux> {
    let options = LinuxOptions {
        vcpu: VcpuId(vcpu),
        ..LinuxOptions::default()
    };
    let linux = py
        .detach(|| vmi_linux::Linux::attach(guest, options))
        .py()?;
    Ok(Linux { linux })
}

/// A task (`task_struct`) as `ps` would list it.
#[pyclass(module = "vmi", frozen, get_all)]
pub(crate) struct Process {
    /// Virtual address of the `task_struct`.
    task: u64,
    /// Thread id (`task_struct.pid`).
    pid: u32,
    /// Process id as user space sees it (`tgid`).
    tgid: u32,
    /// Parent's process id.
    ppid: u32,
    /// `comm` (at most 15 bytes).
    comm: String,
    /// The name `ps` shows.
    name: String,
    /// One-letter state as `ps` prints it (`R`, `S`, `D`, `Z`, …).
    state: String,
    /// Real uid.
    uid: u32,
    /// Real gid.
    gid: u32,
    /// A kernel thread (no user address space).
    kernel_thread: bool,
    /// `mm_struct` address (0 for kernel threads).
    mm: u64,
    /// Physical address of its page-table root, when it has one.
    pgd: Option<u64>,
}

impl From<CoreProcess> for Process {
    fn from(p: CoreProcess) -> Self {
        Self {
            task: p.task,
            pid: p.pid,
            tgid: p.tgid,
            ppid: p.ppid,
            comm: p.comm,
            name: p.name,
            state: p.state.letter().to_string(),
            uid: p.uid,
            gid: p.gid,
            kernel_thread: p.kernel_thread,
            mm: p.mm,
            pgd: p.pgd.map(|g| g.0),
        }
    }
}

#[pymethods]
impl Process {
    fn __repr__(&self) -> String {
        format!(
            "<vmi.Process {} {:?} ppid {}>",
            self.pid, self.comm, self.ppid
        )
    }
}

/// A loaded kernel module.
#[pyclass(module = "vmi", frozen, get_all)]
pub(crate) struct Module {
    /// Address of its `struct module`.
    address: u64,
    /// Its name.
    name: String,
    /// Start of its code.
    base: u64,
    /// Size of its code and data.
    size: u64,
    /// `Live`, `Loading`, `Unloading`, …
    state: String,
}

#[pymethods]
impl Module {
    fn __repr__(&self) -> String {
        format!(
            "<vmi.Module {} {:#x}+{:#x}>",
            self.name, self.base, self.size
        )
    }
}

/// One kernel log record.
#[pyclass(module = "vmi", frozen, get_all)]
pub(crate) struct LogRecord {
    /// Sequence number.
    seq: u64,
    /// Time since boot, in nanoseconds.
    timestamp_ns: u64,
    /// Log level (0 emergency … 7 debug).
    level: u8,
    /// Facility.
    facility: u8,
    /// The text.
    text: String,
}

#[pymethods]
impl LogRecord {
    fn __repr__(&self) -> String {
        format!("<vmi.LogRecord {} {:?}>", self.seq, self.text)
    }
}

/// A kernel object of a BTF type at an address: fields by path (`"se.vruntime"`,
/// `"mm->pgd"` is `deref("mm", "mm_struct")`). `obj["pid"]` reads an integer field.
#[pyclass(module = "vmi", frozen)]
pub(crate) struct Object {
    linux: Py<Linux>,
    ty: String,
    address: u64,
}

impl Object {
    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&vmi_linux::object::Object<'_, GuestRef>) -> vmi_linux::Result<T>,
    ) -> PyResult<T> {
        let l = self.linux.bind(py).get();
        f(&l.linux.object(&self.ty, self.address)).py()
    }

    fn derived(&self, py: Python<'_>, o: vmi_linux::object::Object<'_, GuestRef>) -> Object {
        Object {
            linux: self.linux.clone_ref(py),
            ty: o.type_name().to_owned(),
            address: o.address(),
        }
    }
}

#[pymethods]
impl Object {
    /// Its address.
    #[getter]
    fn address(&self) -> u64 {
        self.address
    }

    /// Its type name.
    #[getter]
    fn type_name(&self) -> &str {
        &self.ty
    }

    /// The address of field `path`.
    fn field_address(&self, py: Python<'_>, path: &str) -> PyResult<u64> {
        self.with(py, |o| o.field_address(path))
    }

    /// An unsigned integer (or pointer, enum) field.
    fn read_uint(&self, py: Python<'_>, path: &str) -> PyResult<u64> {
        self.with(py, |o| o.read_uint(path))
    }

    /// A signed integer field.
    fn read_int(&self, py: Python<'_>, path: &str) -> PyResult<i64> {
        self.with(py, |o| o.read_int(path))
    }

    /// A `char[]` field as text.
    fn read_cstr(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        self.with(py, |o| o.read_cstr(path))
    }

    /// The string a `char *` field points to.
    fn read_string_pointer(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        self.with(py, |o| o.read_string_pointer(path))
    }

    /// A field's raw bytes.
    fn read_bytes<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.with(py, |o| o.read_bytes(path))?;
        Ok(PyBytes::new(py, &b))
    }

    /// The embedded struct at `path`, as type `ty`.
    fn member(&self, py: Python<'_>, path: &str, ty: &str) -> PyResult<Object> {
        let l = self.linux.bind(py).get();
        let o = l.linux.object(&self.ty, self.address);
        let m = o.member(path, ty).py()?;
        Ok(self.derived(py, m))
    }

    /// The struct the pointer at `path` points to, as type `ty`.
    fn deref(&self, py: Python<'_>, path: &str, ty: &str) -> PyResult<Object> {
        let l = self.linux.bind(py).get();
        let o = l.linux.object(&self.ty, self.address);
        let m = o.deref(path, ty).py()?;
        Ok(self.derived(py, m))
    }

    /// The `ty` this object is field `path` of (`container_of`).
    fn container_of(&self, py: Python<'_>, ty: &str, path: &str) -> PyResult<Object> {
        let l = self.linux.bind(py).get();
        let o = l.linux.object(&self.ty, self.address);
        let m = o.container_of(ty, path).py()?;
        Ok(self.derived(py, m))
    }

    fn __getitem__(&self, py: Python<'_>, path: &str) -> PyResult<u64> {
        self.read_uint(py, path)
    }

    fn __repr__(&self) -> String {
        format!("<vmi.Object {} at {:#x}>", self.ty, self.address)
    }
}

#[pymethods]
impl Linux {
    /// The kernel banner (`/proc/version`).
    #[getter]
    fn banner(&self) -> String {
        self.linux.kernel().banner.clone()
    }

    /// `uname -r`.
    #[getter]
    fn release(&self) -> String {
        self.linux.kernel().release.clone()
    }

    /// The KASLR slide of the kernel image.
    #[getter]
    fn kaslr_slide(&self) -> i64 {
        self.linux.kernel().slide
    }

    /// The kernel page-table root (CR3 value) this session reads kernel memory through.
    #[getter]
    fn kernel_cr3(&self) -> u64 {
        self.linux.kernel().kernel_space.cr3.0
    }

    /// What the bootstrap found and where from.
    fn report(&self) -> String {
        self.linux.report().to_string()
    }

    /// The runtime address of kernel symbol `name`.
    fn symbol(&self, name: &str) -> PyResult<u64> {
        self.linux.symbol(name).py()
    }

    /// `(name, offset)` of the symbol containing `address`, or `None`.
    fn symbol_at(&self, address: u64) -> Option<(String, u64)> {
        self.linux
            .symbols()
            .symbol_at(address)
            .map(|(s, off)| (s.name.to_owned(), off))
    }

    /// Every kernel symbol, `{name: address}`.
    fn symbols<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for s in self.linux.symbols().iter() {
            d.set_item(s.name, s.address)?;
        }
        Ok(d)
    }

    /// Every process (thread-group leader), as `ps` lists them.
    fn processes(&self, py: Python<'_>) -> PyResult<Vec<Process>> {
        let ps = py.detach(|| self.linux.processes()).py()?;
        Ok(ps.into_iter().map(Process::from).collect())
    }

    /// The process `pid`.
    fn process(&self, py: Python<'_>, pid: u32) -> PyResult<Process> {
        py.detach(|| self.linux.process(pid))
            .py()
            .map(Process::from)
    }

    /// The threads of process `pid`.
    fn threads(&self, py: Python<'_>, pid: u32) -> PyResult<Vec<Process>> {
        let ts = py
            .detach(|| {
                let p = self.linux.process(pid)?;
                self.linux.threads(&p)
            })
            .py()?;
        Ok(ts.into_iter().map(Process::from).collect())
    }

    /// The command line of process `pid`, read from its own memory.
    fn cmdline(&self, py: Python<'_>, pid: u32) -> PyResult<Vec<String>> {
        py.detach(|| {
            let p = self.linux.process(pid)?;
            self.linux.cmdline(&p)
        })
        .py()
    }

    /// The task current on `vcpu`.
    #[pyo3(signature = (vcpu=0))]
    fn current_task(&self, py: Python<'_>, vcpu: u16) -> PyResult<Process> {
        py.detach(|| self.linux.current_task(VcpuId(vcpu)))
            .py()
            .map(Process::from)
    }

    /// `size` bytes of the virtual memory of process `pid` (pid 0: the kernel's).
    fn read<'py>(
        &self,
        py: Python<'py>,
        pid: u32,
        va: u64,
        size: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        new_bytes(py, size, |buf| {
            self.linux
                .read_process_memory(pid, va, buf)
                .map_err(to_core)
        })
    }

    /// A little-endian u64 of the virtual memory of process `pid`.
    fn read_u64(&self, pid: u32, va: u64) -> PyResult<u64> {
        let mut b = [0u8; 8];
        self.linux.read_process_memory(pid, va, &mut b).py()?;
        Ok(u64::from_le_bytes(b))
    }

    /// The NUL-terminated string at `va` in process `pid` (without the NUL).
    #[pyo3(signature = (pid, va, max_len=4096))]
    fn read_cstr<'py>(
        &self,
        py: Python<'py>,
        pid: u32,
        va: u64,
        max_len: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        use vmi_core::VirtualMemory;
        let p = self.linux.process(pid).py()?;
        let space = self.linux.process_space(&p).py()?;
        let vm = self.linux.vm();
        let s = vm
            .read_va_cstr(space, vmi_core::Gva(va), max_len)
            .map_err(crate::errors::core)?;
        Ok(PyBytes::new(py, &s))
    }

    /// Writes `data` into the virtual memory of process `pid`.
    fn write(&self, py: Python<'_>, pid: u32, va: u64, data: &[u8]) -> PyResult<()> {
        py.detach(|| self.linux.write_process_memory(pid, va, data))
            .py()
    }

    /// Loaded kernel modules, as `/proc/modules` lists them.
    fn modules(&self, py: Python<'_>) -> PyResult<Vec<Module>> {
        let ms = py.detach(|| self.linux.modules()).py()?;
        Ok(ms
            .into_iter()
            .map(|m| Module {
                address: m.address,
                name: m.name,
                base: m.base,
                size: m.size,
                state: m.state.proc_name().to_owned(),
            })
            .collect())
    }

    /// The kernel log (`dmesg`), oldest first.
    fn dmesg(&self, py: Python<'_>) -> PyResult<Vec<LogRecord>> {
        let rs = py.detach(|| self.linux.dmesg()).py()?;
        Ok(rs
            .into_iter()
            .map(|r| LogRecord {
                seq: r.seq,
                timestamp_ns: r.timestamp_ns,
                level: r.level,
                facility: r.facility,
                text: r.text,
            })
            .collect())
    }

    /// The kernel object of BTF type `ty` at `address`.
    fn object(slf: Bound<'_, Self>, ty: &str, address: u64) -> Object {
        Object {
            linux: slf.unbind(),
            ty: ty.to_owned(),
            address,
        }
    }

    /// This kernel as a Volatility 3 ISF (JSON text): symbols at link-time addresses,
    /// types from BTF. Put it under `<symbol dir>/linux/` for `vol -s <symbol dir>`.
    fn isf(&self, py: Python<'_>) -> PyResult<String> {
        let mut out = Vec::new();
        py.detach(|| self.linux.write_isf(&mut out)).py()?;
        String::from_utf8(out).map_err(|e| crate::errors::VmiError::new_err(e.to_string()))
    }

    fn __repr__(&self) -> String {
        format!("<vmi.Linux {}>", self.linux.kernel().release)
    }
}

/// A vmi-linux error as a vmi-core one (for the shared bytes helper); the text is kept.
fn to_core(e: vmi_linux::Error) -> vmi_core::Error {
    match e {
        vmi_linux::Error::Vmi(inner) => inner,
        other => vmi_core::Error::Malformed {
            origin: "vmi-linux",
            detail: other.to_string().into(),
        },
    }
}

/// Adds the classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Linux>()?;
    m.add_class::<Process>()?;
    m.add_class::<Module>()?;
    m.add_class::<LogRecord>()?;
    m.add_class::<Object>()?;
    Ok(())
}
