use vmi_core::{VcpuControl, VcpuId};
use vmi_legacy::{LegacyConfig, LegacyQemu, RamSource};
use vmi_tests::{Guest, GuestOptions};
#[test]
fn debug_sid() {
    let guest = Guest::launch(GuestOptions::for_matrix_kernel("sid")).unwrap();
    let m = guest.wait_ready().unwrap();
    eprintln!("_text marker {:x?}", m.kallsyms("_text"));
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.ram = RamSource::File(guest.ram_path().to_path_buf());
    let vm = LegacyQemu::connect(cfg).unwrap();
    let _p = vm.pause().unwrap();
    let f = vmi_linux::kernel_map::vcpu_facts(&vm, VcpuId(0)).unwrap();
    eprintln!("{f:x?}");
    let runs = vmi_linux::kernel_map::mapped_runs(&vm, f.kernel, 0xffff_8000_0000_0000, u64::MAX, 100000).unwrap();
    let mut last = 0;
    for r in &runs { if r.va >> 30 != last { eprintln!("{:x?}", r); last = r.va >> 30; } }
}
