//! Typed, safe methods for every kvmi-v7 command (and the v6-only ones).
//!
//! Each method uses [`Config::request_timeout`](crate::Config::request_timeout); use
//! [`Connection::request`] for a custom timeout.

use crate::codec::{read_reply, Abi};
use crate::connection::Connection;
use crate::error::{ProtoError, Result};
use kvmi_sys as sys;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Registers returned by [`Connection::get_registers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registers {
    /// Operand size in bytes (2, 4 or 8).
    pub mode: u32,
    /// General-purpose registers.
    pub regs: sys::KvmRegs,
    /// Special registers.
    pub sregs: sys::KvmSregs,
    /// The requested MSRs, in request order.
    pub msrs: Vec<sys::KvmMsrEntry>,
}

/// Encodes a vCPU command payload: `VcpuHdr` + `body` bytes.
pub fn vcpu_payload(vcpu: u16, body: &[u8]) -> Vec<u8> {
    let vh = sys::VcpuHdr {
        vcpu,
        ..Default::default()
    };
    let mut v = Vec::with_capacity(sys::VCPU_HDR_SIZE + body.len());
    v.extend_from_slice(vh.as_bytes());
    v.extend_from_slice(body);
    v
}

/// Encodes a page-access list (`VM_SET_PAGE_ACCESS` payload).
pub fn page_access_payload(view: u16, entries: &[(u64, u8)]) -> Result<Vec<u8>> {
    let count = u16::try_from(entries.len())
        .map_err(|_| ProtoError::InvalidArgument("too many page-access entries".into()))?;
    let head = sys::VmSetPageAccess {
        view,
        count,
        padding: 0,
    };
    let mut v = head.as_bytes().to_vec();
    for &(gpa, access) in entries {
        let e = sys::PageAccessEntry {
            gpa,
            access,
            ..Default::default()
        };
        v.extend_from_slice(e.as_bytes());
    }
    Ok(v)
}

impl Connection {
    fn call(&self, id: u16, payload: &[u8]) -> Result<Vec<u8>> {
        self.request(id, payload, self.config.request_timeout)
    }

    fn call_vm<T: IntoBytes + Immutable>(&self, id: u16, body: &T) -> Result<Vec<u8>> {
        self.call(id, body.as_bytes())
    }

    fn call_vcpu<T: IntoBytes + Immutable>(&self, id: u16, vcpu: u16, body: &T) -> Result<Vec<u8>> {
        self.call(id, &vcpu_payload(vcpu, body.as_bytes()))
    }

    fn call_reply<R: FromBytes>(&self, what: &'static str, id: u16, payload: &[u8]) -> Result<R> {
        read_reply(what, &self.call(id, payload)?)
    }

    /// `KVMI_GET_VERSION`: version and (v7) features. `None` features means a v6 reply.
    pub fn get_version(&self) -> Result<(u32, Option<sys::Features>)> {
        let data = self.call(sys::KVMI_GET_VERSION, &[])?;
        if data.len() >= core::mem::size_of::<sys::GetVersionReply>() {
            let r: sys::GetVersionReply = read_reply("GET_VERSION reply", &data)?;
            Ok((r.version, Some(r.features)))
        } else {
            let r: sys::v6::GetVersionReply = read_reply("GET_VERSION reply", &data)?;
            Ok((r.version, None))
        }
    }

    /// `KVMI_VM_CHECK_COMMAND` (uncached; `Err(Kvm)` if not allowed).
    pub fn check_command(&self, id: u16) -> Result<Vec<u8>> {
        self.call_vm(
            sys::KVMI_VM_CHECK_COMMAND,
            &sys::VmCheckCommand {
                id,
                ..Default::default()
            },
        )
    }

    /// `KVMI_VM_CHECK_EVENT` (uncached; `Err(Kvm)` if not allowed).
    pub fn check_event(&self, id: u8) -> Result<Vec<u8>> {
        self.call_vm(
            sys::KVMI_VM_CHECK_EVENT,
            &sys::VmCheckEvent {
                id: id.into(),
                ..Default::default()
            },
        )
    }

    /// `KVMI_VM_GET_INFO`: number of online vCPUs.
    pub fn get_guest_info(&self) -> Result<u32> {
        let r: sys::VmGetInfoReply =
            self.call_reply("VM_GET_INFO reply", sys::KVMI_VM_GET_INFO, &[])?;
        Ok(r.vcpu_count)
    }

    /// `KVMI_VCPU_GET_INFO`: TSC frequency in Hz (0 without TSC scaling).
    pub fn get_vcpu_info(&self, vcpu: u16) -> Result<u64> {
        let r: sys::VcpuGetInfoReply = self.call_reply(
            "VCPU_GET_INFO reply",
            sys::KVMI_VCPU_GET_INFO,
            &vcpu_payload(vcpu, &[]),
        )?;
        Ok(r.tsc_speed)
    }

    /// `KVMI_VCPU_PAUSE` (one PAUSE_VCPU event follows per success).
    pub fn pause_vcpu(&self, vcpu: u16, wait: bool) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_PAUSE,
            vcpu,
            &sys::VcpuPause {
                wait: u8::from(wait),
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_CONTROL_EVENTS`: enable/disable a vCPU event.
    pub fn control_events(&self, vcpu: u16, event: u8, enable: bool) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_CONTROL_EVENTS,
            vcpu,
            &sys::VcpuControlEvents {
                event_id: event.into(),
                enable: u8::from(enable),
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VM_CONTROL_EVENTS`: enable/disable a VM event (UNHOOK, CREATE_VCPU,
    /// CMD_ERROR).
    pub fn control_vm_events(&self, event: u8, enable: bool) -> Result<()> {
        self.call_vm(
            sys::KVMI_VM_CONTROL_EVENTS,
            &sys::VmControlEvents {
                event_id: event.into(),
                enable: u8::from(enable),
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_CONTROL_CR`: intercept writes to CR0/3/4.
    pub fn control_cr(&self, vcpu: u16, cr: u32, enable: bool) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_CONTROL_CR,
            vcpu,
            &sys::VcpuControlCr {
                enable: u8::from(enable),
                cr,
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_CONTROL_MSR`: intercept writes to an MSR.
    pub fn control_msr(&self, vcpu: u16, msr: u32, enable: bool) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_CONTROL_MSR,
            vcpu,
            &sys::VcpuControlMsr {
                enable: u8::from(enable),
                msr,
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_GET_REGISTERS` with the given MSR indices (≤ 482).
    pub fn get_registers(&self, vcpu: u16, msrs: &[u32]) -> Result<Registers> {
        if msrs.len() > sys::KVMI_GET_REGISTERS_MAX_MSRS {
            return Err(ProtoError::InvalidArgument(format!(
                "{} MSRs requested, at most {}",
                msrs.len(),
                sys::KVMI_GET_REGISTERS_MAX_MSRS
            )));
        }
        let head = sys::VcpuGetRegisters {
            nmsrs: msrs.len() as u16,
            ..Default::default()
        };
        let mut body = head.as_bytes().to_vec();
        body.extend_from_slice(msrs.as_bytes());
        let data = self.call(sys::KVMI_VCPU_GET_REGISTERS, &vcpu_payload(vcpu, &body))?;
        let (r, tail) = sys::VcpuGetRegistersReply::read_from_prefix(&data).map_err(|_| {
            ProtoError::Truncated {
                what: "GET_REGISTERS reply",
                need: core::mem::size_of::<sys::VcpuGetRegistersReply>(),
                have: data.len(),
            }
        })?;
        let n = r.msrs.nmsrs as usize;
        if n != msrs.len() {
            return Err(ProtoError::Malformed(format!(
                "GET_REGISTERS returned {n} MSRs, {} requested",
                msrs.len()
            )));
        }
        let entries = <[sys::KvmMsrEntry]>::ref_from_prefix_with_elems(tail, n)
            .ok()
            .map(|(e, _)| e.to_vec());
        let entries = match entries {
            Some(e) => e,
            None => {
                // Alignment may not match; copy element by element.
                let sz = core::mem::size_of::<sys::KvmMsrEntry>();
                if tail.len() < n * sz {
                    return Err(ProtoError::Truncated {
                        what: "GET_REGISTERS MSR entries",
                        need: n * sz,
                        have: tail.len(),
                    });
                }
                tail.chunks_exact(sz)
                    .take(n)
                    .filter_map(|c| sys::KvmMsrEntry::read_from_bytes(c).ok())
                    .collect()
            }
        };
        Ok(Registers {
            mode: r.mode,
            regs: r.regs,
            sregs: r.sregs,
            msrs: entries,
        })
    }

    /// `KVMI_VCPU_SET_REGISTERS` (only while the vCPU waits for an event reply).
    pub fn set_registers(&self, vcpu: u16, regs: &sys::KvmRegs) -> Result<()> {
        self.call_vcpu(sys::KVMI_VCPU_SET_REGISTERS, vcpu, regs)
            .map(drop)
    }

    /// `KVMI_VCPU_GET_CPUID`.
    pub fn get_cpuid(
        &self,
        vcpu: u16,
        function: u32,
        index: u32,
    ) -> Result<sys::VcpuGetCpuidReply> {
        let body = sys::VcpuGetCpuid { function, index };
        self.call_reply(
            "GET_CPUID reply",
            sys::KVMI_VCPU_GET_CPUID,
            &vcpu_payload(vcpu, body.as_bytes()),
        )
    }

    /// `KVMI_VCPU_GET_XSAVE`: the raw XSAVE area (length as sent, ≤ 8192).
    pub fn get_xsave(&self, vcpu: u16) -> Result<Vec<u8>> {
        self.call(sys::KVMI_VCPU_GET_XSAVE, &vcpu_payload(vcpu, &[]))
    }

    /// `KVMI_VCPU_SET_XSAVE` (≤ 4096 bytes).
    pub fn set_xsave(&self, vcpu: u16, area: &[u8]) -> Result<()> {
        if area.len() > sys::KVM_XSAVE_SIZE {
            return Err(ProtoError::InvalidArgument(
                "XSAVE area larger than 4096 bytes".into(),
            ));
        }
        self.call(sys::KVMI_VCPU_SET_XSAVE, &vcpu_payload(vcpu, area))
            .map(drop)
    }

    /// `KVMI_VCPU_GET_XCR` (only XCR0).
    pub fn get_xcr(&self, vcpu: u16, xcr: u8) -> Result<u64> {
        let r: sys::VcpuGetXcrReply = self.call_reply(
            "GET_XCR reply",
            sys::KVMI_VCPU_GET_XCR,
            &vcpu_payload(
                vcpu,
                sys::VcpuGetXcr {
                    xcr,
                    padding: [0; 7],
                }
                .as_bytes(),
            ),
        )?;
        Ok(r.value)
    }

    /// `KVMI_VCPU_GET_MTRR_TYPE`.
    pub fn get_mtrr_type(&self, vcpu: u16, gpa: u64) -> Result<u8> {
        let r: sys::VcpuGetMtrrTypeReply = self.call_reply(
            "GET_MTRR_TYPE reply",
            sys::KVMI_VCPU_GET_MTRR_TYPE,
            &vcpu_payload(vcpu, sys::VcpuGetMtrrType { gpa }.as_bytes()),
        )?;
        Ok(r.type_)
    }

    /// `KVMI_VCPU_INJECT_EXCEPTION` (a TRAP event follows on v7). On v6 `has_error` is
    /// set when `error_code` is non-zero.
    pub fn inject_exception(
        &self,
        vcpu: u16,
        vector: u8,
        error_code: u32,
        address: u64,
    ) -> Result<()> {
        let body = if self.abi() == Abi::V6 {
            sys::v6::InjectException {
                nr: vector,
                has_error: u8::from(error_code != 0),
                padding: 0,
                error_code,
                address,
            }
            .as_bytes()
            .to_vec()
        } else {
            sys::VcpuInjectException {
                nr: vector,
                error_code,
                address,
                ..Default::default()
            }
            .as_bytes()
            .to_vec()
        };
        self.call(sys::KVMI_VCPU_INJECT_EXCEPTION, &vcpu_payload(vcpu, &body))
            .map(drop)
    }

    /// `KVMI_VM_READ_PHYSICAL`: `size` in 1..=4096, not crossing a page.
    pub fn read_physical(&self, gpa: u64, size: usize) -> Result<Vec<u8>> {
        check_page_range(gpa, size)?;
        let mut data = self.call_vm(
            sys::KVMI_VM_READ_PHYSICAL,
            &sys::VmReadPhysical {
                gpa,
                size: size as u64,
            },
        )?;
        if data.len() < size {
            return Err(ProtoError::Truncated {
                what: "READ_PHYSICAL data",
                need: size,
                have: data.len(),
            });
        }
        data.truncate(size);
        Ok(data)
    }

    /// `KVMI_VM_WRITE_PHYSICAL`: 1..=4096 bytes, not crossing a page.
    pub fn write_physical(&self, gpa: u64, data: &[u8]) -> Result<()> {
        check_page_range(gpa, data.len())?;
        let head = sys::VmWritePhysical {
            gpa,
            size: data.len() as u64,
        };
        let mut p = head.as_bytes().to_vec();
        p.extend_from_slice(data);
        self.call(sys::KVMI_VM_WRITE_PHYSICAL, &p).map(drop)
    }

    /// `KVMI_VM_SET_PAGE_ACCESS`: `(gpa, allowed-access bits)` pairs in `view`.
    pub fn set_page_access(&self, view: u16, entries: &[(u64, u8)]) -> Result<()> {
        self.call(
            sys::KVMI_VM_SET_PAGE_ACCESS,
            &page_access_payload(view, entries)?,
        )
        .map(drop)
    }

    /// `KVMI_GET_PAGE_ACCESS` (kvmi-v6 only): access bits of each GPA.
    pub fn get_page_access(&self, view: u16, gpas: &[u64]) -> Result<Vec<u8>> {
        let count = u16::try_from(gpas.len())
            .map_err(|_| ProtoError::InvalidArgument("too many GPAs".into()))?;
        let mut p = sys::v6::GetPageAccess {
            view,
            count,
            padding: 0,
        }
        .as_bytes()
        .to_vec();
        p.extend_from_slice(gpas.as_bytes());
        let data = self.call(sys::v6::KVMI_GET_PAGE_ACCESS, &p)?;
        data.get(..gpas.len())
            .map(<[u8]>::to_vec)
            .ok_or(ProtoError::Truncated {
                what: "GET_PAGE_ACCESS reply",
                need: gpas.len(),
                have: data.len(),
            })
    }

    /// `KVMI_VM_SET_PAGE_WRITE_BITMAP`: `(gpa, bitmap)` pairs (SPP).
    pub fn set_page_write_bitmap(&self, entries: &[(u64, u32)]) -> Result<()> {
        let count = u16::try_from(entries.len())
            .map_err(|_| ProtoError::InvalidArgument("too many bitmap entries".into()))?;
        let mut p = sys::VmSetPageWriteBitmap {
            count,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        for &(gpa, bitmap) in entries {
            p.extend_from_slice(
                sys::PageWriteBitmapEntry {
                    gpa,
                    bitmap,
                    padding: 0,
                }
                .as_bytes(),
            );
        }
        self.call(sys::KVMI_VM_SET_PAGE_WRITE_BITMAP, &p).map(drop)
    }

    /// `KVMI_VM_GET_MAP_TOKEN`.
    pub fn get_map_token(&self) -> Result<sys::MapMemToken> {
        let r: sys::VmGetMapTokenReply =
            self.call_reply("GET_MAP_TOKEN reply", sys::KVMI_VM_GET_MAP_TOKEN, &[])?;
        Ok(r.token)
    }

    /// `KVMI_VM_GET_MAX_GFN`.
    pub fn get_max_gfn(&self) -> Result<u64> {
        let r: sys::VmGetMaxGfnReply =
            self.call_reply("GET_MAX_GFN reply", sys::KVMI_VM_GET_MAX_GFN, &[])?;
        Ok(r.gfn)
    }

    /// `KVMI_VM_CONTROL_SPP` (enable only).
    pub fn control_spp(&self, enable: bool) -> Result<()> {
        self.call_vm(
            sys::KVMI_VM_CONTROL_SPP,
            &sys::VmControlSpp {
                enable: u8::from(enable),
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VM_CONTROL_CMD_RESPONSE` sent on its own (normally used through
    /// [`Batch`](crate::Batch)). With `enable = false, now = true` no reply comes back,
    /// so this only waits when enabling.
    pub fn control_cmd_response(&self, enable: bool, now: bool, flags: u8) -> Result<()> {
        let body = sys::VmControlCmdResponse {
            enable: u8::from(enable),
            now: u8::from(now),
            flags,
            ..Default::default()
        };
        let p = self.send_request(sys::KVMI_VM_CONTROL_CMD_RESPONSE, body.as_bytes())?;
        if !enable && now {
            return Ok(());
        }
        p.wait(self.config.request_timeout).map(drop)
    }

    /// `KVMI_VCPU_SET_VE_INFO`.
    pub fn set_ve_info(&self, vcpu: u16, gpa: u64, trigger_vmexit: bool) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_SET_VE_INFO,
            vcpu,
            &sys::VcpuSetVeInfo {
                gpa,
                trigger_vmexit: u8::from(trigger_vmexit),
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_DISABLE_VE`.
    pub fn disable_ve(&self, vcpu: u16) -> Result<()> {
        self.call(sys::KVMI_VCPU_DISABLE_VE, &vcpu_payload(vcpu, &[]))
            .map(drop)
    }

    /// `KVMI_VM_SET_PAGE_SVE`.
    pub fn set_page_sve(&self, view: u16, gpa: u64, suppress: bool) -> Result<()> {
        self.call_vm(
            sys::KVMI_VM_SET_PAGE_SVE,
            &sys::VmSetPageSve {
                view,
                suppress: u8::from(suppress),
                gpa,
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_GET_NEXT_AVAILABLE_GFN` (libkvmi 2023).
    pub fn get_next_available_gfn(&self) -> Result<u64> {
        let r: sys::GetNextAvailableGfnReply = self.call_reply(
            "GET_NEXT_AVAILABLE_GFN reply",
            sys::KVMI_GET_NEXT_AVAILABLE_GFN,
            &[],
        )?;
        Ok(r.gfn)
    }

    /// `KVMI_VCPU_GET_EPT_VIEW`.
    pub fn get_ept_view(&self, vcpu: u16) -> Result<u16> {
        let r: sys::VcpuGetEptViewReply = self.call_reply(
            "GET_EPT_VIEW reply",
            sys::KVMI_VCPU_GET_EPT_VIEW,
            &vcpu_payload(vcpu, &[]),
        )?;
        Ok(r.view)
    }

    /// `KVMI_VCPU_SET_EPT_VIEW` (switch view).
    pub fn set_ept_view(&self, vcpu: u16, view: u16) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_SET_EPT_VIEW,
            vcpu,
            &sys::VcpuSetEptView {
                view,
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_CONTROL_EPT_VIEW`.
    pub fn control_ept_view(&self, vcpu: u16, view: u16, visible: bool) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_CONTROL_EPT_VIEW,
            vcpu,
            &sys::VcpuControlEptView {
                view,
                visible: u8::from(visible),
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_CREATE_EPT_VIEW` (libkvmi 2023).
    pub fn create_ept_view(&self) -> Result<u16> {
        let r: sys::CreateEptViewReply =
            self.call_reply("CREATE_EPT_VIEW reply", sys::KVMI_CREATE_EPT_VIEW, &[])?;
        Ok(r.view)
    }

    /// `KVMI_DESTROY_EPT_VIEW` (libkvmi 2023).
    pub fn destroy_ept_view(&self, view: u16) -> Result<()> {
        self.call_vm(
            sys::KVMI_DESTROY_EPT_VIEW,
            &sys::DestroyEptView {
                view,
                padding: [0; 3],
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_TRANSLATE_GVA`: `KVMI_UNMAPPED_GPA` if unmapped.
    pub fn translate_gva(&self, vcpu: u16, gva: u64) -> Result<u64> {
        let r: sys::VcpuTranslateGvaReply = self.call_reply(
            "TRANSLATE_GVA reply",
            sys::KVMI_VCPU_TRANSLATE_GVA,
            &vcpu_payload(vcpu, sys::VcpuTranslateGva { gva }.as_bytes()),
        )?;
        Ok(r.gpa)
    }

    /// `KVMI_VCPU_CHANGE_GFN`, 2023 layout (with view).
    pub fn change_gfn(&self, vcpu: u16, view: u16, old_gfn: u64, new_gfn: u64) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_CHANGE_GFN,
            vcpu,
            &sys::VcpuChangeGfn {
                view,
                old_gfn,
                new_gfn,
                ..Default::default()
            },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_CHANGE_GFN`, 2020 kvmi-v7 kernel layout (no view).
    pub fn change_gfn_2020(&self, vcpu: u16, old_gfn: u64, new_gfn: u64) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_CHANGE_GFN,
            vcpu,
            &sys::VcpuChangeGfn2020 { old_gfn, new_gfn },
        )
        .map(drop)
    }

    /// `KVMI_VCPU_ALLOC_GFN` (libkvmi uses vCPU 0).
    pub fn alloc_gfn(&self, vcpu: u16, gfn: u64) -> Result<()> {
        self.call_vcpu(sys::KVMI_VCPU_ALLOC_GFN, vcpu, &sys::VcpuAllocGfn { gfn })
            .map(drop)
    }

    /// `KVMI_VCPU_FREE_GFN`.
    pub fn free_gfn(&self, vcpu: u16, gfn: u64) -> Result<()> {
        self.call_vcpu(sys::KVMI_VCPU_FREE_GFN, vcpu, &sys::VcpuFreeGfn { gfn })
            .map(drop)
    }

    /// `KVMI_QUERY_PHYSICAL` (libkvmi 2023): memory slot holding `gfn`.
    pub fn query_physical(&self, gfn: u64) -> Result<sys::QueryPhysicalReply> {
        self.call_reply(
            "QUERY_PHYSICAL reply",
            sys::KVMI_QUERY_PHYSICAL,
            sys::QueryPhysical { gfn }.as_bytes(),
        )
    }

    /// `KVMI_VCPU_CONTROL_SINGLESTEP`.
    pub fn control_singlestep(&self, vcpu: u16, enable: bool) -> Result<()> {
        self.call_vcpu(
            sys::KVMI_VCPU_CONTROL_SINGLESTEP,
            vcpu,
            &sys::VcpuControlSingleStep {
                enable: u8::from(enable),
                padding: [0; 7],
            },
        )
        .map(drop)
    }
}

fn check_page_range(gpa: u64, size: usize) -> Result<()> {
    let off = (gpa % sys::KVMI_PAGE_SIZE as u64) as usize;
    if size == 0 || size > sys::KVMI_PAGE_SIZE || off + size > sys::KVMI_PAGE_SIZE {
        return Err(ProtoError::InvalidArgument(format!(
            "physical access of {size} bytes at {gpa:#x} must be 1..=4096 bytes within one page"
        )));
    }
    Ok(())
}
