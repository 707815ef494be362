//! kvmi-v7 message ids (`kvmi_msg_hdr.id`) and event ids (`kvmi_event.event`).
//!
//! Message ids are `u16` (the header field); event ids are `u8` (the `kvmi_event.event`
//! and `kvmi_event_reply.event` fields) and widen losslessly to the `u16` `event_id` /
//! `id` fields of `VM_CONTROL_EVENTS`, `VCPU_CONTROL_EVENTS` and `VM_CHECK_EVENT`.
//!
//! Names are the kvmi-v7 kernel's (`include/uapi/linux/kvmi.h`). The ids added by the
//! 2023 libkvmi (31, 39, 41–44) have no kernel header in the sources; they carry
//! libkvmi's names. The kvmi-v6 names of the same numbers are in [`crate::v6`], the
//! libkvmi `master` names in [`crate::libkvmi`].

// ---------------------------------------------------------------------------------------
// Special message ids
// ---------------------------------------------------------------------------------------

/// Tool → kernel: reply to a vCPU event (payload: `VcpuHdr`, `EventReply`, extra data).
pub const KVMI_EVENT_REPLY: u16 = 0;
/// Kernel → tool: an event (payload: `Event`, then the event-specific struct).
pub const KVMI_EVENT: u16 = 1;

// ---------------------------------------------------------------------------------------
// Commands (VM-scoped ones are handled on the kernel's receive thread, vCPU-scoped ones
// start their payload with a `VcpuHdr` and are queued to that vCPU)
// ---------------------------------------------------------------------------------------

