//! The `g` packet and `P` writes ↔ [`RegisterSnapshot`]: reading and writing registers
//! by their target-XML names, and which groups and MSRs the stub can write.

use std::borrow::Cow;
use std::collections::BTreeMap;

use vmi_core::registers::{msr, ControlRegs, Gprs, ReadRegisters, RegisterGroups, WriteRegisters};
use vmi_core::{Error, RegisterSnapshot, Result, VcpuId};

use super::stop::Inner;
use super::GdbSession;

fn gdb_err(what: &'static str, reason: impl Into<Cow<'static, str>>) -> Error {
    Error::unsupported(what, reason)
}

impl Inner {
    /// Reads the `g` packet of `vcpu` as name → value (registers of up to 8 bytes).
    pub(super) fn read_g(&mut self, vcpu: VcpuId) -> Result<BTreeMap<String, u64>> {
        let t = self.thread(vcpu)?;
        let raw = self.client.thread_registers(t)?;
        let mut out = BTreeMap::new();
        for r in self.client.registers() {
            let n = r.bitsize.div_ceil(8);
            if n > 8 {
                continue;
            }
            if let Some(b) = raw.get(r.offset..r.offset + n) {
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(b);
                out.insert(r.name.clone(), u64::from_le_bytes(v));
            }
        }
        Ok(out)
    }
    fn write_reg(&mut self, name: &str, value: u64) -> Result<()> {
        let (num, size) = *self
            .regnums
            .get(name)
            .ok_or_else(|| gdb_err("register write", format!("{name} not in target XML")))?;
        let bytes = value.to_le_bytes();
        self.client.write_register(num, &bytes[..size.min(8)])
    }
}

/// What [`ReadRegisters::all_registers`] asks for: vmi-core's [`msr::ESSENTIAL`] and the
/// segment bases the stub also has.
pub(crate) fn all_msrs() -> Vec<u32> {
    let mut v = msr::ESSENTIAL.to_vec();
    v.extend([msr::FS_BASE, msr::GS_BASE]);
    v
}

impl ReadRegisters for GdbSession {
    /// From the `g` packet of thread `vcpu + 1`: GPRS, CONTROL, EFER, and the MSRs
    /// `IA32_EFER`, `FS_BASE`, `GS_BASE`, `KERNEL_GS_BASE`. Segments (the stub has
    /// selectors only: [`GdbSession::segments`]), descriptor tables and debug registers
    /// are left out; [`crate::LegacyQemu`] adds them from `info registers`. While the
    /// vCPU is parked (in an event or a pause) what is known is served from the cache.
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        self.parking
            .read_registers(vcpu, groups, msrs, |groups, msrs| {
                self.fetch_registers(vcpu, groups, msrs)
            })
    }

    /// Every group, [`msr::ESSENTIAL`], and `FS_BASE`/`GS_BASE`, which the stub gives.
    fn all_registers(&self, vcpu: VcpuId) -> Result<RegisterSnapshot> {
        self.registers(vcpu, RegisterGroups::all(), &all_msrs())
    }
}

impl GdbSession {
    /// Reads registers from the stub, bypassing the parked-vCPU cache.
    pub(crate) fn fetch_registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        let v = self.stopped(|g| g.read_g(vcpu))?;
        let r = |n: &str| -> Result<u64> {
            v.get(n)
                .copied()
                .ok_or_else(|| Error::malformed("gdbstub", format!("no {n} in the g packet")))
        };
        let mut s = RegisterSnapshot::default();
        if groups.contains(RegisterGroups::GPRS) {
            s.gprs = Some(Gprs {
                rax: r("rax")?,
                rbx: r("rbx")?,
                rcx: r("rcx")?,
                rdx: r("rdx")?,
                rsi: r("rsi")?,
                rdi: r("rdi")?,
                rbp: r("rbp")?,
                rsp: r("rsp")?,
                r8: r("r8")?,
                r9: r("r9")?,
                r10: r("r10")?,
                r11: r("r11")?,
                r12: r("r12")?,
                r13: r("r13")?,
                r14: r("r14")?,
                r15: r("r15")?,
                rip: r("rip")?,
                rflags: r("eflags")?,
            });
        }
        if groups.contains(RegisterGroups::CONTROL) {
            s.control = Some(ControlRegs {
                cr0: r("cr0")?,
                cr2: r("cr2")?,
                cr3: r("cr3")?,
                cr4: r("cr4")?,
                cr8: r("cr8")?,
            });
        }
        if groups.contains(RegisterGroups::EFER) {
            if let Some(efer) = v.get("efer") {
                s.msrs.insert(msr::EFER, *efer);
            }
        }
        if groups.contains(RegisterGroups::MSRS) {
            for (index, name) in [
                (msr::EFER, "efer"),
                (msr::FS_BASE, "fs_base"),
                (msr::GS_BASE, "gs_base"),
                (msr::KERNEL_GS_BASE, "k_gs_base"),
            ] {
                if msrs.contains(&index) {
                    if let Some(x) = v.get(name) {
                        s.msrs.insert(index, *x);
                    }
                }
            }
        }
        Ok(s)
    }
}

