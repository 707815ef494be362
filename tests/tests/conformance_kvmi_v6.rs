//! The conformance suite (`vmi_tests::conformance`) on vmi-kvm over kvmi-sim speaking
//! kvmi-v6, through a real UNIX socket. No QEMU needed.

use std::sync::OnceLock;

use vmi_tests::conformance::targets::kvmi_sim::KvmiSimTarget;
use vmi_tests::conformance::Suite;

fn suite() -> Option<&'static Suite<KvmiSimTarget>> {
    static SUITE: OnceLock<Suite<KvmiSimTarget>> = OnceLock::new();
    Some(SUITE.get_or_init(|| Suite::new(KvmiSimTarget::new(kvmi_sim::Abi::V6))))
}

vmi_tests::conformance_tests!(suite());