/// Returns the ABI version and (kvmi-v7) the [`Features`](crate::Features). Always allowed.
pub const KVMI_GET_VERSION: u16 = 2;
/// Whether a command id is allowed (0) or not (`-KVM_EPERM`). Always allowed.
pub const KVMI_VM_CHECK_COMMAND: u16 = 3;
/// Whether an event id is allowed (0) or not (`-KVM_EPERM`). Always allowed.
pub const KVMI_VM_CHECK_EVENT: u16 = 4;
/// Online vCPU count (v6 name: `KVMI_GET_GUEST_INFO`).
pub const KVMI_VM_GET_INFO: u16 = 5;
/// vCPU: TSC frequency in Hz (v6 name: `KVMI_GET_VCPU_INFO`).
pub const KVMI_VCPU_GET_INFO: u16 = 6;
/// vCPU: kick the vCPU; one `KVMI_EVENT_PAUSE_VCPU` follows per success (v6:
/// `KVMI_PAUSE_VCPU`). Handled on the receive thread, although vCPU-scoped.
pub const KVMI_VCPU_PAUSE: u16 = 7;
/// Enable/disable a VM event (UNHOOK, CREATE_VCPU, CMD_ERROR).
pub const KVMI_VM_CONTROL_EVENTS: u16 = 8;
/// vCPU: enable/disable a vCPU event.
pub const KVMI_VCPU_CONTROL_EVENTS: u16 = 9;
/// vCPU: enable/disable write interception of CR0, CR3 or CR4.
pub const KVMI_VCPU_CONTROL_CR: u16 = 10;
/// vCPU: enable/disable write interception of one MSR.
pub const KVMI_VCPU_CONTROL_MSR: u16 = 11;
/// vCPU: GPRs, special registers, mode and a list of MSRs.
pub const KVMI_VCPU_GET_REGISTERS: u16 = 13;
/// vCPU: set the GPRs (only while the vCPU waits for an event reply).
pub const KVMI_VCPU_SET_REGISTERS: u16 = 14;
/// vCPU: one CPUID leaf as seen by the guest.
pub const KVMI_VCPU_GET_CPUID: u16 = 15;
/// vCPU: the raw XSAVE area (`kvm_xsave`, 4096 bytes).
pub const KVMI_VCPU_GET_XSAVE: u16 = 16;
/// Read up to one page of guest-physical memory.
pub const KVMI_VM_READ_PHYSICAL: u16 = 17;
/// Write up to one page of guest-physical memory.
pub const KVMI_VM_WRITE_PHYSICAL: u16 = 18;
/// vCPU: inject an exception; a `KVMI_EVENT_TRAP` follows (kvmi-v7).
pub const KVMI_VCPU_INJECT_EXCEPTION: u16 = 19;
/// Set the allowed access bits of guest-physical pages (per EPT view).
pub const KVMI_VM_SET_PAGE_ACCESS: u16 = 21;
/// Token for the remote-mapping (`/dev/kvmmem`) machinery.
pub const KVMI_VM_GET_MAP_TOKEN: u16 = 22;
/// vCPU: MTRR memory type of a guest-physical address.
pub const KVMI_VCPU_GET_MTRR_TYPE: u16 = 23;
/// Enable sub-page write protection (SPP).
pub const KVMI_VM_CONTROL_SPP: u16 = 24;
/// Set SPP write bitmaps (128-byte sub-pages) of guest-physical pages.
pub const KVMI_VM_SET_PAGE_WRITE_BITMAP: u16 = 26;
/// Disable/enable command replies (batching); kvmi-v7 adds `flags`.
pub const KVMI_VM_CONTROL_CMD_RESPONSE: u16 = 27;
/// vCPU: set the #VE info page.
pub const KVMI_VCPU_SET_VE_INFO: u16 = 28;
/// First inaccessible guest frame number (memory size).
pub const KVMI_VM_GET_MAX_GFN: u16 = 29;
/// Set/clear the EPT "suppress #VE" bit of a page (libkvmi: `KVMI_SET_EPT_PAGE_CONV`).
pub const KVMI_VM_SET_PAGE_SVE: u16 = 30;
/// Next free guest frame number (libkvmi 2023 name; earlier libkvmi used 31 for
/// `KVMI_GET_EPT_PAGE_CONV`). Kernel side not found in the sources.
pub const KVMI_GET_NEXT_AVAILABLE_GFN: u16 = 31;
/// vCPU: switch the vCPU to an EPT view (libkvmi: `KVMI_SWITCH_EPT_VIEW`).
pub const KVMI_VCPU_SET_EPT_VIEW: u16 = 32;
/// vCPU: disable #VE.
pub const KVMI_VCPU_DISABLE_VE: u16 = 33;
/// vCPU: the vCPU's current EPT view.
pub const KVMI_VCPU_GET_EPT_VIEW: u16 = 34;
/// vCPU: translate a guest-virtual address with the vCPU's current page tables.
pub const KVMI_VCPU_TRANSLATE_GVA: u16 = 35;
/// vCPU: let the guest VMFUNC into an EPT view without an exit.
pub const KVMI_VCPU_CONTROL_EPT_VIEW: u16 = 36;
/// vCPU: value of an extended control register (XCR0 only).
pub const KVMI_VCPU_GET_XCR: u16 = 37;
/// vCPU: set the raw XSAVE area.
pub const KVMI_VCPU_SET_XSAVE: u16 = 38;
/// Host-side guest memory slot lookup (libkvmi 2023 name). Kernel side not found.
pub const KVMI_QUERY_PHYSICAL: u16 = 39;
/// vCPU: ask QEMU to add a RAM page at a guest frame (libkvmi 2023 name).
pub const KVMI_VCPU_ALLOC_GFN: u16 = 41;
/// vCPU: ask QEMU to remove a page added with `KVMI_VCPU_ALLOC_GFN` (libkvmi 2023 name).
pub const KVMI_VCPU_FREE_GFN: u16 = 42;
/// Create an EPT view (libkvmi 2023 name). Kernel side not found.
pub const KVMI_CREATE_EPT_VIEW: u16 = 43;
/// Destroy an EPT view (libkvmi 2023 name). Kernel side not found.
pub const KVMI_DESTROY_EPT_VIEW: u16 = 44;
/// vCPU: map `old_gfn` to `new_gfn`'s frame (2023: in a given EPT view).
pub const KVMI_VCPU_CHANGE_GFN: u16 = 60;
/// vCPU: enable/disable MTF single-stepping.
pub const KVMI_VCPU_CONTROL_SINGLESTEP: u16 = 63;

