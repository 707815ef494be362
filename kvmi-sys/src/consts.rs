//! Fixed values of the kvmi-v7 ABI: version, size limits, event actions, page-access
//! bits, descriptor ids, error codes and hypercall numbers.

// ---------------------------------------------------------------------------------------
// Version and counts
// ---------------------------------------------------------------------------------------

/// `KVMI_VERSION`: reported by `GET_VERSION` in every branch (v6, kvmi-v7, v12). It does
/// not identify the ABI; probe instead (see the crate docs).
pub const KVMI_VERSION: u32 = 1;

/// `KVMI_NUM_MESSAGES`: one past the highest kvmi-v7 message id (63).
pub const KVMI_NUM_MESSAGES: usize = 64;

/// `KVMI_NUM_COMMANDS` of the kvmi-v7 kernel (`#define KVMI_NUM_COMMANDS
/// KVMI_NUM_MESSAGES` in `virt/kvm/introspection/kvmi.c`): the bound of its
/// allowed-command bitmap and of the `VM_CHECK_COMMAND` range check.
pub const KVMI_NUM_COMMANDS: usize = KVMI_NUM_MESSAGES;

/// `KVMI_NUM_EVENTS`: one past the highest kvmi-v7 event id; `VM_CHECK_EVENT` answers
/// `-KVM_EINVAL` for ids at or above it.
pub const KVMI_NUM_EVENTS: usize = 14;

/// `KVM_MAX_EPT_VIEWS` of the kvmi-v7 kernel (`arch/x86/include/asm/kvm_host.h` in the
/// KVM-VMI patches, and its selftest): views are 0 (the default) to 2. A larger `view`
/// in a command gives `-KVM_EINVAL`.
pub const KVM_MAX_EPT_VIEWS: u16 = 3;

// ---------------------------------------------------------------------------------------
// Size limits
// ---------------------------------------------------------------------------------------

/// `KVMI_MSG_SIZE`: the largest payload (bytes after the 8-byte header) the kernel
/// accepts, `4096 * 2 - 8` = 8184. A larger `hdr.size` makes the kernel close the
/// socket. (kvmi-v12 reports the same value as `max_msg_size`.)
pub const KVMI_MSG_SIZE: usize = 4096 * 2 - crate::MSG_HDR_SIZE;

/// `KVMI_MSG_SIZE_ALLOC`: header plus [`KVMI_MSG_SIZE`], 8192 — the largest message the
/// tool may send, and the kernel's buffer size.
pub const KVMI_MSG_SIZE_ALLOC: usize = crate::MSG_HDR_SIZE + KVMI_MSG_SIZE;

/// The largest **reply** payload the kernel can send: the 8-byte error code plus up to
/// [`KVMI_MSG_SIZE_ALLOC`] bytes of reply data (the kernel checks reply buffers against
/// 8192, not 8184). Example: `VCPU_GET_REGISTERS` with 482 MSRs has 472 + 16·482 = 8184
/// bytes of data, so an 8192-byte payload. Derived from the kvmi-v7 kernel code
/// (`kvmi_msg_alloc_check`); size receive buffers for this, not for [`KVMI_MSG_SIZE`].
pub const KVMI_MAX_REPLY_PAYLOAD: usize = crate::ERROR_CODE_SIZE + KVMI_MSG_SIZE_ALLOC;

/// Most MSRs one `VCPU_GET_REGISTERS` can ask for: the reply data
/// (`472 + 16 * nmsrs`) must fit in [`KVMI_MSG_SIZE_ALLOC`]; more gives `-KVM_ENOMEM`.
/// (The request itself, `16 + 4 * nmsrs`, is far below [`KVMI_MSG_SIZE`].)
pub const KVMI_GET_REGISTERS_MAX_MSRS: usize = (KVMI_MSG_SIZE_ALLOC
    - core::mem::size_of::<crate::VcpuGetRegistersReply>())
    / core::mem::size_of::<crate::KvmMsrEntry>();

/// Guest page size, the limit of one `VM_READ_PHYSICAL` / `VM_WRITE_PHYSICAL`: `size`
/// must be in `1..=4096` and `gpa..gpa+size` must not cross a page boundary.
pub const KVMI_PAGE_SIZE: usize = 4096;

