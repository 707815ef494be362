//! The KVMi backend of `vmi-core`: introspection of KVM guests on a KVM-VMI patched
//! kernel and QEMU (kvmi-v7, and kvmi-v6 within its limits), over the introspection
//! socket.
//!
//! Layering: `kvmi-sys` → `kvmi-proto` → **`vmi-kvm`** → your tool, programming against
//! the capability traits of `vmi-core`. A [`KvmiVm`] is one VM ([`KvmiListener`]
//! accepts many): it implements [`vmi_core::Backend`] and the traits behind its
//! accessors —
//!
//! * [`memory`]: physical reads/writes of any length, page-split and pipelined;
//! * registers: one `GET_REGISTERS` per snapshot, none while the vCPU is parked;
//!   GPR writes in and outside events;
//! * [`park`]: reference-counted pause of the guest or one vCPU on internal
//!   `PAUSE_VCPU` events;
//! * [`events`] and [`response`]: monitors, every event kind with all its fields, every
//!   answer KVMi can express, [`dispatch`] for several vCPUs in parallel;
//! * [`breakpoints`], [`slat`] (page access, EPT views), [`cpu_state`] (TSC, MTRR,
//!   XSAVE, XCR0, host translation, exception injection);
//! * [`capabilities`]: the one table for the connected host, from `GET_VERSION` and the
//!   `CHECK_COMMAND`/`CHECK_EVENT` probe.
//!
//! # Guest safety
//!
//! Built on `vmi-core`'s parked-vCPU model ([`vmi_core::park`]): every trapped event
//! is a [`vmi_core::PendingEvent`] whose reply consumes it and whose drop answers it,
//! so each event gets exactly one reply on every path; pauses are `PAUSE_VCPU` events
//! held internally ([`park`]); register writes to parked vCPUs go out with the
//! release. Dropping the session tears it down ([`teardown`]): breakpoint bytes,
//! page access, singlestep, intercepts and pauses are undone, pending events answered.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use vmi_core::{EventControl, Monitor, PhysicalMemory, ReadRegisters, Response, VcpuId};
//! use vmi_core::event::{RegisterAccess, RegisterFilter};
//!
//! let vm = vmi_kvm::KvmiVm::listen("/run/kvmi.sock", Default::default(), Duration::from_secs(30))?;
//! let regs = vm.all_registers(VcpuId(0))?;
//! let mut page = [0u8; 4096];
//! vm.read_physical(vmi_core::Gpa(0x1000), &mut page)?;
//! vm.enable(&Monitor::ControlRegister { cr: 3, access: RegisterAccess::Write, filter: RegisterFilter::default() })?;
//! if let Some(ev) = vm.wait_event(Duration::from_secs(5))? {
//!     println!("{:?} at rip {:#x}", ev.kind, regs.gprs.map_or(0, |g| g.rip));
//!     ev.reply(Response::continue_())?;
//! }
//! # Ok::<(), vmi_core::Error>(())
//! ```

pub mod breakpoints;
pub mod capabilities;
pub mod cpu_state;
pub mod dispatch;
mod error;
pub mod events;
mod flagged;
mod inbox;
pub mod memory;
pub mod page_cache;
pub mod park;
mod registers;
pub mod response;
pub mod session;
pub mod slat;
pub mod teardown;

use std::borrow::Cow;
use std::sync::Arc;

pub use dispatch::{dispatch_parallel, DispatchReport};
pub use kvmi_proto::Config;
pub use session::{KvmiListener, KvmiVm};

impl vmi_core::Backend for KvmiVm {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(if self.shared.facts.v7() {
            "kvmi-v7"
        } else {
            "kvmi-v6"
        })
    }

    fn capabilities(&self) -> Arc<vmi_core::CapabilityReport> {
        self.parking.capabilities()
    }

    fn physical_memory(&self) -> &dyn vmi_core::PhysicalMemory {
        self
    }

    fn physical_memory_writer(&self) -> Option<&dyn vmi_core::PhysicalMemoryWrite> {
        Some(self)
    }

    fn memory_layout(&self) -> Option<&dyn vmi_core::MemoryLayout> {
        Some(self)
    }

    fn register_reader(&self) -> Option<&dyn vmi_core::ReadRegisters> {
        Some(self)
    }

    fn register_writer(&self) -> Option<&dyn vmi_core::WriteRegisters> {
        Some(self)
    }

    fn vcpu_control(&self) -> Option<&dyn vmi_core::VcpuControl> {
        Some(self)
    }

    fn events(&self) -> Option<&dyn vmi_core::EventControl> {
        Some(self)
    }

    fn breakpoints(&self) -> Option<&dyn vmi_core::Breakpoints> {
        Some(self)
    }

    fn page_access(&self) -> Option<&dyn vmi_core::PageAccess> {
        Some(self)
    }

    fn slat_views(&self) -> Option<&dyn vmi_core::SlatViews> {
        self.shared
            .facts
            .ept_views()
            .then_some(self as &dyn vmi_core::SlatViews)
    }

    fn virtualization_exceptions(&self) -> Option<&dyn vmi_core::VirtualizationExceptions> {
        self.shared
            .facts
            .ve()
            .then_some(self as &dyn vmi_core::VirtualizationExceptions)
    }

    fn sub_page_protection(&self) -> Option<&dyn vmi_core::SubPageProtection> {
        self.shared
            .facts
            .spp()
            .then_some(self as &dyn vmi_core::SubPageProtection)
    }

    fn gfn_allocation(&self) -> Option<&dyn vmi_core::GfnAllocation> {
        self.capabilities()
            .is_supported(vmi_core::Capability::GfnAllocation)
            .then_some(self as &dyn vmi_core::GfnAllocation)
    }

    fn tsc(&self) -> Option<&dyn vmi_core::Tsc> {
        Some(self)
    }

    fn mtrr(&self) -> Option<&dyn vmi_core::Mtrr> {
        Some(self)
    }

    fn xsave(&self) -> Option<&dyn vmi_core::Xsave> {
        Some(self)
    }

    fn fault_injection(&self) -> Option<&dyn vmi_core::FaultInjection> {
        Some(self)
    }

    fn host_translation(&self) -> Option<&dyn vmi_core::HostTranslation> {
        self.shared
            .facts
            .v7()
            .then_some(self as &dyn vmi_core::HostTranslation)
    }
}