/// Every kvmi-v7 command id, in numeric order (excludes `KVMI_EVENT_REPLY` and
/// `KVMI_EVENT`).
pub const KVMI_COMMAND_IDS: [u16; 41] = [
    KVMI_GET_VERSION,
    KVMI_VM_CHECK_COMMAND,
    KVMI_VM_CHECK_EVENT,
    KVMI_VM_GET_INFO,
    KVMI_VCPU_GET_INFO,
    KVMI_VCPU_PAUSE,
    KVMI_VM_CONTROL_EVENTS,
    KVMI_VCPU_CONTROL_EVENTS,
    KVMI_VCPU_CONTROL_CR,
    KVMI_VCPU_CONTROL_MSR,
    KVMI_VCPU_GET_REGISTERS,
    KVMI_VCPU_SET_REGISTERS,
    KVMI_VCPU_GET_CPUID,
    KVMI_VCPU_GET_XSAVE,
    KVMI_VM_READ_PHYSICAL,
    KVMI_VM_WRITE_PHYSICAL,
    KVMI_VCPU_INJECT_EXCEPTION,
    KVMI_VM_SET_PAGE_ACCESS,
    KVMI_VM_GET_MAP_TOKEN,
    KVMI_VCPU_GET_MTRR_TYPE,
    KVMI_VM_CONTROL_SPP,
    KVMI_VM_SET_PAGE_WRITE_BITMAP,
    KVMI_VM_CONTROL_CMD_RESPONSE,
    KVMI_VCPU_SET_VE_INFO,
    KVMI_VM_GET_MAX_GFN,
    KVMI_VM_SET_PAGE_SVE,
    KVMI_GET_NEXT_AVAILABLE_GFN,
    KVMI_VCPU_SET_EPT_VIEW,
    KVMI_VCPU_DISABLE_VE,
    KVMI_VCPU_GET_EPT_VIEW,
    KVMI_VCPU_TRANSLATE_GVA,
    KVMI_VCPU_CONTROL_EPT_VIEW,
    KVMI_VCPU_GET_XCR,
    KVMI_VCPU_SET_XSAVE,
    KVMI_QUERY_PHYSICAL,
    KVMI_VCPU_ALLOC_GFN,
    KVMI_VCPU_FREE_GFN,
    KVMI_CREATE_EPT_VIEW,
    KVMI_DESTROY_EPT_VIEW,
    KVMI_VCPU_CHANGE_GFN,
    KVMI_VCPU_CONTROL_SINGLESTEP,
];

/// Message ids whose payload starts with a `VcpuHdr`: every `KVMI_VCPU_*` command and
/// `KVMI_EVENT_REPLY`, in numeric order. For the 2023 ids without a kernel header this
/// follows libkvmi (ALLOC/FREE/CHANGE_GFN carry a `VcpuHdr`; 31, 39, 43, 44 do not).
pub const KVMI_VCPU_HDR_MESSAGE_IDS: [u16; 24] = [
    KVMI_EVENT_REPLY,
    KVMI_VCPU_GET_INFO,
    KVMI_VCPU_PAUSE,
    KVMI_VCPU_CONTROL_EVENTS,
    KVMI_VCPU_CONTROL_CR,
    KVMI_VCPU_CONTROL_MSR,
    KVMI_VCPU_GET_REGISTERS,
    KVMI_VCPU_SET_REGISTERS,
    KVMI_VCPU_GET_CPUID,
    KVMI_VCPU_GET_XSAVE,
    KVMI_VCPU_INJECT_EXCEPTION,
    KVMI_VCPU_GET_MTRR_TYPE,
    KVMI_VCPU_SET_VE_INFO,
    KVMI_VCPU_SET_EPT_VIEW,
    KVMI_VCPU_DISABLE_VE,
    KVMI_VCPU_GET_EPT_VIEW,
    KVMI_VCPU_TRANSLATE_GVA,
    KVMI_VCPU_CONTROL_EPT_VIEW,
    KVMI_VCPU_GET_XCR,
    KVMI_VCPU_SET_XSAVE,
    KVMI_VCPU_ALLOC_GFN,
    KVMI_VCPU_FREE_GFN,
    KVMI_VCPU_CHANGE_GFN,
    KVMI_VCPU_CONTROL_SINGLESTEP,
];

