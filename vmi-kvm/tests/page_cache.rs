//! The opt-in page cache against the simulator: hits only while every vCPU is held
//! by a pause, our own writes and the guest's writes (the workload's `jiffies` tick)
//! seen after they happen.

mod common;

use common::*;
use kvmi_proto::sys;
use kvmi_sim::guest::JIFFIES_PA;
use kvmi_sim::GuestOp;
use vmi_core::{Gpa, PhysicalMemory, PhysicalMemoryWrite, VcpuControl};

fn jiffies(vm: &vmi_kvm::KvmiVm) -> u64 {
    let mut b = [0u8; 8];
    vm.read_physical(Gpa(JIFFIES_PA), &mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn cache_hits_while_paused_and_sees_guest_and_own_writes() {
    let (vm, sim) = v7();
    vm.enable_page_cache(64);
    let reads = || commands(&sim, sys::KVMI_VM_READ_PHYSICAL);

    // Running guest: every read goes to the host.
    let n0 = reads();
    let j0 = jiffies(&vm);
    jiffies(&vm);
    assert_eq!(reads(), n0 + 2, "no caching while vCPUs run");
    assert_eq!(vm.page_cache_stats().frames, 0);

    // Paused: the second read of the frame is a hit.
    let pause = vm.pause().unwrap();
    let n1 = reads();
    assert_eq!(jiffies(&vm), j0);
    assert_eq!(reads(), n1 + 1, "one whole-frame fetch");
    assert_eq!(jiffies(&vm), j0);
    let mut tail = [0u8; 16];
    vm.read_physical(Gpa(JIFFIES_PA + 4088), &mut tail).unwrap();
    assert_eq!(reads(), n1 + 2, "only the next frame is fetched");
    assert!(vm.page_cache_stats().hits >= 2);

    // Our own write is seen at once (the frame is dropped, fetched again).
    vm.write_physical(Gpa(JIFFIES_PA), &(j0 + 100).to_le_bytes())
        .unwrap();
    assert_eq!(jiffies(&vm), j0 + 100);
    assert_eq!(
        sim.vm().memory.read_u64(JIFFIES_PA).unwrap(),
        j0 + 100,
        "the write reached the guest"
    );

    // The guest ticks jiffies once it runs: started now, it waits for the pause.
    std::thread::scope(|s| {
        let tick = s.spawn(|| sim.execute(0, &GuestOp::Tick));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(jiffies(&vm), j0 + 100, "the guest is still paused");
        drop(pause);
        tick.join().unwrap().unwrap();
    });
    assert_eq!(sim.vm().memory.read_u64(JIFFIES_PA).unwrap(), j0 + 101);
    // Paused again: the guest's write is seen (a new hold set empties the cache).
    let _pause = vm.pause().unwrap();
    let n2 = reads();
    assert_eq!(jiffies(&vm), j0 + 101);
    assert_eq!(reads(), n2 + 1, "fetched again after the guest ran");
    assert_eq!(jiffies(&vm), j0 + 101);
    assert_eq!(reads(), n2 + 1);
}

#[test]
fn cache_is_bypassed_while_a_vcpu_runs_and_when_disabled() {
    let (vm, sim) = v7();
    vm.enable_page_cache(64);
    let reads = || commands(&sim, sys::KVMI_VM_READ_PHYSICAL);
    // One vCPU paused, the others run: no caching.
    let one = vm.pause_vcpu(vmi_core::VcpuId(0)).unwrap();
    let n = reads();
    jiffies(&vm);
    jiffies(&vm);
    assert_eq!(reads(), n + 2);
    drop(one);
    // Disabled: a paused guest reads over the socket too.
    vm.enable_page_cache(0);
    let _p = vm.pause().unwrap();
    let n = reads();
    jiffies(&vm);
    jiffies(&vm);
    assert_eq!(reads(), n + 2);
    assert_eq!(vm.page_cache_stats().frames, 0);
}

#[test]
fn cached_reads_of_a_hole_fail_like_uncached_ones() {
    let (vm, _sim) = v7();
    vm.enable_page_cache(64);
    let _p = vm.pause().unwrap();
    let mut b = [0u8; 8];
    let beyond = 0x4000_0000u64; // far past the simulator's backed frames
    let e = vm.read_physical(Gpa(beyond - 4), &mut b).unwrap_err();
    assert!(
        matches!(e, vmi_core::Error::UnmappedPhysical { gpa, len: 8 } if gpa == Gpa(beyond - 4)),
        "{e:?}"
    );
    assert_eq!(vm.page_cache_stats().frames, 0);
}

#[test]
fn cache_is_bypassed_while_the_tool_holds_an_event_during_a_pause() {
    use vmi_core::{EventControl, Monitor, Response};
    let (vm, sim) = v7();
    vm.enable_page_cache(64);
    let reads = || commands(&sim, sys::KVMI_VM_READ_PHYSICAL);
    vm.enable(&Monitor::Cpuid).unwrap();
    let h = sim
        .trigger(
            0,
            kvmi_sim::SimEvent::Cpuid {
                leaf: 0,
                subleaf: 0,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    // vCPU 0 waits in the tool's event (its answer may emulate a write), vCPU 1 is
    // paused: the guest is stopped, but not held by us alone.
    let pause = vm.pause().unwrap();
    let n = reads();
    jiffies(&vm);
    jiffies(&vm);
    assert_eq!(reads(), n + 2, "no caching while a tool event is held");
    assert_eq!(vm.page_cache_stats().frames, 0);
    ev.reply(Response::continue_()).unwrap();
    h.wait_reply(T).unwrap();
    drop(pause);
}
