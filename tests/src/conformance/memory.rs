//! Guest memory: reads equal the guest's RAM, writes reach it, and a range beyond RAM is
//! a typed error.

use vmi_core::{Backend, Capability, Error, Gfn, Gpa, VcpuId, VirtualMemory};

use super::{truth_bytes, ConformanceTarget};

/// Reads of a known range — whole, in pieces through `read_physical_many`, the frame
/// around it, and through vCPU 0's page tables — equal the guest's bytes.
pub fn reads_equal_guest_ram<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    assert!(
        caps.is_supported(Capability::ReadPhysicalMemory),
        "every backend reads physical memory: {caps}"
    );
    let (gpa, want) = t.known_bytes();
    let mem = vm.physical_memory();
    let mut got = vec![0u8; want.len()];
    mem.read_physical(gpa, &mut got)
        .unwrap_or_else(|e| panic!("reading the known bytes at {gpa}: {e}"));
    assert_eq!(got, want, "the known bytes at {gpa}");

    // The same range in two pieces through the batched path, and its whole frame.
    let half = want.len() / 2;
    let (mut a, mut b) = (vec![0u8; half], vec![0u8; want.len() - half]);
    mem.read_physical_many(&mut [(gpa, &mut a), (Gpa(gpa.0 + half as u64), &mut b)])
        .expect("read_physical_many");
    assert_eq!([a, b].concat(), want, "read_physical_many");
    let mut frame = [0u8; 4096];
    mem.read_frame(gpa.gfn(), &mut frame).expect("read_frame");
    let frame_truth = truth_bytes(t, Gpa::try_from(gpa.gfn()).unwrap(), 4096);
    let off = gpa.page_offset() as usize;
    let end = (off + want.len()).min(4096);
    assert_eq!(frame[off..end], want[..end - off], "read_frame");
    assert_eq!(
        frame[off..end],
        frame_truth[off..end],
        "read_frame against ground truth"
    );

    // Through the page tables of vCPU 0 (paused: a consistent CR3).
    if caps.is_supported(Capability::ReadControlRegisters) {
        let _paused = vm.vcpu_control().map(|c| c.pause().expect("pause"));
        let (gva, want) = t.known_virtual();
        let mut got = vec![0u8; want.len()];
        (&vm as &dyn Backend)
            .read_va(VcpuId(0), gva, &mut got)
            .unwrap_or_else(|e| panic!("reading {gva} through vCPU 0's page tables: {e}"));
        assert_eq!(got, want, "the known bytes at {gva}");
    }
    t.close(vm);
}

/// A write through the backend is in guest RAM (read without the backend) and reads
/// back; a report without writes has no writer.
pub fn writes_reach_guest_ram<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    let writer = vm.physical_memory_writer();
    assert_eq!(
        writer.is_some(),
        caps.is_supported(Capability::WritePhysicalMemory),
        "the writer is there exactly when the report says writes work: {caps}"
    );
    let Some(writer) = writer else {
        t.close(vm);
        return;
    };
    let at = t.scratch();
    let saved = truth_bytes(t, at, 64);
    let pattern: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    writer
        .write_physical(at, &pattern)
        .expect("writing scratch");
    assert_eq!(truth_bytes(t, at, 64), pattern, "the write is in guest RAM");
    let mut back = [0u8; 64];
    vm.physical_memory().read_physical(at, &mut back).unwrap();
    assert_eq!(back[..], pattern[..], "the write reads back");
    // A write across a page boundary is one write.
    let cross = Gpa((at.0 | 0xfff) - 3);
    if cross.0 + 8 <= t.ram_end().0 {
        let saved_cross = truth_bytes(t, cross, 8);
        writer
            .write_physical(cross, &[0xa5; 8])
            .expect("a write across a page");
        assert_eq!(truth_bytes(t, cross, 8), [0xa5; 8]);
        writer.write_physical(cross, &saved_cross).unwrap();
    }
    writer
        .write_physical(at, &saved)
        .expect("restoring scratch");
    assert_eq!(truth_bytes(t, at, 64), saved);
    t.close(vm);
}

/// Reads (and writes, where they work) at and beyond the end of RAM fail with a typed
/// error, never a panic or a partial buffer; a read ending exactly at the end works.
pub fn beyond_ram_is_a_typed_error<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let end = t.ram_end();
    let mem = vm.physical_memory();
    let mut last = [0u8; 16];
    mem.read_physical(Gpa(end.0 - 16), &mut last)
        .unwrap_or_else(|e| panic!("the last 16 bytes of RAM below {end}: {e}"));
    assert_eq!(last.to_vec(), truth_bytes(t, Gpa(end.0 - 16), 16));
    for (gpa, len) in [
        (end.0, 8usize),
        (end.0 - 4, 8),
        (end.0 + 0x10_0000, 4096),
        (1 << 40, 8),
        (u64::MAX - 3, 8),
    ] {
        let mut buf = vec![0u8; len];
        match mem.read_physical(Gpa(gpa), &mut buf) {
            Err(Error::UnmappedPhysical { .. }) => {}
            other => panic!("read of {gpa:#x}+{len:#x} beyond RAM ({end}): {other:?}"),
        }
    }
    let mut frame = [0u8; 4096];
    assert!(
        matches!(
            mem.read_frame(Gfn(end.0 >> 12), &mut frame),
            Err(Error::UnmappedPhysical { .. })
        ),
        "the frame at the end of RAM"
    );
    if let Some(w) = vm.physical_memory_writer() {
        for gpa in [end.0, end.0 - 4, u64::MAX - 3] {
            match w.write_physical(Gpa(gpa), &[0u8; 8]) {
                Err(Error::UnmappedPhysical { .. }) => {}
                other => panic!("write of {gpa:#x}+8 beyond RAM ({end}): {other:?}"),
            }
        }
        // Nothing of the refused straddling write landed below the end.
        assert_eq!(last.to_vec(), truth_bytes(t, Gpa(end.0 - 16), 16));
    }
    // The layout, where there is one, has no RAM at the end of RAM.
    if let Some(layout) = vm.memory_layout() {
        let info = layout.memory_info().expect("memory_info");
        assert!(
            !info.ranges.iter().any(|r| r.contains(end, 1)),
            "{end} is beyond RAM, yet in the layout {info:x?}"
        );
    }
    // The session still works after the refusals.
    let (gpa, want) = t.known_bytes();
    let mut got = vec![0u8; want.len()];
    mem.read_physical(gpa, &mut got).unwrap();
    assert_eq!(got, want);
    t.close(vm);
}