// ---------------------------------------------------------------------------------------
// Events (`kvmi_event.event`)
// ---------------------------------------------------------------------------------------

/// VM event: QEMU is about to unhook (pause, suspend, migrate, shutdown). Enabled with
/// `VM_CONTROL_EVENTS`. **No reply**: the tool cleans up and closes the socket.
pub const KVMI_EVENT_UNHOOK: u8 = 0;
/// A monitored control register is about to be written (payload `EventCr`, reply
/// `EventCrReply`).
pub const KVMI_EVENT_CR: u8 = 1;
/// A monitored MSR is about to be written (payload `EventMsr`, reply `EventMsrReply`).
pub const KVMI_EVENT_MSR: u8 = 2;
/// XCR0 is about to be written (no payload).
pub const KVMI_EVENT_XSETBV: u8 = 3;
/// The guest hit an INT3 (payload `EventBreakpoint`).
pub const KVMI_EVENT_BREAKPOINT: u8 = 4;
/// The guest made the introspection hypercall (no payload; see
/// [`KVM_HC_XEN_HVM_OP`](crate::KVM_HC_XEN_HVM_OP)).
pub const KVMI_EVENT_HYPERCALL: u8 = 5;
/// An EPT violation on a page restricted with `VM_SET_PAGE_ACCESS` (payload `EventPf`,
/// reply `EventPfReply`).
pub const KVMI_EVENT_PF: u8 = 6;
/// What was actually injected after `VCPU_INJECT_EXCEPTION` (payload `EventTrap`).
pub const KVMI_EVENT_TRAP: u8 = 7;
/// A descriptor-table register was accessed (payload `EventDescriptor`).
pub const KVMI_EVENT_DESCRIPTOR: u8 = 8;
/// A vCPU was created. Enabled with `VM_CONTROL_EVENTS` but sent and replied to as a
/// vCPU event (no payload).
pub const KVMI_EVENT_CREATE_VCPU: u8 = 9;
/// Sent once per successful `VCPU_PAUSE` (no payload; always enabled).
pub const KVMI_EVENT_PAUSE_VCPU: u8 = 10;
/// One instruction was single-stepped (kvmi-v7 payload `EventSingleStep`; v6: none).
pub const KVMI_EVENT_SINGLESTEP: u8 = 11;
/// VM event (kvmi-v7): a command failed while replies were disabled (payload
/// `EventCmdError`). **No reply.**
pub const KVMI_EVENT_CMD_ERROR: u8 = 12;
/// The guest executed CPUID (kvmi-v7, payload `EventCpuid`).
pub const KVMI_EVENT_CPUID: u8 = 13;

/// Every kvmi-v7 event id, in numeric order.
pub const KVMI_EVENT_IDS: [u8; 14] = [
    KVMI_EVENT_UNHOOK,
    KVMI_EVENT_CR,
    KVMI_EVENT_MSR,
    KVMI_EVENT_XSETBV,
    KVMI_EVENT_BREAKPOINT,
    KVMI_EVENT_HYPERCALL,
    KVMI_EVENT_PF,
    KVMI_EVENT_TRAP,
    KVMI_EVENT_DESCRIPTOR,
    KVMI_EVENT_CREATE_VCPU,
    KVMI_EVENT_PAUSE_VCPU,
    KVMI_EVENT_SINGLESTEP,
    KVMI_EVENT_CMD_ERROR,
    KVMI_EVENT_CPUID,
];

/// Events enabled with `VM_CONTROL_EVENTS` rather than `VCPU_CONTROL_EVENTS`.
pub const KVMI_VM_CONTROL_EVENT_IDS: [u8; 3] = [
    KVMI_EVENT_UNHOOK,
    KVMI_EVENT_CREATE_VCPU,
    KVMI_EVENT_CMD_ERROR,
];

/// Events the tool must **not** reply to (`UNHOOK`, `CMD_ERROR`).
pub const KVMI_NO_REPLY_EVENT_IDS: [u8; 2] = [KVMI_EVENT_UNHOOK, KVMI_EVENT_CMD_ERROR];

