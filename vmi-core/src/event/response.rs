//! How to answer an event: [`Response`], one [`Action`] plus optional side effects,
//! and the capability rows each needs.

use crate::addr::View;
use crate::capability::{Capability, CapabilitySet};
use crate::error::{Error, Result};
use crate::registers::{RegisterGroups, RegisterSnapshot};

use super::EventKind;

/// Up to 256 bytes returned to the guest as the data of an emulated read
/// (LibVMI `emul_read_t`, `SET_EMUL_READ_DATA`).
#[derive(Clone, PartialEq, Eq)]
pub struct EmulReadData {
    len: u16,
    data: [u8; Self::MAX],
}

impl EmulReadData {
    /// Maximum length.
    pub const MAX: usize = 256;

    /// Copies `bytes`; fails if longer than [`Self::MAX`].
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > Self::MAX {
            return Err(Error::InvalidArgument {
                what: "emulated read data",
                reason: format!("{} bytes, at most {} allowed", bytes.len(), Self::MAX).into(),
            });
        }
        let mut data = [0u8; Self::MAX];
        data[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u16,
            data,
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for EmulReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmulReadData({:02x?})", self.as_bytes())
    }
}

/// Up to 16 instruction bytes to emulate instead of the ones in guest memory
/// (LibVMI `emul_insn_t`, `SET_EMUL_INSN`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EmulInsn {
    len: u8,
    bytes: [u8; Self::MAX],
}

impl EmulInsn {
    /// Maximum length of an x86 instruction.
    pub const MAX: usize = 16;

    /// Copies `bytes`; fails if empty or longer than [`Self::MAX`].
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > Self::MAX {
            return Err(Error::InvalidArgument {
                what: "emulated instruction",
                reason: format!("{} bytes, 1 to {} allowed", bytes.len(), Self::MAX).into(),
            });
        }
        let mut b = [0u8; Self::MAX];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u8,
            bytes: b,
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for EmulInsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmulInsn({:02x?})", self.as_bytes())
    }
}

/// What the vCPU does with the trapped instruction or access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Let the vCPU go on (LibVMI `RESPONSE_NONE`). For a breakpoint this means the #BP
    /// is *not* delivered to the guest (the tool handled it: KVMi `RETRY`); use
    /// [`Action::Reinject`] to pass it on. For a register write the write happens (with
    /// the value of [`Response::set_value`] if given).
    #[default]
    Continue,
    /// Deliver the trapped interrupt/exception to the guest (LibVMI
    /// `interrupt_event.reinject = 1`).
    Reinject,
    /// Emulate the instruction (LibVMI `RESPONSE_EMULATE`).
    Emulate,
    /// Emulate, discarding its memory writes (LibVMI `RESPONSE_EMULATE_NOWRITE`).
    EmulateNoWrite,
    /// Emulate, returning these bytes for the instruction's memory read (LibVMI
    /// `RESPONSE_SET_EMUL_READ_DATA`).
    EmulateWithReadData(Box<EmulReadData>),
    /// Emulate these instruction bytes instead of the ones in memory (LibVMI
    /// `RESPONSE_SET_EMUL_INSN`).
    EmulateInstruction(EmulInsn),
    /// Refuse the register write; the register keeps its old value (LibVMI
    /// `RESPONSE_DENY`).
    Deny,
    /// Re-execute the instruction without emulation (after the tool changed page access
    /// or memory).
    Retry,
}

/// The answer to an event: one [`Action`] plus optional side effects. Build it with the
/// methods, e.g. `Response::continue_().toggle_singlestep().with_view(View(1))`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// What happens to the trapped instruction.
    pub action: Action,
    /// Flip single-stepping on this vCPU (LibVMI `RESPONSE_TOGGLE_SINGLESTEP`).
    pub toggle_singlestep: bool,
    /// Switch the vCPU to this SLAT view (LibVMI `RESPONSE_SLAT_ID` /
    /// `RESPONSE_VMM_PAGETABLE_ID`).
    pub switch_view: Option<View>,
    /// Write these registers to the vCPU before it resumes (LibVMI
    /// `RESPONSE_SET_REGISTERS`). Only groups present are written.
    pub set_registers: Option<Box<RegisterSnapshot>>,
    /// Report the next interrupt delivered to this vCPU as an
    /// [`EventKind::NextInterrupt`] event (LibVMI `RESPONSE_GET_NEXT_INTERRUPT`).
    pub get_next_interrupt: bool,
    /// For register events: the value the register receives instead of the one the guest
    /// wrote (LibVMI writes `reg_event.value` back on KVM).
    pub set_value: Option<u64>,
}

impl Response {
    /// [`Action::Continue`] with no side effects.
    pub fn continue_() -> Self {
        Self::default()
    }

    /// A response with `action` and no side effects.
    pub fn action(action: Action) -> Self {
        Self {
            action,
            ..Self::default()
        }
    }

    /// [`Action::Reinject`].
    pub fn reinject() -> Self {
        Self::action(Action::Reinject)
    }

    /// [`Action::Deny`].
    pub fn deny() -> Self {
        Self::action(Action::Deny)
    }

    /// Also flip single-stepping on the vCPU.
    pub fn toggle_singlestep(mut self) -> Self {
        self.toggle_singlestep = !self.toggle_singlestep;
        self
    }

    /// Also switch the vCPU to `view`.
    pub fn with_view(mut self, view: View) -> Self {
        self.switch_view = Some(view);
        self
    }

