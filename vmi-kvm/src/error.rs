//! Conversion of protocol-engine errors into `vmi-core` errors.

use std::borrow::Cow;

use kvmi_proto::sys;
use kvmi_proto::ProtoError;
use vmi_core::{Error, Gpa, VcpuId};

/// Converts a protocol error of `command` into a `vmi-core` error. Disconnects and
/// timeouts keep their own variants so callers can tell them apart.
pub(crate) fn proto(command: impl Into<Cow<'static, str>>, e: ProtoError) -> Error {
    proto_at(command, None, None, e)
}

/// [`proto`] with the vCPU and address concerned.
pub(crate) fn proto_at(
    command: impl Into<Cow<'static, str>>,
    vcpu: Option<VcpuId>,
    address: Option<u64>,
    e: ProtoError,
) -> Error {
    let command = command.into();
    match e {
        ProtoError::Disconnected(reason) => Error::Disconnected {
            reason: format!("{command}: {reason}").into(),
        },
        ProtoError::Timeout(after) => Error::Timeout {
            what: command,
            after,
        },
        ProtoError::Kvm { err, .. } if err == -sys::KVM_EPERM => Error::Unsupported {
            feature: command,
            reason: "disallowed by QEMU (its introspection command/event allow list)".into(),
        },
        ProtoError::Kvm { err, .. } if err == -sys::KVM_ENOSYS => Error::Unsupported {
            feature: command,
            reason: "unknown to this KVMi host".into(),
        },
        other => Error::Backend {
            command,
            vcpu,
            address,
            source: Box::new(other),
        },
    }
}

/// A physical access the host refused with `ENOENT` (no backing page) becomes
/// [`Error::UnmappedPhysical`].
pub(crate) fn physical(command: &'static str, gpa: u64, len: usize, e: ProtoError) -> Error {
    match e {
        ProtoError::Kvm { err, .. } if err == -sys::KVM_ENOENT || err == -sys::KVM_EINVAL => {
            Error::UnmappedPhysical {
                gpa: Gpa(gpa),
                len: len as u64,
            }
        }
        other => proto_at(command, None, Some(gpa), other),
    }
}
