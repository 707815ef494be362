//! The conformance suite (`vmi_tests::conformance`) on vmi-legacy (QMP, gdbstub, shared
//! RAM) with the Linux guest (`VMI_GUEST_KERNEL`/`VMI_GUEST_INITRD`, TCG). One guest for
//! the whole file.

use std::sync::OnceLock;

use vmi_tests::conformance::targets::legacy::LegacyTarget;
use vmi_tests::conformance::Suite;

fn suite() -> Option<&'static Suite<LegacyTarget>> {
    static SUITE: OnceLock<Option<Suite<LegacyTarget>>> = OnceLock::new();
    SUITE
        .get_or_init(|| LegacyTarget::linux_or_skip().map(Suite::new))
        .as_ref()
}

vmi_tests::conformance_tests!(suite());