    /// Also write `regs` to the vCPU: a [`RegisterSnapshot`], or the event's own
    /// [`crate::EventRegisters`] (an edited copy writes only what differs from the
    /// event's, see [`crate::PendingEvent::reply`]).
    pub fn with_registers(mut self, regs: impl Into<RegisterSnapshot>) -> Self {
        self.set_registers = Some(Box::new(regs.into()));
        self
    }

    /// Also report the next interrupt.
    pub fn with_next_interrupt(mut self) -> Self {
        self.get_next_interrupt = true;
        self
    }

    /// For register events: the register receives `value` instead.
    pub fn with_value(mut self, value: u64) -> Self {
        self.set_value = Some(value);
        self
    }

    /// The LibVMI response flags this response corresponds to (`VMI_EVENT_RESPONSE_*`
    /// bit values), for comparison with LibVMI-based tools.
    pub fn libvmi_flags(&self) -> u32 {
        let mut f = match self.action {
            Action::Continue | Action::Reinject | Action::Retry => 0,
            Action::Emulate => 1 << 1,
            Action::EmulateNoWrite => 1 << 2,
            Action::EmulateWithReadData(_) => 1 << 3,
            Action::Deny => 1 << 4,
            Action::EmulateInstruction(_) => 1 << 8,
        };
        if self.toggle_singlestep {
            f |= 1 << 5;
        }
        if self.switch_view.is_some() {
            f |= 1 << 6;
        }
        if self.set_registers.is_some() {
            f |= 1 << 7;
        }
        if self.get_next_interrupt {
            f |= 1 << 9;
        }
        f
    }
}

impl Response {
    /// The capability rows answering `event` with this response needs.
    pub fn required_capabilities(&self, event: &EventKind) -> CapabilitySet {
        use Capability as C;
        let mut s = CapabilitySet::new();
        s.insert(match (&self.action, event) {
            (Action::Continue, _) => C::ResponseNone,
            (Action::Reinject, EventKind::Breakpoint { .. }) => C::ResponseBreakpointReinject,
            (Action::Reinject, _) => C::EventInterruptReinject,
            (Action::Emulate, _) => C::ResponseEmulate,
            (Action::EmulateNoWrite, _) => C::ResponseEmulateNowrite,
            (Action::EmulateWithReadData(_), _) => C::ResponseSetEmulReadData,
            (Action::EmulateInstruction(_), _) => C::ResponseSetEmulInsn,
            (Action::Deny, _) => C::ResponseDeny,
            (Action::Retry, _) => C::ResponseRetry,
        });
        if self.toggle_singlestep {
            s.insert(C::ResponseToggleSinglestep);
        }
        if self.switch_view.is_some() {
            s.insert(C::ResponseSlatId);
        }
        if let Some(regs) = &self.set_registers {
            s.insert(C::ResponseSetRegisters);
            s.union_with(register_write_capabilities(regs));
        }
        if self.get_next_interrupt {
            s.insert(C::ResponseGetNextInterrupt);
        }
        if self.set_value.is_some() {
            s.insert(C::ResponseRegisterValueOverride);
        }
        s
    }
}

/// The capability rows writing the groups present in `regs` needs.
pub fn register_write_capabilities(regs: &RegisterSnapshot) -> CapabilitySet {
    use Capability as C;
    let g = regs.groups();
    let mut s = CapabilitySet::new();
    for (group, cap) in [
        (RegisterGroups::GPRS, C::WriteGprs),
        (RegisterGroups::CONTROL, C::WriteControlRegisters),
        (RegisterGroups::DEBUG, C::WriteDebugRegisters),
        (RegisterGroups::SEGMENTS, C::WriteSegmentRegisters),
        (RegisterGroups::EFER, C::WriteMsrs),
        (RegisterGroups::MSRS, C::WriteMsrs),
        (RegisterGroups::XCR0, C::Xsave),
    ] {
        if g.contains(group) {
            s.insert(cap);
        }
    }
    if regs.gdtr.is_some() || regs.idtr.is_some() {
        s.insert(C::WriteDescriptorTables);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_flags_match_libvmi() {
        let r = Response::action(Action::EmulateWithReadData(Box::new(
            EmulReadData::new(&[1, 2, 3]).unwrap(),
        )))
        .toggle_singlestep()
        .with_view(View(2))
        .with_registers(RegisterSnapshot::default())
        .with_next_interrupt();
        assert_eq!(r.libvmi_flags(), 0x8 | 0x20 | 0x40 | 0x80 | 0x200);
        assert_eq!(Response::deny().libvmi_flags(), 0x10);
        assert_eq!(Response::continue_().libvmi_flags(), 0);
        assert!(
            !Response::continue_()
                .toggle_singlestep()
                .toggle_singlestep()
                .toggle_singlestep
        );
    }

    #[test]
    fn bounded_payloads() {
        assert!(EmulReadData::new(&[0; 257]).is_err());
        assert_eq!(EmulReadData::new(&[7; 256]).unwrap().as_bytes().len(), 256);
        assert!(EmulInsn::new(&[]).is_err());
        assert!(EmulInsn::new(&[0x90; 17]).is_err());
        assert_eq!(
            EmulInsn::new(&[0x0f, 0x01, 0xd9]).unwrap().as_bytes(),
            &[0x0f, 0x01, 0xd9]
        );
    }
}
