//! KVM register structures (`kvm_regs`, `kvm_sregs`, MSR entries, the event's arch
//! part) ↔ `vmi-core`'s [`RegisterSnapshot`], and register reads by `GET_REGISTERS`.
//!
//! A full snapshot is one `VCPU_GET_REGISTERS` round trip (GPRs, segments, CRs, EFER
//! and the MSRs asked for); XCR0 is a second request sent in the same write burst. A
//! vCPU parked in an event or a pause needs none: its event carried regs, sregs and
//! nine MSRs, which [`vmi_core::park::Parking`] keeps as its cache.

use kvmi_proto::sys;
use std::collections::BTreeSet;
use std::sync::Mutex;

use kvmi_proto::{Connection, ProtoError, Request};
use vmi_core::registers::{
    msr, ControlRegs, DescriptorTable, Gprs, Msrs, RegisterGroups, RegisterSnapshot, Segment,
    SegmentAttributes, Segments,
};
use vmi_core::{Error, Result, VcpuId};

use crate::error::proto_at;

/// GPRs from `kvm_regs`.
pub(crate) fn gprs_from_kvm(r: &sys::KvmRegs) -> Gprs {
    Gprs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rbp: r.rbp,
        rsp: r.rsp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

/// `kvm_regs` from GPRs (all 18 values: `SET_REGISTERS` writes the whole struct).
pub(crate) fn kvm_from_gprs(g: &Gprs) -> sys::KvmRegs {
    sys::KvmRegs {
        rax: g.rax,
        rbx: g.rbx,
        rcx: g.rcx,
        rdx: g.rdx,
        rsi: g.rsi,
        rdi: g.rdi,
        rsp: g.rsp,
        rbp: g.rbp,
        r8: g.r8,
        r9: g.r9,
        r10: g.r10,
        r11: g.r11,
        r12: g.r12,
        r13: g.r13,
        r14: g.r14,
        r15: g.r15,
        rip: g.rip,
        rflags: g.rflags,
    }
}

fn segment(s: &sys::KvmSegment) -> Segment {
    Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        attributes: SegmentAttributes {
            type_: s.type_,
            s: s.s != 0,
            dpl: s.dpl,
            present: s.present != 0,
            avl: s.avl != 0,
            l: s.l != 0,
            db: s.db != 0,
            g: s.g != 0,
            unusable: s.unusable != 0,
        },
    }
}

/// Segments, LDTR/TR (kept distinct), GDTR/IDTR, CRs and EFER from `kvm_sregs`.
pub(crate) fn apply_sregs(snap: &mut RegisterSnapshot, s: &sys::KvmSregs) {
    apply_sregs_without_msrs(snap, s);
    snap.msrs.insert(msr::EFER, s.efer);
    // FS/GS bases are MSRs too; the segment cache holds their current values.
    snap.msrs.insert(msr::FS_BASE, s.fs.base);
    snap.msrs.insert(msr::GS_BASE, s.gs.base);
}

/// The part of [`apply_sregs`] that is no MSR.
fn apply_sregs_without_msrs(snap: &mut RegisterSnapshot, s: &sys::KvmSregs) {
    let (control, segments, gdtr, idtr) = sregs_without_msrs(s);
    snap.control = Some(control);
    snap.segments = Some(segments);
    snap.gdtr = Some(gdtr);
    snap.idtr = Some(idtr);
}

/// CRs, segments (LDTR/TR kept distinct), GDTR and IDTR from `kvm_sregs`.
fn sregs_without_msrs(
    s: &sys::KvmSregs,
) -> (ControlRegs, Segments, DescriptorTable, DescriptorTable) {
    (
        ControlRegs {
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
        },
        Segments {
            cs: segment(&s.cs),
            ds: segment(&s.ds),
            es: segment(&s.es),
            fs: segment(&s.fs),
            gs: segment(&s.gs),
            ss: segment(&s.ss),
            ldtr: segment(&s.ldt),
            tr: segment(&s.tr),
        },
        DescriptorTable {
            base: s.gdt.base,
            limit: s.gdt.limit,
        },
        DescriptorTable {
            base: s.idt.base,
            limit: s.idt.limit,
        },
    )
}

/// Reads an event's registers from the kvmi event itself (its arch part), only when
/// the tool (or a register read of the parked vCPU) looks at them.
pub(crate) struct EventArchDecoder;

