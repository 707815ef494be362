//! Byte-compatible copies of the x86 KVM structs embedded in KVMi messages
//! (`<asm/kvm.h>`): `kvm_regs`, `kvm_segment`, `kvm_dtable`, `kvm_sregs`,
//! `kvm_msr_entry`, the fixed head of `kvm_msrs`, and `kvm_xsave`.
//!
//! Why copies and not `kvm-bindings` types: see the crate docs. On `x86_64` every struct
//! converts losslessly to and from its `kvm_bindings` counterpart with `From`, and
//! compile-time checks pin sizes, alignments and field offsets to `kvm-bindings`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct kvm_regs` (144 bytes): general-purpose registers, RIP and RFLAGS.
#[doc(alias = "kvm_regs")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmRegs {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}
layout!(KvmRegs, 144;
    rax @ 0, rbx @ 8, rcx @ 16, rdx @ 24, rsi @ 32, rdi @ 40, rsp @ 48, rbp @ 56,
    r8 @ 64, r9 @ 72, r10 @ 80, r11 @ 88, r12 @ 96, r13 @ 104, r14 @ 112, r15 @ 120,
    rip @ 128, rflags @ 136,
);

/// `struct kvm_segment` (24 bytes): a segment register with its hidden part.
#[doc(alias = "kvm_segment")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmSegment {
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Segment type (C name `type`).
    pub type_: u8,
    /// Present bit.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (D/B) bit.
    pub db: u8,
    /// Descriptor type (S) bit.
    pub s: u8,
    /// 64-bit code segment (L) bit.
    pub l: u8,
    /// Granularity bit.
    pub g: u8,
    /// Available-for-software bit.
    pub avl: u8,
    /// VMX "unusable" flag.
    pub unusable: u8,
    /// Zero.
    pub padding: u8,
}
layout!(KvmSegment, 24;
    base @ 0, limit @ 8, selector @ 12, type_ @ 14, present @ 15, dpl @ 16, db @ 17,
    s @ 18, l @ 19, g @ 20, avl @ 21, unusable @ 22, padding @ 23,
);

/// `struct kvm_dtable` (16 bytes): GDTR or IDTR.
#[doc(alias = "kvm_dtable")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmDtable {
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u16,
    /// Zero.
    pub padding: [u16; 3],
}
layout!(KvmDtable, 16; base @ 0, limit @ 8, padding @ 10);

/// `struct kvm_sregs` (312 bytes): segment registers, descriptor tables, control
/// registers, EFER, APIC base and the pending-interrupt bitmap.
#[doc(alias = "kvm_sregs")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmSregs {
    /// CS.
    pub cs: KvmSegment,
    /// DS.
    pub ds: KvmSegment,
    /// ES.
    pub es: KvmSegment,
    /// FS.
    pub fs: KvmSegment,
    /// GS.
    pub gs: KvmSegment,
    /// SS.
    pub ss: KvmSegment,
    /// Task register.
    pub tr: KvmSegment,
    /// LDT register.
    pub ldt: KvmSegment,
    /// GDTR.
    pub gdt: KvmDtable,
    /// IDTR.
    pub idt: KvmDtable,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (TPR).
    pub cr8: u64,
    /// EFER MSR.
    pub efer: u64,
    /// IA32_APIC_BASE MSR.
    pub apic_base: u64,
    /// Pending external interrupt bitmap (256 bits).
    pub interrupt_bitmap: [u64; 4],
}
layout!(KvmSregs, 312;
    cs @ 0, ds @ 24, es @ 48, fs @ 72, gs @ 96, ss @ 120, tr @ 144, ldt @ 168,
    gdt @ 192, idt @ 208, cr0 @ 224, cr2 @ 232, cr3 @ 240, cr4 @ 248, cr8 @ 256,
    efer @ 264, apic_base @ 272, interrupt_bitmap @ 280,
);

/// `struct kvm_msr_entry` (16 bytes): one MSR index/value pair.
#[doc(alias = "kvm_msr_entry")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmMsrEntry {
    /// MSR number.
    pub index: u32,
    /// Zero.
    pub reserved: u32,
    /// MSR value.
    pub data: u64,
}
layout!(KvmMsrEntry, 16; index @ 0, reserved @ 4, data @ 8);

/// Fixed head of `struct kvm_msrs` (8 bytes); `nmsrs` × [`KvmMsrEntry`] follow it on the
/// wire (the C struct's flexible `entries[]` array). Aligned to 8 like the C struct,
/// whose `entries[]` member has 8-byte alignment.
#[doc(alias = "kvm_msrs")]
#[repr(C, align(8))]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmMsrs {
    /// Number of entries that follow.
    pub nmsrs: u32,
    /// Zero.
    pub pad: u32,
}
layout!(KvmMsrs, 8; nmsrs @ 0, pad @ 4);