/// Size of the XSAVE area (`sizeof(struct kvm_xsave)`) returned by `VCPU_GET_XSAVE`;
/// the actual length is `hdr.size - 8` of the reply. `VCPU_SET_XSAVE` takes at most this
/// many bytes after its `VcpuHdr`.
pub const KVM_XSAVE_SIZE: usize = core::mem::size_of::<crate::KvmXsave>();

/// `KVMI_CTX_DATA_SIZE`: capacity of [`EventPfReply::ctx_data`](crate::EventPfReply);
/// a larger `ctx_size` makes the kernel close the socket.
pub const KVMI_CTX_DATA_SIZE: usize = 256;

/// `MAX_PAUSE_REQUESTS` of the kvmi-v7 kernel: `VCPU_PAUSE` answers `-KVM_EBUSY` when
/// more pause requests than this are pending on the vCPU.
pub const KVMI_MAX_PAUSE_REQUESTS: u32 = 1001;

// ---------------------------------------------------------------------------------------
// Event actions (`kvmi_event_reply.action`)
// ---------------------------------------------------------------------------------------

/// Let the guest continue (for CR/MSR: write `new_val`; for PF: emulate; for BREAKPOINT:
/// reinject #BP).
pub const KVMI_EVENT_ACTION_CONTINUE: u8 = 0;
/// Re-enter the guest without finishing the trapped operation (PF, BREAKPOINT,
/// DESCRIPTOR).
pub const KVMI_EVENT_ACTION_RETRY: u8 = 1;
/// Kill the guest (kvmi-v7: SIGTERM to every vCPU thread, i.e. QEMU dies).
pub const KVMI_EVENT_ACTION_CRASH: u8 = 2;

// ---------------------------------------------------------------------------------------
// Page access (`kvmi_page_access_entry.access`, `kvmi_event_pf.access`)
// ---------------------------------------------------------------------------------------

/// Read allowed. The access value is the set of **allowed** accesses; a cleared bit
/// makes that access fault to the tool.
pub const KVMI_PAGE_ACCESS_R: u8 = 1 << 0;
/// Write allowed.
pub const KVMI_PAGE_ACCESS_W: u8 = 1 << 1;
/// Execute allowed.
pub const KVMI_PAGE_ACCESS_X: u8 = 1 << 2;
/// `KVMI_PAGE_SVE` (kvmi-v7): EPT "suppress #VE" bit, used internally and by
/// `VM_SET_PAGE_SVE`; `VM_SET_PAGE_ACCESS` rejects it.
pub const KVMI_PAGE_SVE: u8 = 1 << 3;
/// All of R, W and X: removes the restriction ("forgets" the page). A convenience of this
/// crate, not a kernel name.
pub const KVMI_PAGE_ACCESS_RWX: u8 = KVMI_PAGE_ACCESS_R | KVMI_PAGE_ACCESS_W | KVMI_PAGE_ACCESS_X;

// ---------------------------------------------------------------------------------------
// Descriptor event (`kvmi_event_descriptor.descriptor`)
// ---------------------------------------------------------------------------------------

/// IDTR accessed (LIDT/SIDT).
pub const KVMI_DESC_IDTR: u8 = 1;
/// GDTR accessed (LGDT/SGDT).
pub const KVMI_DESC_GDTR: u8 = 2;
/// LDTR accessed (LLDT/SLDT).
pub const KVMI_DESC_LDTR: u8 = 3;
/// TR accessed (LTR/STR).
pub const KVMI_DESC_TR: u8 = 4;

// ---------------------------------------------------------------------------------------
// Other field values
// ---------------------------------------------------------------------------------------

/// `VM_CONTROL_CMD_RESPONSE.flags` bit 0 (kvmi-v7, only with `enable = 0`): send a
/// `KVMI_EVENT_CMD_ERROR` when a command fails while replies are off. (Name of this
/// crate; the kernel header has no name for the bit.)
pub const KVMI_CMD_RESPONSE_FLAG_CMD_ERROR: u8 = 1 << 0;

/// All-ones guest-virtual address: `kvmi_event_pf.gva` when the linear address is
/// unknown (the kernel's `UNMAPPED_GVA`).
pub const KVMI_UNMAPPED_GVA: u64 = u64::MAX;