impl vmi_core::RegisterDecoder for EventArchDecoder {
    type Source = kvmi_proto::EventInfo;

    fn decode(ev: &kvmi_proto::EventInfo) -> RegisterSnapshot {
        snapshot_from_event(&ev.common.arch)
    }
}

/// Everything an event's arch part carries: GPRs, sregs and its nine MSRs (EFER as
/// the MSR list has it), plus the FS/GS bases from the segment cache. Runs once per
/// event, so it is built in one piece: the MSRs, listed in ascending index order, are
/// copied into the inline table at once.
pub(crate) fn snapshot_from_event(arch: &sys::EventArch) -> RegisterSnapshot {
    let s = &arch.sregs;
    let m = &arch.msrs;
    let (control, segments, gdtr, idtr) = sregs_without_msrs(s);
    RegisterSnapshot {
        gprs: Some(gprs_from_kvm(&arch.regs)),
        control: Some(control),
        debug: None,
        segments: Some(segments),
        gdtr: Some(gdtr),
        idtr: Some(idtr),
        xcr0: None,
        msrs: Msrs::from_ascending(&[
            (msr::IA32_SYSENTER_CS, m.sysenter_cs),
            (msr::IA32_SYSENTER_ESP, m.sysenter_esp),
            (msr::IA32_SYSENTER_EIP, m.sysenter_eip),
            (msr::IA32_PAT, m.pat),
            (msr::EFER, m.efer),
            (msr::STAR, m.star),
            (msr::LSTAR, m.lstar),
            (msr::CSTAR, m.cstar),
            (msr::FS_BASE, s.fs.base),
            (msr::GS_BASE, s.gs.base),
            (msr::KERNEL_GS_BASE, m.shadow_gs),
        ]),
    }
}