const _: () = {
    // Command ids are strictly increasing and below KVMI_NUM_MESSAGES.
    let mut i = 1;
    while i < KVMI_COMMAND_IDS.len() {
        assert!(KVMI_COMMAND_IDS[i - 1] < KVMI_COMMAND_IDS[i]);
        i += 1;
    }
    assert!(KVMI_COMMAND_IDS[0] == 2);
    let mut v = 1;
    while v < KVMI_VCPU_HDR_MESSAGE_IDS.len() {
        assert!(KVMI_VCPU_HDR_MESSAGE_IDS[v - 1] < KVMI_VCPU_HDR_MESSAGE_IDS[v]);
        v += 1;
    }
    assert!((KVMI_COMMAND_IDS[KVMI_COMMAND_IDS.len() - 1] as usize) < crate::KVMI_NUM_MESSAGES);
    // Event ids are exactly 0..KVMI_NUM_EVENTS.
    let mut e = 0;
    while e < KVMI_EVENT_IDS.len() {
        assert!(KVMI_EVENT_IDS[e] as usize == e);
        e += 1;
    }
    assert!(KVMI_EVENT_IDS.len() == crate::KVMI_NUM_EVENTS);
};

// ---------------------------------------------------------------------------------------
// Names (for messages and summaries)
// ---------------------------------------------------------------------------------------

/// The kvmi-v7 C name of message id `id` (a command, `KVMI_EVENT` or
/// `KVMI_EVENT_REPLY`), e.g. `17` → `"KVMI_VM_READ_PHYSICAL"`; `None` for an id kvmi-v7
/// does not define (the v6-only ids 12, 20 and 25 have names in
/// [`v6::command_name`](crate::v6::command_name)).
pub const fn command_name(id: u16) -> Option<&'static str> {
    Some(match id {
        KVMI_EVENT_REPLY => "KVMI_EVENT_REPLY",
        KVMI_EVENT => "KVMI_EVENT",
        KVMI_GET_VERSION => "KVMI_GET_VERSION",
        KVMI_VM_CHECK_COMMAND => "KVMI_VM_CHECK_COMMAND",
        KVMI_VM_CHECK_EVENT => "KVMI_VM_CHECK_EVENT",
        KVMI_VM_GET_INFO => "KVMI_VM_GET_INFO",
        KVMI_VCPU_GET_INFO => "KVMI_VCPU_GET_INFO",
        KVMI_VCPU_PAUSE => "KVMI_VCPU_PAUSE",
        KVMI_VM_CONTROL_EVENTS => "KVMI_VM_CONTROL_EVENTS",
        KVMI_VCPU_CONTROL_EVENTS => "KVMI_VCPU_CONTROL_EVENTS",
        KVMI_VCPU_CONTROL_CR => "KVMI_VCPU_CONTROL_CR",
        KVMI_VCPU_CONTROL_MSR => "KVMI_VCPU_CONTROL_MSR",
        KVMI_VCPU_GET_REGISTERS => "KVMI_VCPU_GET_REGISTERS",
        KVMI_VCPU_SET_REGISTERS => "KVMI_VCPU_SET_REGISTERS",
        KVMI_VCPU_GET_CPUID => "KVMI_VCPU_GET_CPUID",
        KVMI_VCPU_GET_XSAVE => "KVMI_VCPU_GET_XSAVE",
        KVMI_VM_READ_PHYSICAL => "KVMI_VM_READ_PHYSICAL",
        KVMI_VM_WRITE_PHYSICAL => "KVMI_VM_WRITE_PHYSICAL",
        KVMI_VCPU_INJECT_EXCEPTION => "KVMI_VCPU_INJECT_EXCEPTION",
        KVMI_VM_SET_PAGE_ACCESS => "KVMI_VM_SET_PAGE_ACCESS",
        KVMI_VM_GET_MAP_TOKEN => "KVMI_VM_GET_MAP_TOKEN",
        KVMI_VCPU_GET_MTRR_TYPE => "KVMI_VCPU_GET_MTRR_TYPE",
        KVMI_VM_CONTROL_SPP => "KVMI_VM_CONTROL_SPP",
        KVMI_VM_SET_PAGE_WRITE_BITMAP => "KVMI_VM_SET_PAGE_WRITE_BITMAP",
        KVMI_VM_CONTROL_CMD_RESPONSE => "KVMI_VM_CONTROL_CMD_RESPONSE",
        KVMI_VCPU_SET_VE_INFO => "KVMI_VCPU_SET_VE_INFO",
        KVMI_VM_GET_MAX_GFN => "KVMI_VM_GET_MAX_GFN",
        KVMI_VM_SET_PAGE_SVE => "KVMI_VM_SET_PAGE_SVE",
        KVMI_GET_NEXT_AVAILABLE_GFN => "KVMI_GET_NEXT_AVAILABLE_GFN",
        KVMI_VCPU_SET_EPT_VIEW => "KVMI_VCPU_SET_EPT_VIEW",
        KVMI_VCPU_DISABLE_VE => "KVMI_VCPU_DISABLE_VE",
        KVMI_VCPU_GET_EPT_VIEW => "KVMI_VCPU_GET_EPT_VIEW",
        KVMI_VCPU_TRANSLATE_GVA => "KVMI_VCPU_TRANSLATE_GVA",
        KVMI_VCPU_CONTROL_EPT_VIEW => "KVMI_VCPU_CONTROL_EPT_VIEW",
        KVMI_VCPU_GET_XCR => "KVMI_VCPU_GET_XCR",
        KVMI_VCPU_SET_XSAVE => "KVMI_VCPU_SET_XSAVE",
        KVMI_QUERY_PHYSICAL => "KVMI_QUERY_PHYSICAL",
        KVMI_VCPU_ALLOC_GFN => "KVMI_VCPU_ALLOC_GFN",
        KVMI_VCPU_FREE_GFN => "KVMI_VCPU_FREE_GFN",
        KVMI_CREATE_EPT_VIEW => "KVMI_CREATE_EPT_VIEW",
        KVMI_DESTROY_EPT_VIEW => "KVMI_DESTROY_EPT_VIEW",
        KVMI_VCPU_CHANGE_GFN => "KVMI_VCPU_CHANGE_GFN",
        KVMI_VCPU_CONTROL_SINGLESTEP => "KVMI_VCPU_CONTROL_SINGLESTEP",
        _ => return None,
    })
}

