//! Guest-visible EPT views, #VE and SPP against the simulator: what the host was
//! told, what the tool saw, the capability row, teardown; v6's and featureless
//! hosts' reasons.

mod common;

use common::*;
use vmi_core::{Backend, Capability, Gfn, Gpa, Support, VcpuId, View};

#[test]
fn v7_views_made_visible_and_hidden_and_hidden_again_at_teardown() {
    let (vm, sim) = v7();
    let slat = vm.slat_views().unwrap();
    let view = slat.create_view().unwrap();
    slat.set_view_visible(VcpuId(1), view, true).unwrap();
    assert!(sim.vm().vcpus[1].visible_views.contains(&view.0));
    assert!(sim.vm().vcpus[0].visible_views.is_empty());
    slat.set_view_visible(VcpuId(1), view, false).unwrap();
    assert!(sim.vm().vcpus[1].visible_views.is_empty());
    slat.set_view_visible(VcpuId(0), view, true).unwrap();
    assert!(slat
        .set_view_visible(VcpuId(99), view, true)
        .is_err_and(|e| matches!(e, vmi_core::Error::NoSuchVcpu { .. })));
    vm.close().unwrap();
    assert!(
        sim.vm().vcpus.iter().all(|v| v.visible_views.is_empty()),
        "the teardown hid every view it exposed"
    );
}

#[test]
fn v7_visibility_needs_vmfunc() {
    let (vm, sim) = setup(kvmi_sim::Abi::V7, |c| c.features.vmfunc = false);
    let slat = vm.slat_views().unwrap();
    let view = slat.create_view().unwrap();
    let before = commands(&sim, kvmi_proto::sys::KVMI_VCPU_CONTROL_EPT_VIEW);
    let e = slat.set_view_visible(VcpuId(0), view, true).unwrap_err();
    assert!(matches!(e, vmi_core::Error::Unsupported { .. }), "{e:?}");
    assert_eq!(
        commands(&sim, kvmi_proto::sys::KVMI_VCPU_CONTROL_EPT_VIEW),
        before,
        "refused before anything is sent"
    );
    match vm.capabilities().get(Capability::Slat) {
        Support::Partial(why) => assert!(why.contains("VMFUNC"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn v7_ve_info_page_suppress_bit_and_teardown() {
    let (vm, sim) = v7();
    let ve = vm
        .virtualization_exceptions()
        .expect("the simulator reports #VE");
    ve.enable_ve(VcpuId(1), Gpa(0x7000), true).unwrap();
    assert_eq!(sim.vm().vcpus[1].ve_info, Some((0x7000, true)));
    assert!(ve.enable_ve(VcpuId(0), Gpa(0x7001), false).is_err());
    assert_eq!(sim.vm().vcpus[0].ve_info, None, "unaligned page refused");
    ve.enable_ve(VcpuId(0), Gpa(0x8000), false).unwrap();
    ve.disable_ve(VcpuId(0)).unwrap();
    assert_eq!(sim.vm().vcpus[0].ve_info, None);
    ve.set_suppress_ve(View::DEFAULT, Gfn(0x12), false).unwrap();
    assert_eq!(sim.vm().sve.get(&(0, 0x12)), Some(&false));
    ve.set_suppress_ve(View::DEFAULT, Gfn(0x12), true).unwrap();
    assert_eq!(sim.vm().sve.get(&(0, 0x12)), Some(&true));
    vm.close().unwrap();
    assert_eq!(sim.vm().vcpus[1].ve_info, None, "#VE disabled at teardown");
}

#[test]
fn v7_spp_write_bitmaps_when_the_host_has_spp() {
    let (vm, sim) = setup(kvmi_sim::Abi::V7, |c| c.features.spp = true);
    let spp = vm.sub_page_protection().expect("features.spp");
    // Before CONTROL_SPP the host refuses bitmaps: a typed error, not a panic.
    assert!(spp.set_write_bitmaps(&[(Gfn(3), 1)]).is_err());
    spp.enable_spp().unwrap();
    assert!(sim.vm().spp_enabled);
    let pages: Vec<(Gfn, u32)> = (0..600u64).map(|g| (Gfn(g), g as u32 | 1)).collect();
    let before = commands(&sim, kvmi_proto::sys::KVMI_VM_SET_PAGE_WRITE_BITMAP);
    spp.set_write_bitmaps(&pages).unwrap();
    assert_eq!(
        commands(&sim, kvmi_proto::sys::KVMI_VM_SET_PAGE_WRITE_BITMAP),
        before + 2,
        "600 entries in two messages"
    );
    let g = sim.vm();
    assert_eq!(g.write_bitmaps.len(), 600);
    assert_eq!(g.write_bitmaps.get(&599), Some(&(599 | 1)));
    drop(g);
    assert!(matches!(
        vm.capabilities().get(Capability::Slat),
        Support::Supported
    ));
}

#[test]
fn v7_without_spp_feature_says_why() {
    let (vm, sim) = v7(); // the simulator's default host has no SPP
    assert!(vm.sub_page_protection().is_none());
    let e = vmi_core::SubPageProtection::enable_spp(&vm).unwrap_err();
    assert!(
        matches!(&e, vmi_core::Error::Unsupported { reason, .. } if reason.contains("features.spp")),
        "{e:?}"
    );
    assert_eq!(commands(&sim, kvmi_proto::sys::KVMI_VM_CONTROL_SPP), 0);
    match vm.capabilities().get(Capability::Slat) {
        Support::Partial(why) => assert!(why.contains("SPP needs features.spp"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn v6_has_no_ve_spp_or_visibility_with_the_reason() {
    let (vm, sim) = v6();
    assert!(vm.virtualization_exceptions().is_none());
    assert!(vm.sub_page_protection().is_none());
    let e = vmi_core::VirtualizationExceptions::enable_ve(&vm, VcpuId(0), Gpa(0x7000), false)
        .unwrap_err();
    assert!(
        matches!(&e, vmi_core::Error::Unsupported { reason, .. } if reason.contains("kvmi-v6")),
        "{e:?}"
    );
    assert!(vmi_core::SlatViews::set_view_visible(&vm, VcpuId(0), View(1), true).is_err());
    match vm.capabilities().get(Capability::Slat) {
        Support::Unsupported(why) => assert!(why.contains("kvmi-v6 reports no features"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(commands(&sim, kvmi_proto::sys::KVMI_VCPU_SET_VE_INFO), 0);
}