/// The MSRs `GET_REGISTERS` must be asked for to serve `groups`/`msrs`: EFER and the
/// FS/GS bases come with sregs.
fn msrs_to_request(groups: RegisterGroups, msrs: &[u32]) -> Vec<u32> {
    if !groups.contains(RegisterGroups::MSRS) {
        return Vec::new();
    }
    let mut v: Vec<u32> = msrs
        .iter()
        .copied()
        .filter(|m| ![msr::EFER, msr::FS_BASE, msr::GS_BASE].contains(m))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn from_reply(r: &kvmi_proto::Registers) -> RegisterSnapshot {
    let mut snap = RegisterSnapshot {
        gprs: Some(gprs_from_kvm(&r.regs)),
        ..RegisterSnapshot::default()
    };
    apply_sregs(&mut snap, &r.sregs);
    snap.msrs.extend(r.msrs.iter().map(|e| (e.index, e.data)));
    snap
}

/// MSRs the host refused to read in this session (`GET_REGISTERS` failed for them
/// alone): never asked for again, so a snapshot stays one `GET_REGISTERS`.
#[derive(Default)]
pub(crate) struct RefusedMsrs(Mutex<BTreeSet<u32>>);

impl RefusedMsrs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads `groups` of a running vCPU from the host: one `GET_REGISTERS` (plus
/// `GET_XCR` for XCR0, in the same write burst). Debug registers are not readable over
/// KVMi and stay `None`. MSRs the host refuses to read are left out: `GET_REGISTERS`
/// fails as a whole on one unreadable MSR, so the first time the snapshot without MSRs
/// and each MSR alone are asked in one burst, and the MSRs refused are remembered for
/// the session (`refused`) and not asked again.
pub(crate) fn fetch(
    conn: &Connection,
    refused: &RefusedMsrs,
    vcpu: VcpuId,
    groups: RegisterGroups,
    msrs: &[u32],
) -> Result<RegisterSnapshot> {
    let mut want = msrs_to_request(groups, msrs);
    {
        let known = refused.lock();
        if !known.is_empty() {
            want.retain(|m| !known.contains(m));
        }
    }
    if want.len() > sys::KVMI_GET_REGISTERS_MAX_MSRS {
        return Err(Error::InvalidArgument {
            what: "MSR list",
            reason: format!(
                "{} MSRs asked, at most {} per read",
                want.len(),
                sys::KVMI_GET_REGISTERS_MAX_MSRS
            )
            .into(),
        });
    }
    let at = |e| proto_at("KVMI_VCPU_GET_REGISTERS", Some(vcpu), None, e);
    let xcr = if groups.contains(RegisterGroups::XCR0) {
        Some(
            conn.send(Request::get_xcr(vcpu.0, 0))
                .map_err(|e| proto_at("KVMI_VCPU_GET_XCR", Some(vcpu), None, e))?,
        )
    } else {
        None
    };
    let t = conn.config().request_timeout;
    let regs = match conn
        .send(Request::get_registers(vcpu.0, &want).map_err(at)?)
        .map_err(at)?
        .wait(t)
    {
        Ok(r) => from_reply(&r),
        Err(ProtoError::Kvm { err, .. }) if err == -sys::KVM_EINVAL && !want.is_empty() => {
            read_msrs_one_by_one(conn, refused, vcpu, &want)?
        }
        Err(e) => return Err(at(e)),
    };
    let mut snap = regs.select(groups, msrs);
    if let Some(p) = xcr {
        if let Ok(v) = p.wait(t) {
            snap.xcr0 = Some(v);
        }
    }
    Ok(snap)
}

/// The snapshot without MSRs and each MSR of `want` with its own `GET_REGISTERS`, all
/// in one burst; keeps the MSRs the host can read and remembers the others.
fn read_msrs_one_by_one(
    conn: &Connection,
    refused: &RefusedMsrs,
    vcpu: VcpuId,
    want: &[u32],
) -> Result<RegisterSnapshot> {
    let at = |e| proto_at("KVMI_VCPU_GET_REGISTERS", Some(vcpu), None, e);
    let mut reqs = vec![Request::get_registers(vcpu.0, &[]).map_err(at)?];
    for &m in want {
        reqs.push(Request::get_registers(vcpu.0, &[m]).map_err(at)?);
    }
    let mut pending = conn.send_all(reqs).map_err(at)?.into_iter();
    let t = conn.config().request_timeout;
    let base = pending.next().map(|p| p.wait(t));
    let mut snap = match base {
        Some(Ok(r)) => from_reply(&r),
        Some(Err(e)) => return Err(at(e)),
        None => RegisterSnapshot::default(),
    };
    let mut no = Vec::new();
    for (&m, p) in want.iter().zip(pending) {
        match p.wait(t) {
            Ok(r) => {
                if let Some(e) = r.msrs.first().filter(|e| e.index == m) {
                    snap.msrs.insert(m, e.data);
                }
            }
            Err(ProtoError::Kvm { .. }) => no.push(m),
            Err(_) => {} // unknown: asked again next time
        }
    }
    refused.lock().extend(no);
    Ok(snap)
}

/// The part of `regs` KVMi can write: only GPRs (`VCPU_SET_REGISTERS` takes a
/// `kvm_regs`; there is no command for sregs, debug registers or MSRs).
pub(crate) fn writable(regs: &RegisterSnapshot) -> Result<Option<sys::KvmRegs>> {
    let extra = regs.control.is_some()
        || regs.debug.is_some()
        || regs.segments.is_some()
        || regs.gdtr.is_some()
        || regs.idtr.is_some()
        || regs.xcr0.is_some()
        || !regs.msrs.is_empty();
    if extra {
        return Err(Error::unsupported(
            "register write",
            "KVMi writes only general-purpose registers (VCPU_SET_REGISTERS takes kvm_regs; \
             kvmi-protocol.md §3 id 14)",
        ));
    }
    Ok(regs.gprs.as_ref().map(kvm_from_gprs))
}

impl vmi_core::ReadRegisters for crate::KvmiVm {
    /// From the parked vCPU's cache (its event's or pause's snapshot) when it holds
    /// what is asked, else one `GET_REGISTERS`.
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        self.shared.check_vcpu(vcpu)?;
        let sh = &self.shared;
        self.parking.read_registers(vcpu, groups, msrs, |g, m| {
            fetch(&sh.conn, &sh.refused_msrs, vcpu, g, m)
        })
    }
}

impl vmi_core::WriteRegisters for crate::KvmiVm {
    /// GPRs only (see the capability table). In an event the write goes with the
    /// answer; outside events the vCPU is paused for it (`SET_REGISTERS` during its
    /// `PAUSE_VCPU` event) — LibVMI's KVM driver can only write inside events.
    fn set_registers(&self, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        self.shared.check_vcpu(vcpu)?;
        self.parking.write_registers(vcpu, regs)
    }
}