/// The MSRs the stub can write (`P` on their registers).
const WRITABLE_MSRS: [(u32, &str); 4] = [
    (msr::EFER, "efer"),
    (msr::FS_BASE, "fs_base"),
    (msr::GS_BASE, "gs_base"),
    (msr::KERNEL_GS_BASE, "k_gs_base"),
];

/// Whether the stub can write every MSR of `regs` (which groups it can write at all is
/// the capability table's business: [`crate::capabilities`]).
pub(super) fn check_writable(regs: &RegisterSnapshot) -> Result<()> {
    if let Some(m) = regs
        .msrs
        .indices()
        .find(|m| !WRITABLE_MSRS.iter().any(|(i, _)| i == m))
    {
        return Err(Error::unsupported(
            format!("MSR {m:#x} write"),
            crate::capabilities::GDB_MSRS,
        ));
    }
    Ok(())
}

pub(super) fn write_snapshot(g: &mut Inner, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
    check_writable(regs)?;
    if regs.groups().is_empty() {
        return Ok(());
    }
    let t = g.thread(vcpu)?;
    g.client.select_register_thread(t)?;
    if g.accelerator == super::Accelerator::Kvm {
        // `P` writes QEMU's copy of the vCPU state; under KVM only a `g` first fetches
        // it from KVM and marks it to be written back when the vCPU runs again (a `g`
        // served from the cache was sent in this same stop).
        g.client.read_all_registers()?;
    }
    if let Some(x) = regs.gprs {
        for (n, v) in [
            ("rax", x.rax),
            ("rbx", x.rbx),
            ("rcx", x.rcx),
            ("rdx", x.rdx),
            ("rsi", x.rsi),
            ("rdi", x.rdi),
            ("rbp", x.rbp),
            ("rsp", x.rsp),
            ("r8", x.r8),
            ("r9", x.r9),
            ("r10", x.r10),
            ("r11", x.r11),
            ("r12", x.r12),
            ("r13", x.r13),
            ("r14", x.r14),
            ("r15", x.r15),
            ("rip", x.rip),
            ("eflags", x.rflags),
        ] {
            g.write_reg(n, v)?;
        }
    }
    if let Some(c) = regs.control {
        for (n, v) in [
            ("cr0", c.cr0),
            ("cr2", c.cr2),
            ("cr3", c.cr3),
            ("cr4", c.cr4),
            ("cr8", c.cr8),
        ] {
            g.write_reg(n, v)?;
        }
    }
    for (index, v) in regs.msrs.iter() {
        if let Some((_, n)) = WRITABLE_MSRS.iter().find(|(i, _)| *i == index) {
            g.write_reg(n, v)?;
        }
    }
    Ok(())
}

impl WriteRegisters for GdbSession {
    /// Writes through `P`: GPRS (with RIP, RFLAGS), CONTROL, EFER and the MSRs EFER,
    /// FS_BASE, GS_BASE, KERNEL_GS_BASE. Any other group fails with
    /// [`Error::Unsupported`] before anything is written. A parked vCPU's write is
    /// queued and applied when it is released (with its event's answer, or when the
    /// last pause ends); otherwise the guest is paused for the write.
    fn set_registers(&self, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        self.parking.write_registers(vcpu, regs)
    }
}