/// The kvmi-v7 C name of event id `id`, e.g. `6` → `"KVMI_EVENT_PF"`; `None` for an
/// unknown id. kvmi-v6 uses the same names for its ids 0–11.
pub const fn event_name(id: u8) -> Option<&'static str> {
    Some(match id {
        KVMI_EVENT_UNHOOK => "KVMI_EVENT_UNHOOK",
        KVMI_EVENT_CR => "KVMI_EVENT_CR",
        KVMI_EVENT_MSR => "KVMI_EVENT_MSR",
        KVMI_EVENT_XSETBV => "KVMI_EVENT_XSETBV",
        KVMI_EVENT_BREAKPOINT => "KVMI_EVENT_BREAKPOINT",
        KVMI_EVENT_HYPERCALL => "KVMI_EVENT_HYPERCALL",
        KVMI_EVENT_PF => "KVMI_EVENT_PF",
        KVMI_EVENT_TRAP => "KVMI_EVENT_TRAP",
        KVMI_EVENT_DESCRIPTOR => "KVMI_EVENT_DESCRIPTOR",
        KVMI_EVENT_CREATE_VCPU => "KVMI_EVENT_CREATE_VCPU",
        KVMI_EVENT_PAUSE_VCPU => "KVMI_EVENT_PAUSE_VCPU",
        KVMI_EVENT_SINGLESTEP => "KVMI_EVENT_SINGLESTEP",
        KVMI_EVENT_CMD_ERROR => "KVMI_EVENT_CMD_ERROR",
        KVMI_EVENT_CPUID => "KVMI_EVENT_CPUID",
        _ => return None,
    })
}
