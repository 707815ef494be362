//! Response and monitor policy: which [`Response`]s and [`Monitor`]s QEMU's gdbstub can
//! honour, and why not when it cannot.

use vmi_core::{Action, Error, Monitor, Response, Result};

use super::events::StopEvent;
use super::gpacket::check_writable;

pub(super) fn check(ev: &StopEvent, r: &Response) -> Result<()> {
    match &r.action {
        Action::Continue => {}
        Action::Reinject if matches!(ev, StopEvent::Breakpoint { .. }) => {
            return Err(Error::unsupported(
                "breakpoint reinjection",
                "gdbstub breakpoints are not guest INT3s: under TCG there is no #BP to \
                 deliver, and QEMU's gdbstub cannot inject exceptions",
            ))
        }
        other => {
            return Err(Error::unsupported(
                format!("response action {other:?}"),
                "QEMU's gdbstub can only continue (no emulation, deny, retry or reinjection)",
            ))
        }
    }
    if r.switch_view.is_some() {
        return Err(Error::unsupported(
            "view switching",
            "unpatched QEMU has no SLAT views",
        ));
    }
    if r.get_next_interrupt {
        return Err(Error::unsupported(
            "next-interrupt reporting",
            "QEMU's gdbstub does not report interrupt delivery",
        ));
    }
    if r.set_value.is_some() {
        return Err(Error::unsupported(
            "register value override",
            "register events do not exist through the gdbstub",
        ));
    }
    if let Some(regs) = &r.set_registers {
        check_writable(regs)?;
    }
    Ok(())
}

pub(super) fn unsupported_monitor_reason(m: &Monitor) -> &'static str {
    match m {
        Monitor::ControlRegister { .. } => "QEMU's gdbstub has no CR-write trap",
        Monitor::Msr { .. } | Monitor::AllMsrs { .. } => "QEMU's gdbstub has no MSR trap",
        Monitor::Interrupt(_) => {
            "QEMU's gdbstub reports only its own breakpoints, not guest interrupts"
        }
        Monitor::Xsetbv | Monitor::Cpuid | Monitor::Hypercall | Monitor::Descriptor => {
            "QEMU's gdbstub has no instruction traps (KVMi only)"
        }
        Monitor::DebugException => "guest #DB exceptions are not reported by the gdbstub",
        Monitor::Trap | Monitor::VcpuCreate => "KVMi only",
        _ => "not available through QEMU's gdbstub",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmi_core::{RegisterSnapshot, VcpuId};

    #[test]
    fn responses_checked() {
        let bp = StopEvent::Breakpoint {
            vcpu: VcpuId(0),
            rip: 1,
        };
        assert!(check(&bp, &Response::continue_()).is_ok());
        assert!(check(&bp, &Response::continue_().toggle_singlestep()).is_ok());
        assert!(matches!(
            check(&bp, &Response::reinject()),
            Err(Error::Unsupported { .. })
        ));
        assert!(check(&bp, &Response::deny()).is_err());
        let regs = RegisterSnapshot {
            gdtr: Some(Default::default()),
            ..Default::default()
        };
        assert!(check(&bp, &Response::continue_().with_registers(regs)).is_err());
    }
}