/// `struct kvm_xsave` (4096 bytes): the raw XSAVE area, the reply data of
/// `VCPU_GET_XSAVE` and the request data of `VCPU_SET_XSAVE` (after the `VcpuHdr`).
///
/// The kernel sends `sizeof(struct kvm_xsave)` bytes but documents that the size may
/// change: take the length from the reply's `hdr.size` and do not assume 4096 when
/// parsing (a shorter area can be zero-extended into this struct).
#[doc(alias = "kvm_xsave")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct KvmXsave {
    /// The XSAVE area as 32-bit words (legacy region, XSAVE header, extended state).
    pub region: [u32; 1024],
}
layout!(KvmXsave, 4096; region @ 0);

zeroed_default!(KvmXsave);

#[cfg(target_arch = "x86_64")]
mod bindings {
    //! Conversions to/from `kvm-bindings` and checks that the layouts are identical.

    use super::{KvmDtable, KvmMsrEntry, KvmMsrs, KvmRegs, KvmSegment, KvmSregs, KvmXsave};
    use core::mem::{align_of, offset_of, size_of};
    use kvm_bindings::{
        kvm_dtable, kvm_msr_entry, kvm_msrs, kvm_regs, kvm_segment, kvm_sregs, kvm_xsave,
    };

    /// Asserts equal size, alignment and field offsets of our copy and the binding.
    macro_rules! same_layout {
        ($ours:ty, $theirs:ty; $($f:ident),* $(,)?) => {
            const _: () = {
                assert!(size_of::<$ours>() == size_of::<$theirs>());
                assert!(align_of::<$ours>() == align_of::<$theirs>());
                $( assert!(offset_of!($ours, $f) == offset_of!($theirs, $f)); )*
            };
        };
    }

    /// Field-by-field `From` in both directions (same field names on both sides).
    macro_rules! convert {
        ($ours:ident, $theirs:ident; $($f:ident),* $(,)?) => {
            impl From<$theirs> for $ours {
                fn from(v: $theirs) -> Self {
                    Self { $($f: v.$f.into()),* }
                }
            }
            impl From<$ours> for $theirs {
                fn from(v: $ours) -> Self {
                    Self { $($f: v.$f.into()),* }
                }
            }
        };
    }

    same_layout!(KvmRegs, kvm_regs;
        rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15,
        rip, rflags);
    convert!(KvmRegs, kvm_regs;
        rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15,
        rip, rflags);

    same_layout!(KvmSegment, kvm_segment;
        base, limit, selector, type_, present, dpl, db, s, l, g, avl, unusable, padding);
    convert!(KvmSegment, kvm_segment;
        base, limit, selector, type_, present, dpl, db, s, l, g, avl, unusable, padding);

    same_layout!(KvmDtable, kvm_dtable; base, limit, padding);
    convert!(KvmDtable, kvm_dtable; base, limit, padding);

    same_layout!(KvmSregs, kvm_sregs;
        cs, ds, es, fs, gs, ss, tr, ldt, gdt, idt, cr0, cr2, cr3, cr4, cr8, efer,
        apic_base, interrupt_bitmap);
    convert!(KvmSregs, kvm_sregs;
        cs, ds, es, fs, gs, ss, tr, ldt, gdt, idt, cr0, cr2, cr3, cr4, cr8, efer,
        apic_base, interrupt_bitmap);

    same_layout!(KvmMsrEntry, kvm_msr_entry; index, reserved, data);
    convert!(KvmMsrEntry, kvm_msr_entry; index, reserved, data);

    // `kvm_msrs` ends with a zero-sized flexible-array field; only its head is compared.
    same_layout!(KvmMsrs, kvm_msrs; nmsrs, pad);

    // `kvm_xsave` ends with a zero-sized flexible-array field after its 4096-byte region.
    same_layout!(KvmXsave, kvm_xsave; region);

    impl From<&kvm_xsave> for KvmXsave {
        fn from(v: &kvm_xsave) -> Self {
            Self { region: v.region }
        }
    }

    impl From<KvmXsave> for kvm_xsave {
        fn from(v: KvmXsave) -> Self {
            kvm_xsave {
                region: v.region,
                ..Default::default()
            }
        }
    }

    impl From<&kvm_msrs> for KvmMsrs {
        fn from(v: &kvm_msrs) -> Self {
            Self {
                nmsrs: v.nmsrs,
                pad: v.pad,
            }
        }
    }
}
