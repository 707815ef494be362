//! Typed requests: the protocol half of a command, without I/O.
//!
//! A [`Request<T>`] is one encoded command (id and payload) together with the decoder
//! of its reply data into `T`. Building one does no I/O; it is sent by
//! [`Connection::send`](crate::Connection::send) (one `write`, returning a [`Pending<T>`]
//! reply handle), by [`Connection::send_all`](crate::Connection::send_all) (many in one
//! `write`), by [`Connection::pipeline`](crate::Connection::pipeline) (windowed, any
//! number), or queued into a [`Batch`](crate::Batch) with event replies (requests whose
//! reply carries no data, `Request<()>`). The typed methods of
//! [`Connection`](crate::Connection) ([`crate::commands`]) are `send` + `wait` of these.
//! This is the protocol/transport split of gdbstub's design: what a command is, and how
//! its reply is read, is separate from when and how it goes on the wire.

use crate::codec::{read_reply, Abi};
use crate::connection::PendingReply;
use crate::error::{ProtoError, Result};
use kvmi_sys as sys;
use std::time::Duration;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Registers returned by `GET_REGISTERS` ([`Request::get_registers`]).
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

/// Decodes the reply data (after the error code) of one command.
/// `ctx` is what the request recorded for it (e.g. the size asked for).
type Decoder<T> = fn(ctx: u64, data: Vec<u8>) -> Result<T>;

/// One encoded command and the decoder of its reply; see the module docs.
#[must_use = "a request does nothing until it is sent"]
pub struct Request<T = ()> {
    id: u16,
    payload: Vec<u8>,
    ctx: u64,
    decode: Decoder<T>,
}

impl<T> std::fmt::Debug for Request<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("command", &self.name())
            .field("len", &self.payload.len())
            .finish()
    }
}

impl<T> Clone for Request<T> {
    fn clone(&self) -> Self {
        Request {
            id: self.id,
            payload: self.payload.clone(),
            ctx: self.ctx,
            decode: self.decode,
        }
    }
}

impl<T> Request<T> {
    /// The command id (`KVMI_*`).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The command's name (`"KVMI_VM_READ_PHYSICAL"`), for error messages.
    pub fn name(&self) -> &'static str {
        command_name(self.id)
    }

    /// The encoded payload (vCPU header included for vCPU commands).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes reply data (what follows the error code) as this command's reply.
    pub fn decode(&self, data: Vec<u8>) -> Result<T> {
        (self.decode)(self.ctx, data)
    }

    /// The reply handle for this request sent as `reply`.
    pub(crate) fn pending(&self, reply: PendingReply) -> Pending<T> {
        Pending {
            reply,
            ctx: self.ctx,
            decode: self.decode,
        }
    }

    /// The same command with its reply data ignored (for a [`Batch`](crate::Batch), or
    /// a pipeline of mixed commands).
    pub fn ignore_reply(self) -> Request<()> {
        Request {
            id: self.id,
            payload: self.payload,
            ctx: 0,
            decode: no_data,
        }
    }
}

/// A typed reply not yet received; see [`Connection::send`](crate::Connection::send).
/// Dropping it gives up the wait.
#[must_use = "a pending reply must be waited for"]
pub struct Pending<T> {
    reply: PendingReply,
    ctx: u64,
    decode: Decoder<T>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("seq", &self.reply.seq())
            .finish()
    }
}

impl<T> Pending<T> {
    /// Sequence number of the request.
    pub fn seq(&self) -> u32 {
        self.reply.seq()
    }

    /// Waits up to `timeout` for the reply and decodes it; [`ProtoError::Kvm`] for a
    /// non-zero error code.
    pub fn wait(self, timeout: Duration) -> Result<T> {
        let data = self.reply.wait(timeout)?;
        (self.decode)(self.ctx, data)
    }
}

/// The name of command `id`, v6-only ids included.
pub fn command_name(id: u16) -> &'static str {
    sys::command_name(id)
        .or(sys::v6::command_name(id))
        .unwrap_or("KVMi command")
}

fn no_data(_: u64, _: Vec<u8>) -> Result<()> {
    Ok(())
}

