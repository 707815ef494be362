//! The conformance suite (`vmi_tests::conformance`) on vmi-legacy (QMP, gdbstub,
//! shared RAM) with the purpose-built test guest under TCG. One guest for the whole file.

use std::sync::OnceLock;

use vmi_tests::conformance::targets::legacy::LegacyTarget;
use vmi_tests::conformance::Suite;
use vmi_tests::Accel;

fn suite() -> Option<&'static Suite<LegacyTarget>> {
    static SUITE: OnceLock<Option<Suite<LegacyTarget>>> = OnceLock::new();
    SUITE
        .get_or_init(|| LegacyTarget::test_guest_or_skip(Some(Accel::Tcg)).map(Suite::new))
        .as_ref()
}

vmi_tests::conformance_tests!(suite());
