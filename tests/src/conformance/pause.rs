//! Pausing: a pause stops the guest, guards nest across handles and the last one
//! resumes; per-vCPU pausing works or is refused as the report says.

use vmi_core::{Backend, Capability, Error, VcpuId};

use super::{assert_still, vcpus_of, wait_progress, ConformanceTarget};

/// The guest's counter stands still from the first guard to the last and moves again
/// after it; `is_paused` says so at each step; a failed or refused per-vCPU pause leaves
/// the guest running.
pub fn stops_the_guest_and_guards_nest<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    let vcpus = vm.vcpu_control();
    assert_eq!(
        vcpus.is_some(),
        caps.is_supported(Capability::PauseResume),
        "vCPU control exactly when the report says pause works: {caps}"
    );
    let vcpus = vcpus_of(&vm);
    assert!(!vcpus.is_paused(), "a new session pauses nothing");
    let from = t.progress();
    wait_progress(t, from, "a new session");

    let outer = vcpus.pause().expect("pause");
    assert!(vcpus.is_paused());
    let at = assert_still(t, "one guard");
    {
        let inner = vcpus.pause().expect("nested pause");
        assert!(vcpus.is_paused());
        drop(inner);
    }
    assert!(vcpus.is_paused(), "the outer guard still holds");
    assert_eq!(assert_still(t, "the inner guard dropped"), at);
    outer.resume().expect("the last guard resumes");
    assert!(!vcpus.is_paused());
    wait_progress(t, at, "after the last guard");

    // Three guards released out of order.
    let a = vcpus.pause().unwrap();
    let b = vcpus.pause().unwrap();
    let c = vcpus.pause().unwrap();
    drop(b);
    drop(a);
    let at = assert_still(t, "one of three guards left");
    drop(c);
    wait_progress(t, at, "after three guards");

    // One vCPU: works where the report says so, refused otherwise.
    if caps.is_supported(Capability::PauseVcpu) {
        let g = vcpus.pause_vcpu(VcpuId(0)).expect("pause_vcpu");
        assert!(
            !vcpus.is_paused(),
            "a vCPU pause is not a pause of the guest"
        );
        drop(g);
    } else {
        match vcpus.pause_vcpu(VcpuId(0)) {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("pause_vcpu with the row unsupported: {other:?}"),
        }
    }
    let from = t.progress();
    wait_progress(t, from, "after the vCPU pause");
    t.close(vm);
}