/// All-ones guest-physical address: the `VCPU_TRANSLATE_GVA` reply for an unmapped GVA.
pub const KVMI_UNMAPPED_GPA: u64 = u64::MAX;

/// `new_gfn` value reserved by `VCPU_CHANGE_GFN` (`-KVM_EPERM`).
pub const KVMI_CHANGE_GFN_RESERVED: u64 = u64::MAX;

/// Values of `kvmi_event.arch.mode` / `VcpuGetRegistersReply::mode`: the operand size in
/// bytes — 2 (real mode / 16-bit), 4 (32-bit), 8 (64-bit).
pub const KVMI_MODE_16: u8 = 2;
/// 32-bit mode, see [`KVMI_MODE_16`].
pub const KVMI_MODE_32: u8 = 4;
/// 64-bit mode, see [`KVMI_MODE_16`].
pub const KVMI_MODE_64: u8 = 8;

// ---------------------------------------------------------------------------------------
// Hypercall that raises KVMI_EVENT_HYPERCALL
// ---------------------------------------------------------------------------------------

/// `KVM_HC_XEN_HVM_OP`: hypercall number (RAX) of the introspection hypercall.
pub const KVM_HC_XEN_HVM_OP: u64 = 34;
/// `KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT`: sub-function (RDI; EBX on 32-bit guests)
/// that, with RSI (ECX) = 0, raises `KVMI_EVENT_HYPERCALL`.
pub const KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT: u64 = 24;

// ---------------------------------------------------------------------------------------
// Error codes (`include/uapi/linux/kvm_para.h`, as patched for KVMi). Replies carry the
// negated value in `kvmi_error_code.err`.
// ---------------------------------------------------------------------------------------

/// Command or event disallowed by QEMU.
pub const KVM_EPERM: i32 = 1;
/// No such guest page / CPUID leaf; PREUNHOOK without the UNHOOK event enabled.
pub const KVM_ENOENT: i32 = 2;
/// Argument list too long.
pub const KVM_E2BIG: i32 = 7;
/// vCPU not ready to be introspected yet; too many map tokens.
pub const KVM_EAGAIN: i32 = 11;
/// Out of memory (including: reply would exceed [`KVMI_MSG_SIZE_ALLOC`]).
pub const KVM_ENOMEM: i32 = 12;
/// Bad address.
pub const KVM_EFAULT: i32 = 14;
/// Pending injection; too many pause requests; #BP intercept used by userspace.
pub const KVM_EBUSY: i32 = 16;
/// Bad padding, argument or vCPU index.
pub const KVM_EINVAL: i32 = 22;
/// Not supported in this setup (kvmi-v6: also the answer to an unknown command).
pub const KVM_EOPNOTSUPP: i32 = 95;
/// Unknown or unsupported command id (kvmi-v7).
pub const KVM_ENOSYS: i32 = 1000;

/// Every `KVM_E*` code with its name, for diagnostics.
pub const KVM_ERRORS: [(i32, &str); 10] = [
    (KVM_EPERM, "KVM_EPERM"),
    (KVM_ENOENT, "KVM_ENOENT"),
    (KVM_E2BIG, "KVM_E2BIG"),
    (KVM_EAGAIN, "KVM_EAGAIN"),
    (KVM_ENOMEM, "KVM_ENOMEM"),
    (KVM_EFAULT, "KVM_EFAULT"),
    (KVM_EBUSY, "KVM_EBUSY"),
    (KVM_EINVAL, "KVM_EINVAL"),
    (KVM_EOPNOTSUPP, "KVM_EOPNOTSUPP"),
    (KVM_ENOSYS, "KVM_ENOSYS"),
];

const _: () = {
    assert!(KVMI_MSG_SIZE == 8184);
    assert!(KVMI_MSG_SIZE_ALLOC == 8192);
    assert!(KVMI_MAX_REPLY_PAYLOAD == 8200);
    assert!(KVMI_GET_REGISTERS_MAX_MSRS == 482);
    assert!(KVM_XSAVE_SIZE == 4096);
    // The u16 `hdr.size` field can express every payload the kernel sends or accepts.
    assert!(KVMI_MAX_REPLY_PAYLOAD <= u16::MAX as usize);
};
