//! What a LibVMI user expects, tried against kvmi-sim over a real socket: replying with
//! an edited copy of the event's registers (`VMI_EVENT_RESPONSE_SET_REGISTERS`) and
//! reading one register (`vmi_get_vcpureg`), checked against the simulator's vCPU.

mod common;

use common::*;
use kvmi_proto::sys;
use kvmi_sim::SimEvent;
use vmi_core::event::{RegisterAccess, RegisterFilter};
use vmi_core::registers::msr;
use vmi_core::{
    Error, EventControl, Monitor, ReadRegisters, Register, Response, VcpuControl, VcpuId,
};

fn cr3() -> Monitor {
    Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    }
}

/// Raises a CR3 write on `vcpu`; the handle yields the simulator's view of the reply.
fn cr3_write(sim: &kvmi_sim::Simulator, vcpu: usize) -> kvmi_sim::EventHandle {
    let old = sim.vm().vcpus[vcpu].sregs.cr3;
    sim.trigger(
        vcpu,
        SimEvent::Cr {
            cr: 3,
            old,
            new: old + 0x1000,
        },
    )
    .unwrap()
}

#[test]
fn replying_with_an_edited_copy_of_the_event_registers_sets_rax() {
    let (vm, sim) = v7();
    vm.enable(&cr3()).unwrap();
    let before = sim.vm().vcpus[1].regs;
    let rax0 = sim.vm().vcpus[0].regs.rax;
    let h = cr3_write(&sim, 1);
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(ev.vcpu, VcpuId(1));
    let mut regs = ev.registers.clone();
    assert!(
        regs.control.is_some() && !regs.msrs.is_empty(),
        "a full copy"
    );
    regs.set(Register::Rax, 0x1234_5678).unwrap();
    ev.reply(Response::continue_().with_registers(regs))
        .unwrap();
    h.wait_reply(T).unwrap();
    let after = sim.vm().vcpus[1].regs;
    assert_eq!(after.rax, 0x1234_5678);
    assert_eq!(
        (after.rbx, after.rip, after.rsp),
        (before.rbx, before.rip, before.rsp),
        "the other GPRs are written back unchanged"
    );
    assert_eq!(commands(&sim, sys::KVMI_VCPU_SET_REGISTERS), 1);
    assert_eq!(sim.vm().vcpus[0].regs.rax, rax0, "only the event's vCPU");
}

#[test]
fn an_unchanged_copy_writes_nothing() {
    let (vm, sim) = v7();
    vm.enable(&cr3()).unwrap();
    let h = cr3_write(&sim, 0);
    let ev = vm.wait_event(T).unwrap().unwrap();
    let regs = ev.registers.clone();
    ev.reply(Response::continue_().with_registers(regs))
        .unwrap();
    h.wait_reply(T).unwrap();
    assert_eq!(commands(&sim, sys::KVMI_VCPU_SET_REGISTERS), 0);
}

#[test]
fn a_changed_group_kvmi_cannot_write_is_refused_by_name() {
    let (vm, sim) = v7();
    vm.enable(&cr3()).unwrap();
    let rax = sim.vm().vcpus[0].regs.rax;
    let h = cr3_write(&sim, 0);
    let ev = vm.wait_event(T).unwrap().unwrap();
    let mut regs = ev.registers.clone();
    regs.set(Register::Rax, rax ^ 0xff).unwrap();
    regs.set(Register::Cr4, 0).unwrap();
    let e = ev
        .reply(Response::continue_().with_registers(regs))
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("control registers"), "{e}");
    // Answered with the default all the same, and nothing written.
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.new_val, Some(sim.vm().vcpus[0].sregs.cr3));
    assert_eq!(commands(&sim, sys::KVMI_VCPU_SET_REGISTERS), 0);
    assert_eq!(sim.vm().vcpus[0].regs.rax, rax);
    // An MSR changed in the copy is refused the same way.
    let h = cr3_write(&sim, 0);
    let ev = vm.wait_event(T).unwrap().unwrap();
    let mut regs = ev.registers.clone();
    regs.set(Register::Msr(msr::LSTAR), 0x1000).unwrap();
    let e = ev
        .reply(Response::continue_().with_registers(regs))
        .unwrap_err();
    assert!(e.to_string().contains("MSR"), "{e}");
    h.wait_reply(T).unwrap();
}

#[test]
fn one_register_comes_from_the_parked_vcpu_cache() {
    let (vm, sim) = v7();
    // Running: one GET_REGISTERS, the simulator's value.
    let rip = vm.register(VcpuId(1), Register::Rip).unwrap();
    assert_eq!(rip, sim.vm().vcpus[1].regs.rip);
    assert_eq!(commands(&sim, sys::KVMI_VCPU_GET_REGISTERS), 1);
    // In an event: the event's snapshot, no request.
    vm.enable(&cr3()).unwrap();
    let h = cr3_write(&sim, 1);
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        !ev.registers.is_decoded(),
        "an event's registers are decoded only when read"
    );
    let reads = commands(&sim, sys::KVMI_VCPU_GET_REGISTERS);
    let vcpu = sim.vm().vcpus[1].clone();
    assert_eq!(
        vm.register(VcpuId(1), Register::Rip).unwrap(),
        vcpu.regs.rip
    );
    assert_eq!(
        vm.register(VcpuId(1), Register::Cr3).unwrap(),
        vcpu.sregs.cr3
    );
    assert!(
        !ev.registers.is_decoded(),
        "the parked vCPU's cache decodes its own copy"
    );
    assert_eq!(
        vm.register(VcpuId(1), Register::Msr(msr::LSTAR)).unwrap(),
        ev.registers.get(Register::Msr(msr::LSTAR)).unwrap()
    );
    assert_eq!(
        commands(&sim, sys::KVMI_VCPU_GET_REGISTERS),
        reads,
        "served from the cache"
    );
    let kept = ev.registers.clone();
    ev.reply(Response::continue_()).unwrap();
    h.wait_reply(T).unwrap();
    // What the host reported stays readable after the answer.
    assert_eq!(kept.gprs.unwrap().rip, vcpu.regs.rip);
    assert_eq!(kept.control.unwrap().cr3, vcpu.sregs.cr3);
    // Paused: the PAUSE_VCPU event's snapshot, no request.
    let g = vm.pause().unwrap();
    let reads = commands(&sim, sys::KVMI_VCPU_GET_REGISTERS);
    assert_eq!(
        vm.register(VcpuId(0), Register::Rsp).unwrap(),
        sim.vm().vcpus[0].regs.rsp
    );
    assert_eq!(commands(&sim, sys::KVMI_VCPU_GET_REGISTERS), reads);
    drop(g);
    // Debug registers are not readable over KVMi: the error says so.
    let e = vm.register(VcpuId(0), Register::Dr7).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
}
