//! The session behind a Python `Vm`: either backend, behind one type that the rest of the
//! bindings (and vmi-linux) program against.

use std::sync::Arc;

use vmi_core::prelude::*;
use vmi_core::{RegisterGroups, RegisterSnapshot};
use vmi_kvm::KvmiVm;
use vmi_legacy::LegacyQemu;

/// One introspection session.
pub(crate) enum Guest {
    /// An unpatched QEMU (QMP, optionally its GDB stub, shared RAM where QEMU offers it).
    Legacy(Box<LegacyQemu>),
    /// A KVM-VMI host.
    Kvmi(Box<KvmiVm>),
}

/// A session shared by the Python objects that use it; it ends (undoing what it set up)
/// when the last one goes.
pub(crate) type SharedGuest = Arc<Guest>;

impl Guest {
    /// The session as the backend-neutral trait object.
    pub(crate) fn backend(&self) -> &dyn Backend {
        match self {
            Guest::Legacy(v) => v.as_ref(),
            Guest::Kvmi(v) => v.as_ref(),
        }
    }

    /// Which backend: `legacy` or `kvmi`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Guest::Legacy(_) => "legacy",
            Guest::Kvmi(_) => "kvmi",
        }
    }

    /// How guest RAM is reached: `shared`, `procmem`, `qmp` (legacy) or `kvmi`.
    pub(crate) fn ram_access(&self) -> &'static str {
        match self {
            Guest::Legacy(v) => v.ram_access().kind(),
            Guest::Kvmi(_) => "kvmi",
        }
    }

    /// The vCPU controls, or `Unsupported`.
    pub(crate) fn vcpus(&self) -> Result<&dyn VcpuControl> {
        self.backend()
            .vcpu_control()
            .ok_or_else(|| Error::unsupported("pause", "this session cannot stop vCPUs"))
    }

    /// Event delivery, or `Unsupported`.
    pub(crate) fn events(&self) -> Result<&dyn EventControl> {
        self.backend().events().ok_or_else(|| {
            Error::unsupported(
                "events",
                "this session delivers no events (vmi-legacy needs the GDB stub)",
            )
        })
    }

    /// Breakpoints, or `Unsupported`.
    pub(crate) fn breakpoints(&self) -> Result<&dyn Breakpoints> {
        self.backend().breakpoints().ok_or_else(|| {
            Error::unsupported(
                "breakpoints",
                "this session sets no breakpoints (vmi-legacy needs the GDB stub)",
            )
        })
    }

    /// Physical writes, or `Unsupported`.
    pub(crate) fn writer(&self) -> Result<&dyn PhysicalMemoryWrite> {
        self.backend().physical_memory_writer().ok_or_else(|| {
            Error::unsupported(
                "physical memory writes",
                "this session is read-only (open it with writable=True)",
            )
        })
    }

    /// Register writes, or `Unsupported`.
    pub(crate) fn register_writer(&self) -> Result<&dyn WriteRegisters> {
        self.backend().register_writer().ok_or_else(|| {
            Error::unsupported("register writes", "this session cannot write registers")
        })
    }
}

impl PhysicalMemory for Guest {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        match self {
            Guest::Legacy(v) => v.read_physical(gpa, buf),
            Guest::Kvmi(v) => v.read_physical(gpa, buf),
        }
    }

    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        match self {
            Guest::Legacy(v) => v.read_physical_many(requests),
            Guest::Kvmi(v) => v.read_physical_many(requests),
        }
    }
}

impl ReadRegisters for Guest {
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        let reader = self
            .backend()
            .register_reader()
            .ok_or_else(|| Error::unsupported("registers", "this session cannot read registers"))?;
        reader.registers(vcpu, groups, msrs)
    }
}

impl PhysicalMemoryWrite for Guest {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.writer()?.write_physical(gpa, data)
    }
}

/// How the Python objects of one `Vm` reach its session: closing the `Vm` empties the
/// slot, so the session ends (its breakpoints and monitors removed, what it paused
/// resumed) as soon as no call is running on it — even while Python still holds a
/// `Linux`, a `PhysicalFile` or a handle, whose later calls raise `Disconnected`. Only a
/// held `Pause` keeps the session until it is resumed.
#[derive(Clone)]
pub(crate) struct GuestRef(Arc<std::sync::RwLock<Option<SharedGuest>>>);

impl GuestRef {
    /// A slot holding `guest`.
    pub(crate) fn new(guest: Guest) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Some(Arc::new(guest)))))
    }

    /// The session, or `Disconnected` once closed.
    pub(crate) fn get(&self) -> Result<SharedGuest> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::Disconnected {
                reason: "the Vm was closed".into(),
            })
    }

    /// Runs `f` on the session (holding the slot's read lock, no reference count
    /// traffic: the per-call cost of small reads), or `Disconnected` once closed.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Guest) -> Result<T>) -> Result<T> {
        let slot = self.0.read().unwrap_or_else(|e| e.into_inner());
        match slot.as_deref() {
            Some(g) => f(g),
            None => Err(Error::Disconnected {
                reason: "the Vm was closed".into(),
            }),
        }
    }

    /// Whether the slot still holds the session.
    pub(crate) fn is_open(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Empties the slot; the session ends when the last running call returns.
    pub(crate) fn close(&self) {
        let taken = self.0.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }
}

impl PhysicalMemory for GuestRef {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.with(|g| g.read_physical(gpa, buf))
    }

    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        self.with(|g| g.read_physical_many(requests))
    }
}

impl ReadRegisters for GuestRef {
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        self.get()?.registers(vcpu, groups, msrs)
    }
}

impl PhysicalMemoryWrite for GuestRef {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.get()?.write_physical(gpa, data)
    }
}