fn raw_data(_: u64, data: Vec<u8>) -> Result<Vec<u8>> {
    Ok(data)
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

fn check_page_range(gpa: u64, size: usize) -> Result<()> {
    let off = (gpa % sys::KVMI_PAGE_SIZE as u64) as usize;
    if size == 0 || size > sys::KVMI_PAGE_SIZE || off + size > sys::KVMI_PAGE_SIZE {
        return Err(ProtoError::InvalidArgument(format!(
            "physical access of {size} bytes at {gpa:#x} must be 1..=4096 bytes within one page"
        )));
    }
    Ok(())
}

macro_rules! reply_of {
    ($what:literal, $ty:ty => $out_ty:ty, |$r:ident| $out:expr) => {{
        fn decode(_: u64, data: Vec<u8>) -> Result<$out_ty> {
            let $r: $ty = read_reply($what, &data)?;
            Ok($out)
        }
        decode
    }};
}

impl Request<()> {
    /// A command from its raw parts whose reply data is ignored.
    pub fn raw(id: u16, payload: Vec<u8>) -> Request<()> {
        Request {
            id,
            payload,
            ctx: 0,
            decode: no_data,
        }
    }

    /// A command from its raw parts; the reply data is returned as is.
    pub fn raw_with_data(id: u16, payload: Vec<u8>) -> Request<Vec<u8>> {
        Request {
            id,
            payload,
            ctx: 0,
            decode: raw_data,
        }
    }

    fn vm<B: IntoBytes + Immutable>(id: u16, body: &B) -> Request<()> {
        Request::raw(id, body.as_bytes().to_vec())
    }

    fn vcpu<B: IntoBytes + Immutable>(id: u16, vcpu: u16, body: &B) -> Request<()> {
        Request::raw(id, vcpu_payload(vcpu, body.as_bytes()))
    }

    /// `KVMI_GET_VERSION`: version and (v7) features; `None` features for a v6 reply.
    pub fn get_version() -> Request<(u32, Option<sys::Features>)> {
        fn decode(_: u64, data: Vec<u8>) -> Result<(u32, Option<sys::Features>)> {
            if data.len() >= core::mem::size_of::<sys::GetVersionReply>() {
                let r: sys::GetVersionReply = read_reply("GET_VERSION reply", &data)?;
                Ok((r.version, Some(r.features)))
            } else {
                let r: sys::v6::GetVersionReply = read_reply("GET_VERSION reply", &data)?;
                Ok((r.version, None))
            }
        }
        Request {
            id: sys::KVMI_GET_VERSION,
            payload: Vec::new(),
            ctx: 0,
            decode,
        }
    }

    /// `KVMI_VM_CHECK_COMMAND` (`Err(Kvm)` if not allowed).
    pub fn check_command(id: u16) -> Request<()> {
        Request::vm(
            sys::KVMI_VM_CHECK_COMMAND,
            &sys::VmCheckCommand {
                id,
                ..Default::default()
            },
        )
    }

    /// `KVMI_VM_CHECK_EVENT` (`Err(Kvm)` if not allowed).
    pub fn check_event(id: u8) -> Request<()> {
        Request::vm(
            sys::KVMI_VM_CHECK_EVENT,
            &sys::VmCheckEvent {
                id: id.into(),
                ..Default::default()
            },
        )
    }

    /// `KVMI_VM_GET_INFO`: number of online vCPUs.
    pub fn get_guest_info() -> Request<u32> {
        Request {
            id: sys::KVMI_VM_GET_INFO,
            payload: Vec::new(),
            ctx: 0,
            decode: reply_of!("VM_GET_INFO reply", sys::VmGetInfoReply => u32, |r| r.vcpu_count),
        }
    }

    /// `KVMI_VCPU_GET_INFO`: TSC frequency in Hz (0 without TSC scaling).
    pub fn get_vcpu_info(vcpu: u16) -> Request<u64> {
        Request {
            id: sys::KVMI_VCPU_GET_INFO,
            payload: vcpu_payload(vcpu, &[]),
            ctx: 0,
            decode: reply_of!("VCPU_GET_INFO reply", sys::VcpuGetInfoReply => u64, |r| r
                .tsc_speed),
        }
    }

    /// `KVMI_VCPU_PAUSE` (one PAUSE_VCPU event follows per success).
    pub fn pause_vcpu(vcpu: u16, wait: bool) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_PAUSE,
            vcpu,
            &sys::VcpuPause {
                wait: u8::from(wait),
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_CONTROL_EVENTS`: enable/disable a vCPU event.
    pub fn control_events(vcpu: u16, event: u8, enable: bool) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_CONTROL_EVENTS,
            vcpu,
            &sys::VcpuControlEvents {
                event_id: event.into(),
                enable: u8::from(enable),
                ..Default::default()
            },
        )
    }

    /// `KVMI_VM_CONTROL_EVENTS`: enable/disable a VM event (UNHOOK, CREATE_VCPU,
    /// CMD_ERROR).
    pub fn control_vm_events(event: u8, enable: bool) -> Request<()> {
        Request::vm(
            sys::KVMI_VM_CONTROL_EVENTS,
            &sys::VmControlEvents {
                event_id: event.into(),
                enable: u8::from(enable),
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_CONTROL_CR`: intercept writes to CR0/3/4.
    pub fn control_cr(vcpu: u16, cr: u32, enable: bool) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_CONTROL_CR,
            vcpu,
            &sys::VcpuControlCr {
                enable: u8::from(enable),
                cr,
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_CONTROL_MSR`: intercept writes to an MSR.
    pub fn control_msr(vcpu: u16, msr: u32, enable: bool) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_CONTROL_MSR,
            vcpu,
            &sys::VcpuControlMsr {
                enable: u8::from(enable),
                msr,
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_CONTROL_SINGLESTEP`.
    pub fn control_singlestep(vcpu: u16, enable: bool) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_CONTROL_SINGLESTEP,
            vcpu,
            &sys::VcpuControlSingleStep {
                enable: u8::from(enable),
                padding: [0; 7],
            },
        )
    }

    /// `KVMI_VCPU_GET_REGISTERS` with the given MSR indices (≤ 482).
    pub fn get_registers(vcpu: u16, msrs: &[u32]) -> Result<Request<Registers>> {
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
        Ok(Request {
            id: sys::KVMI_VCPU_GET_REGISTERS,
            payload: vcpu_payload(vcpu, &body),
            ctx: msrs.len() as u64,
            decode: decode_registers,
        })
    }

    /// `KVMI_VCPU_SET_REGISTERS` (only while the vCPU waits for an event reply).
    pub fn set_registers(vcpu: u16, regs: &sys::KvmRegs) -> Request<()> {
        Request::vcpu(sys::KVMI_VCPU_SET_REGISTERS, vcpu, regs)
    }

    /// `KVMI_VCPU_GET_CPUID`.
    pub fn get_cpuid(vcpu: u16, function: u32, index: u32) -> Request<sys::VcpuGetCpuidReply> {
        Request {
            id: sys::KVMI_VCPU_GET_CPUID,
            payload: vcpu_payload(vcpu, sys::VcpuGetCpuid { function, index }.as_bytes()),
            ctx: 0,
            decode: reply_of!("GET_CPUID reply", sys::VcpuGetCpuidReply => sys::VcpuGetCpuidReply, |r| r),
        }
    }

    /// `KVMI_VCPU_GET_XSAVE`: the raw XSAVE area (length as sent, ≤ 8192).
    pub fn get_xsave(vcpu: u16) -> Request<Vec<u8>> {
        Request::raw_with_data(sys::KVMI_VCPU_GET_XSAVE, vcpu_payload(vcpu, &[]))
    }

    /// `KVMI_VCPU_SET_XSAVE` (≤ 4096 bytes).
    pub fn set_xsave(vcpu: u16, area: &[u8]) -> Result<Request<()>> {
        if area.len() > sys::KVM_XSAVE_SIZE {
            return Err(ProtoError::InvalidArgument(
                "XSAVE area larger than 4096 bytes".into(),
            ));
        }
        Ok(Request::raw(
            sys::KVMI_VCPU_SET_XSAVE,
            vcpu_payload(vcpu, area),
        ))
    }

    /// `KVMI_VCPU_GET_XCR` (only XCR0).
    pub fn get_xcr(vcpu: u16, xcr: u8) -> Request<u64> {
        Request {
            id: sys::KVMI_VCPU_GET_XCR,
            payload: vcpu_payload(
                vcpu,
                sys::VcpuGetXcr {
                    xcr,
                    padding: [0; 7],
                }
                .as_bytes(),
            ),
            ctx: 0,
            decode: reply_of!("GET_XCR reply", sys::VcpuGetXcrReply => u64, |r| r.value),
        }
    }

    /// `KVMI_VCPU_GET_MTRR_TYPE`.
    pub fn get_mtrr_type(vcpu: u16, gpa: u64) -> Request<u8> {
        Request {
            id: sys::KVMI_VCPU_GET_MTRR_TYPE,
            payload: vcpu_payload(vcpu, sys::VcpuGetMtrrType { gpa }.as_bytes()),
            ctx: 0,
            decode: reply_of!("GET_MTRR_TYPE reply", sys::VcpuGetMtrrTypeReply => u8, |r| r
                .type_),
        }
    }

    /// `KVMI_VCPU_INJECT_EXCEPTION` in the layout of `abi` (a TRAP event follows on
    /// v7). On v6 `has_error` is set when `error_code` is non-zero.
    pub fn inject_exception(
        abi: Abi,
        vcpu: u16,
        vector: u8,
        error_code: u32,
        address: u64,
    ) -> Request<()> {
        let body = if abi == Abi::V6 {
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
        Request::raw(sys::KVMI_VCPU_INJECT_EXCEPTION, vcpu_payload(vcpu, &body))
    }

    /// `KVMI_VM_READ_PHYSICAL`: `size` in 1..=4096, not crossing a page. The reply is
    /// exactly `size` bytes.
    pub fn read_physical(gpa: u64, size: usize) -> Result<Request<Vec<u8>>> {
        check_page_range(gpa, size)?;
        fn decode(size: u64, mut data: Vec<u8>) -> Result<Vec<u8>> {
            let size = size as usize;
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
        Ok(Request {
            id: sys::KVMI_VM_READ_PHYSICAL,
            payload: sys::VmReadPhysical {
                gpa,
                size: size as u64,
            }
            .as_bytes()
            .to_vec(),
            ctx: size as u64,
            decode,
        })
    }

    /// `KVMI_VM_WRITE_PHYSICAL`: 1..=4096 bytes, not crossing a page.
    pub fn write_physical(gpa: u64, data: &[u8]) -> Result<Request<()>> {
        check_page_range(gpa, data.len())?;
        let head = sys::VmWritePhysical {
            gpa,
            size: data.len() as u64,
        };
        let mut p = Vec::with_capacity(16 + data.len());
        p.extend_from_slice(head.as_bytes());
        p.extend_from_slice(data);
        Ok(Request::raw(sys::KVMI_VM_WRITE_PHYSICAL, p))
    }

    /// `KVMI_VM_SET_PAGE_ACCESS`: `(gpa, allowed-access bits)` pairs in `view`.
    pub fn set_page_access(view: u16, entries: &[(u64, u8)]) -> Result<Request<()>> {
        Ok(Request::raw(
            sys::KVMI_VM_SET_PAGE_ACCESS,
            page_access_payload(view, entries)?,
        ))
    }

    /// `KVMI_GET_PAGE_ACCESS` (kvmi-v6 only): the reply holds one access byte per GPA
    /// (see [`Connection::get_page_access`](crate::Connection::get_page_access)).
    pub fn get_page_access(view: u16, gpas: &[u64]) -> Result<Request<Vec<u8>>> {
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
        fn decode(n: u64, data: Vec<u8>) -> Result<Vec<u8>> {
            let n = n as usize;
            data.get(..n)
                .map(<[u8]>::to_vec)
                .ok_or(ProtoError::Truncated {
                    what: "GET_PAGE_ACCESS reply",
                    need: n,
                    have: data.len(),
                })
        }
        Ok(Request {
            id: sys::v6::KVMI_GET_PAGE_ACCESS,
            payload: p,
            ctx: gpas.len() as u64,
            decode,
        })
    }

    /// `KVMI_VM_SET_PAGE_WRITE_BITMAP`: `(gpa, bitmap)` pairs (SPP).
    pub fn set_page_write_bitmap(entries: &[(u64, u32)]) -> Result<Request<()>> {
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
        Ok(Request::raw(sys::KVMI_VM_SET_PAGE_WRITE_BITMAP, p))
    }
}

fn decode_registers(asked: u64, data: Vec<u8>) -> Result<Registers> {
    let (r, tail) =
        sys::VcpuGetRegistersReply::read_from_prefix(&data).map_err(|_| ProtoError::Truncated {
            what: "GET_REGISTERS reply",
            need: core::mem::size_of::<sys::VcpuGetRegistersReply>(),
            have: data.len(),
        })?;
    let n = r.msrs.nmsrs as usize;
    if n as u64 != asked {
        return Err(ProtoError::Malformed(format!(
            "GET_REGISTERS returned {n} MSRs, {asked} requested"
        )));
    }
    let sz = core::mem::size_of::<sys::KvmMsrEntry>();
    if tail.len() < n * sz {
        return Err(ProtoError::Truncated {
            what: "GET_REGISTERS MSR entries",
            need: n * sz,
            have: tail.len(),
        });
    }
    // Element by element: the tail need not be aligned for `KvmMsrEntry`.
    let msrs = tail
        .chunks_exact(sz)
        .take(n)
        .filter_map(|c| sys::KvmMsrEntry::read_from_bytes(c).ok())
        .collect();
    Ok(Registers {
        mode: r.mode,
        regs: r.regs,
        sregs: r.sregs,
        msrs,
    })
}

// Memory-mapping, SLAT (EPT views, #VE, SPP) and alternate-gfn commands: one concern
// of their own, after `reply_of!` so the macro is in scope there.
mod slat;
