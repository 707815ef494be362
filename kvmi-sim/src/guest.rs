//! The default guest: a small but real x86-64 kernel image the simulator's vCPUs run.
//!
//! Every address here is what a tool sees over the wire, so tests and examples can
//! translate, read the banner, set breakpoints and check gla/gfn/offset against these
//! constants. The layout (also in the crate README):
//!
//! Guest-physical memory: [`DEFAULT_RAM_SIZE`] (2 MiB, 512 frames, all backed;
//! `VM_GET_MAX_GFN` reports `0x200`), or any multiple of 2 MiB up to 1 GiB with
//! [`build_memory`]. The first MiB is not used by the guest kernel: tools and tests may
//! scribble there.
//!
//! | PA | what | kernel VA |
//! |---|---|---|
//! | `0x10_0000` | kernel text ([`TEXT_PA`]), the instruction sites `SYM_*` | `0xffff_ffff_8010_0000` |
//! | `0x11_0000` | rodata: [`BANNER`] (NUL-terminated) at [`BANNER_PA`] | [`BANNER_VA`] |
//! | `0x11_8000` | the user process's text page | user VA [`USER_TEXT_VA`] (`0x40_0000`) |
//! | `0x12_0000` | IDT, 256 gates ([`IDT_PA`]) | [`IDT_VA`] |
//! | `0x12_1000` | GDT ([`GDT_PA`]), selectors 0x10 CS, 0x18 DS, 0x40 TSS | [`GDT_VA`] |
//! | `0x12_2000` | TSS ([`TSS_PA`]) | `kva(TSS_PA)` |
//! | `0x12_3000` | `jiffies` counter ([`JIFFIES_PA`]), incremented by [`SYM_TICK`] | [`JIFFIES_VA`] |
//! | `0x13_0000` | kernel page tables, PML4 = [`KERNEL_CR3`] | |
//! | `0x13_8000` | user process page tables, PML4 = [`USER_CR3`] | |
//! | `0x14_0000` | per-CPU areas, 4 KiB each (GS_BASE, direct map) | [`percpu_va`] |
//! | `0x18_0000` | kernel stacks, 8 KiB each (RSP) | [`stack_top_va`] |
//!
//! Symbols: [`SYMBOLS`] (a `System.map`; [`symbol`] looks one up).
//!
//! Virtual mappings (4-level IA-32e paging, CR0.PG|PE, CR4.PAE|PGE, EFER.LME|LMA|NXE|SCE):
//! * identity low map (kernel CR3 only): VA = PA, 4 KiB pages for the first 2 MiB (page
//!   0 is not present, like a kernel's NULL guard), 2 MiB pages above;
//! * kernel map: VA = [`KERNEL_MAP_VA`] + PA (`0xffff_ffff_8000_0000`), 2 MiB pages,
//!   executable ([`kva`]);
//! * direct map: VA = [`DIRECT_MAP_VA`] + PA (`0xffff_8880_0000_0000`), 2 MiB pages, NX
//!   ([`dva`]);
//! * user CR3 ([`USER_CR3`]) shares the kernel and direct maps and maps only
//!   [`USER_TEXT_VA`] → `0x11_8000` below them (a user page, 4 KiB).

use crate::model::{msr, GuestMemory, Vcpu, PAGE_SIZE};
use kvmi_sys::{KvmDtable, KvmRegs, KvmSegment, KvmSregs};

/// Default guest RAM: 2 MiB.
pub const DEFAULT_RAM_SIZE: u64 = 2 << 20;
/// Largest guest RAM [`build_memory`] builds (1 GiB: one page directory of 2 MiB pages).
pub const MAX_RAM_SIZE: u64 = 1 << 30;
/// Base of the kernel (high-half) mapping: VA = `KERNEL_MAP_VA + PA`.
pub const KERNEL_MAP_VA: u64 = 0xffff_ffff_8000_0000;
/// Base of the direct map (Linux's `page_offset_base`): VA = `DIRECT_MAP_VA + PA`.
pub const DIRECT_MAP_VA: u64 = 0xffff_8880_0000_0000;

/// Kernel-map VA of a guest-physical address.
pub const fn kva(pa: u64) -> u64 {
    KERNEL_MAP_VA + pa
}

/// Direct-map VA of a guest-physical address.
pub const fn dva(pa: u64) -> u64 {
    DIRECT_MAP_VA + pa
}

/// Kernel text (PA).
pub const TEXT_PA: u64 = 0x10_0000;
/// Kernel text (VA, Linux's `_text`).
pub const TEXT_VA: u64 = kva(TEXT_PA);
/// Kernel rodata (PA).
pub const RODATA_PA: u64 = 0x11_0000;
/// The banner (PA).
pub const BANNER_PA: u64 = RODATA_PA;
/// The banner (VA, Linux's `linux_banner`).
pub const BANNER_VA: u64 = kva(BANNER_PA);
/// The banner's bytes, NUL included.
pub const BANNER: &[u8] =
    b"Linux version 5.15.0-kvmi-sim (kvmi-sim@localhost) #1 SMP simulated guest\n\0";
/// The user process's text page (PA).
pub const USER_TEXT_PA: u64 = 0x11_8000;
/// The user process's text page (VA, mapped in [`USER_CR3`] only).
pub const USER_TEXT_VA: u64 = 0x40_0000;
/// IDT (PA).
pub const IDT_PA: u64 = 0x12_0000;
/// IDT (VA, IDTR base).
pub const IDT_VA: u64 = kva(IDT_PA);
/// IDTR limit (256 16-byte gates).
pub const IDT_LIMIT: u16 = 0xfff;
/// GDT (PA).
pub const GDT_PA: u64 = 0x12_1000;
/// GDT (VA, GDTR base).
pub const GDT_VA: u64 = kva(GDT_PA);
/// GDTR limit (8 descriptors + the 16-byte TSS descriptor).
pub const GDT_LIMIT: u16 = 0x4f;
/// TSS (PA).
pub const TSS_PA: u64 = 0x12_2000;
/// `jiffies` (PA), a u64 the workload's [`SYM_TICK`] increments.
pub const JIFFIES_PA: u64 = 0x12_3000;
/// `jiffies` (VA).
pub const JIFFIES_VA: u64 = kva(JIFFIES_PA);
/// Kernel page tables' PML4 (CR3 of the kernel / idle address space).
pub const KERNEL_CR3: u64 = 0x13_0000;
/// User process page tables' PML4 (the other CR3 the workload switches to).
pub const USER_CR3: u64 = 0x13_8000;
/// Per-CPU areas (PA), one 4 KiB page per vCPU (vCPUs ≥ 64 share modulo 64).
pub const PERCPU_PA: u64 = 0x14_0000;
/// Kernel stacks (PA), 8 KiB per vCPU (modulo 64).
pub const STACK_PA: u64 = 0x18_0000;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x10;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x18;
/// TSS selector (TR).
pub const TSS_SEL: u16 = 0x40;

/// GS_BASE of `vcpu`: its per-CPU area in the direct map.
pub const fn percpu_va(vcpu: usize) -> u64 {
    dva(PERCPU_PA + (vcpu as u64 % 64) * 0x1000)
}

/// Initial RSP of `vcpu`: top of its kernel stack (kernel map).
pub const fn stack_top_va(vcpu: usize) -> u64 {
    kva(STACK_PA + (vcpu as u64 % 64) * 0x2000 + 0x2000 - 8)
}

/// What an instruction of the guest's code does when the simulator executes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `mov crN, rax`.
    MovCr(u32),
    /// `wrmsr` (ECX, EDX:EAX).
    Wrmsr,
    /// `xsetbv` (ECX = 0, EDX:EAX).
    Xsetbv,
    /// `vmcall`.
    Vmcall,
    /// `cpuid` (EAX, ECX).
    Cpuid,
    /// `sidt/sgdt/sldt/str/lgdt [rdi]`: (KVMI_DESC_*, write).
    Desc(u8, bool),
    /// `mov rax, [rdi]` (8-byte read).
    Load,
    /// `lock or qword [rdi], 0` (write access that changes nothing).
    Touch,
    /// `lock inc qword [rdi]`.
    Inc,
    /// `int3`.
    Int3,
    /// `ret`, `jmp` back to the idle loop, `iretq`, `hlt`, `sysretq`: the next RIP is
    /// [`SYM_IDLE`] (every site is called from the idle loop).
    ToIdle,
    /// Anything without a side effect the simulator models (push, mov, pause, ret…).
    Plain,
}

/// One instruction of the kernel text: VA offset from [`TEXT_VA`], bytes, semantics.
struct Insn {
    off: u64,
    bytes: &'static [u8],
    op: Op,
}

/// Offsets of the instruction sites in the kernel text.
mod off {
    pub(super) const IDLE: u64 = 0x000;
    pub(super) const SWITCH_MM: u64 = 0x040;
    pub(super) const WRITE_CR4: u64 = 0x080;
    pub(super) const WRITE_CR0: u64 = 0x0c0;
    pub(super) const WRMSR: u64 = 0x100;
    pub(super) const XSETBV: u64 = 0x140;
    pub(super) const VMCALL: u64 = 0x180;
    pub(super) const CPUID: u64 = 0x1c0;
    pub(super) const SIDT: u64 = 0x200;
    pub(super) const SGDT: u64 = 0x210;
    pub(super) const SLDT: u64 = 0x220;
    pub(super) const STR: u64 = 0x230;
    pub(super) const LGDT: u64 = 0x240;
    pub(super) const LOAD: u64 = 0x280;
    pub(super) const TOUCH: u64 = 0x2c0;
    pub(super) const TICK: u64 = 0x300;
    pub(super) const BP_TARGET: u64 = 0x400;
    pub(super) const INT3_SELFTEST: u64 = 0x440;
    pub(super) const EXC_DEFAULT: u64 = 0x800;
    pub(super) const EXC_INT3: u64 = 0x840;
    pub(super) const SYSCALL: u64 = 0x880;
}

/// The idle loop (`pause; jmp`): the vCPUs' initial RIP.
pub const SYM_IDLE: u64 = TEXT_VA + off::IDLE;
/// `switch_mm`: `mov cr3, rax` (3 bytes); the workload's CR3 writes.
pub const SYM_SWITCH_MM: u64 = TEXT_VA + off::SWITCH_MM;
/// `native_write_cr4`: `mov cr4, rax` (3 bytes).
pub const SYM_WRITE_CR4: u64 = TEXT_VA + off::WRITE_CR4;
/// `native_write_cr0`: `mov cr0, rax` (3 bytes).
pub const SYM_WRITE_CR0: u64 = TEXT_VA + off::WRITE_CR0;
/// `native_write_msr`: `wrmsr` (2 bytes).
pub const SYM_WRMSR: u64 = TEXT_VA + off::WRMSR;
/// `xsetbv` (3 bytes).
pub const SYM_XSETBV: u64 = TEXT_VA + off::XSETBV;
/// `kvm_hypercall`: `vmcall` (3 bytes).
pub const SYM_VMCALL: u64 = TEXT_VA + off::VMCALL;
/// `native_cpuid`: `cpuid` (2 bytes).
pub const SYM_CPUID: u64 = TEXT_VA + off::CPUID;
/// `store_idt`: `sidt [rdi]` (3 bytes).
pub const SYM_SIDT: u64 = TEXT_VA + off::SIDT;
/// `native_store_gdt`: `sgdt [rdi]` (3 bytes).
pub const SYM_SGDT: u64 = TEXT_VA + off::SGDT;
/// `store_ldt`: `sldt [rdi]` (3 bytes).
pub const SYM_SLDT: u64 = TEXT_VA + off::SLDT;
/// `store_tr`: `str [rdi]` (3 bytes).
pub const SYM_STR: u64 = TEXT_VA + off::STR;
/// `native_load_gdt`: `lgdt [rdi]` (3 bytes).
pub const SYM_LGDT: u64 = TEXT_VA + off::LGDT;
/// `mov rax, [rdi]` (3 bytes): the workload's reads (the banner, restricted pages).
pub const SYM_LOAD: u64 = TEXT_VA + off::LOAD;
/// `lock or qword [rdi], 0` (5 bytes): the workload's writes to restricted pages.
pub const SYM_TOUCH: u64 = TEXT_VA + off::TOUCH;
/// `do_timer`: `lock inc qword [rdi]` (4 bytes) with RDI = [`JIFFIES_VA`].
pub const SYM_TICK: u64 = TEXT_VA + off::TICK;
/// `__x64_sys_getpid`: `push rbp; mov rbp, rsp; pop rbp; ret`. The place for a tool's
/// breakpoint: write 0xCC at [`SYM_BP_TARGET_PA`]; the workload calls it.
pub const SYM_BP_TARGET: u64 = TEXT_VA + off::BP_TARGET;
/// PA of [`SYM_BP_TARGET`] (its first byte is `0x55`, `push rbp`).
pub const SYM_BP_TARGET_PA: u64 = TEXT_PA + off::BP_TARGET;
/// `int3_selftest`: the guest's own `int3; ret` (0xCC really in guest memory).
pub const SYM_INT3_SELFTEST: u64 = TEXT_VA + off::INT3_SELFTEST;
/// PA of [`SYM_INT3_SELFTEST`].
pub const SYM_INT3_SELFTEST_PA: u64 = TEXT_PA + off::INT3_SELFTEST;
/// Default exception handler (`hlt`), the target of every IDT gate but #BP.
pub const SYM_EXC_DEFAULT: u64 = TEXT_VA + off::EXC_DEFAULT;
/// `asm_exc_int3`: the #BP handler (`iretq`), IDT gate 3.
pub const SYM_EXC_INT3: u64 = TEXT_VA + off::EXC_INT3;
/// `entry_SYSCALL_64` (LSTAR): `swapgs; sysretq`.
pub const SYM_ENTRY_SYSCALL: u64 = TEXT_VA + off::SYSCALL;

/// The guest's symbol table (a `System.map`): Linux-like names and their VAs, sorted
/// by address.
pub const SYMBOLS: &[(&str, u64)] = &[
    ("_text", TEXT_VA),
    ("default_idle", SYM_IDLE),
    ("switch_mm", SYM_SWITCH_MM),
    ("native_write_cr4", SYM_WRITE_CR4),
    ("native_write_cr0", SYM_WRITE_CR0),
    ("native_write_msr", SYM_WRMSR),
    ("xsetbv", SYM_XSETBV),
    ("kvm_hypercall", SYM_VMCALL),
    ("native_cpuid", SYM_CPUID),
    ("store_idt", SYM_SIDT),
    ("native_store_gdt", SYM_SGDT),
    ("store_ldt", SYM_SLDT),
    ("store_tr", SYM_STR),
    ("native_load_gdt", SYM_LGDT),
    ("read_word", SYM_LOAD),
    ("touch_word", SYM_TOUCH),
    ("do_timer", SYM_TICK),
    ("__x64_sys_getpid", SYM_BP_TARGET),
    ("int3_selftest", SYM_INT3_SELFTEST),
    ("asm_exc_default", SYM_EXC_DEFAULT),
    ("asm_exc_int3", SYM_EXC_INT3),
    ("entry_SYSCALL_64", SYM_ENTRY_SYSCALL),
    ("linux_banner", BANNER_VA),
    ("idt_table", IDT_VA),
    ("gdt_page", GDT_VA),
    ("cpu_tss_rw", kva(TSS_PA)),
    ("jiffies", JIFFIES_VA),
    ("init_top_pgt", kva(KERNEL_CR3)),
];

/// The VA of a symbol of [`SYMBOLS`].
pub fn symbol(name: &str) -> Option<u64> {
    SYMBOLS.iter().find(|(n, _)| *n == name).map(|(_, va)| *va)
}

/// Every instruction the simulator knows in the kernel text.
#[rustfmt::skip]
const TEXT: &[Insn] = &[
    Insn { off: off::IDLE, bytes: &[0xf3, 0x90], op: Op::Plain },
    Insn { off: off::IDLE + 2, bytes: &[0xeb, 0xfc], op: Op::ToIdle },
    Insn { off: off::SWITCH_MM, bytes: &[0x0f, 0x22, 0xd8], op: Op::MovCr(3) },
    Insn { off: off::SWITCH_MM + 3, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::WRITE_CR4, bytes: &[0x0f, 0x22, 0xe0], op: Op::MovCr(4) },
    Insn { off: off::WRITE_CR4 + 3, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::WRITE_CR0, bytes: &[0x0f, 0x22, 0xc0], op: Op::MovCr(0) },
    Insn { off: off::WRITE_CR0 + 3, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::WRMSR, bytes: &[0x0f, 0x30], op: Op::Wrmsr },
    Insn { off: off::WRMSR + 2, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::XSETBV, bytes: &[0x0f, 0x01, 0xd1], op: Op::Xsetbv },
    Insn { off: off::XSETBV + 3, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::VMCALL, bytes: &[0x0f, 0x01, 0xc1], op: Op::Vmcall },
    Insn { off: off::VMCALL + 3, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::CPUID, bytes: &[0x0f, 0xa2], op: Op::Cpuid },
    Insn { off: off::CPUID + 2, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::SIDT, bytes: &[0x0f, 0x01, 0x0f], op: Op::Desc(kvmi_sys::KVMI_DESC_IDTR, false) },
    Insn { off: off::SGDT, bytes: &[0x0f, 0x01, 0x07], op: Op::Desc(kvmi_sys::KVMI_DESC_GDTR, false) },
    Insn { off: off::SLDT, bytes: &[0x0f, 0x00, 0x07], op: Op::Desc(kvmi_sys::KVMI_DESC_LDTR, false) },
    Insn { off: off::STR, bytes: &[0x0f, 0x00, 0x0f], op: Op::Desc(kvmi_sys::KVMI_DESC_TR, false) },
    Insn { off: off::LGDT, bytes: &[0x0f, 0x01, 0x17], op: Op::Desc(kvmi_sys::KVMI_DESC_GDTR, true) },
    Insn { off: off::LOAD, bytes: &[0x48, 0x8b, 0x07], op: Op::Load },
    Insn { off: off::LOAD + 3, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::TOUCH, bytes: &[0xf0, 0x48, 0x83, 0x0f, 0x00], op: Op::Touch },
    Insn { off: off::TOUCH + 5, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::TICK, bytes: &[0xf0, 0x48, 0xff, 0x07], op: Op::Inc },
    Insn { off: off::TICK + 4, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::BP_TARGET, bytes: &[0x55], op: Op::Plain },
    Insn { off: off::BP_TARGET + 1, bytes: &[0x48, 0x89, 0xe5], op: Op::Plain },
    Insn { off: off::BP_TARGET + 4, bytes: &[0x5d], op: Op::Plain },
    Insn { off: off::BP_TARGET + 5, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::INT3_SELFTEST, bytes: &[0xcc], op: Op::Int3 },
    Insn { off: off::INT3_SELFTEST + 1, bytes: &[0xc3], op: Op::ToIdle },
    Insn { off: off::EXC_DEFAULT, bytes: &[0xf4], op: Op::ToIdle },
    Insn { off: off::EXC_INT3, bytes: &[0x48, 0xcf], op: Op::ToIdle },
    Insn { off: off::SYSCALL, bytes: &[0x0f, 0x01, 0xf8], op: Op::Plain },
    Insn { off: off::SYSCALL + 3, bytes: &[0x48, 0x0f, 0x07], op: Op::ToIdle },
];

/// Length and semantics of the kernel-text instruction at `va`; `None` outside the
/// known instructions (the simulator then steps over one byte).
pub(crate) fn insn_at(va: u64) -> Option<(u8, Op)> {
    let o = va.checked_sub(TEXT_VA)?;
    TEXT.iter()
        .find(|i| i.off == o)
        .map(|i| (i.bytes.len() as u8, i.op))
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const NX: u64 = 1 << 63;

// Page-table pages (PA).
const PDPT_LOW: u64 = KERNEL_CR3 + 0x1000;
const PD_LOW: u64 = KERNEL_CR3 + 0x2000;
const PT_LOW: u64 = KERNEL_CR3 + 0x3000;
const PDPT_DIRECT: u64 = KERNEL_CR3 + 0x4000;
const PD_DIRECT: u64 = KERNEL_CR3 + 0x5000;
const PDPT_KERNEL: u64 = KERNEL_CR3 + 0x6000;
const PD_KERNEL: u64 = KERNEL_CR3 + 0x7000;
const PDPT_USER: u64 = USER_CR3 + 0x1000;
const PD_USER: u64 = USER_CR3 + 0x2000;
const PT_USER: u64 = USER_CR3 + 0x3000;

fn put(m: &mut GuestMemory, table: u64, idx: u64, entry: u64) {
    m.write(table + idx * 8, &entry.to_le_bytes());
}

fn idx(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * (level - 1))) & 0x1ff
}

/// Guest memory of `ram_size` bytes (rounded up to 2 MiB, clamped to 2 MiB..=1 GiB),
/// every frame backed and `max_gfn` one past the last, holding the kernel image, page
/// tables, GDT/IDT and banner described in the [module docs](self).
pub fn build_memory(ram_size: u64) -> GuestMemory {
    let ram = ram_size
        .clamp(DEFAULT_RAM_SIZE, MAX_RAM_SIZE)
        .next_multiple_of(2 << 20);
    let frames = ram / PAGE_SIZE as u64;
    let mut m = GuestMemory::new(frames);
    for gfn in 0..frames {
        m.add_frame(gfn);
    }
    let huge = ram >> 21;
    // Kernel PML4: identity low, direct map, kernel map.
    put(&mut m, KERNEL_CR3, 0, PDPT_LOW | P | RW);
    put(&mut m, PDPT_LOW, 0, PD_LOW | P | RW);
    put(&mut m, PD_LOW, 0, PT_LOW | P | RW);
    for i in 1..512 {
        put(&mut m, PT_LOW, i, (i << 12) | P | RW);
    }
    for j in 1..huge {
        put(&mut m, PD_LOW, j, (j << 21) | P | RW | PS);
    }
    let shared = [
        (idx(DIRECT_MAP_VA, 4), PDPT_DIRECT),
        (idx(KERNEL_MAP_VA, 4), PDPT_KERNEL),
    ];
    for (i, t) in shared {
        put(&mut m, KERNEL_CR3, i, t | P | RW);
        put(&mut m, USER_CR3, i, t | P | RW);
    }
    put(
        &mut m,
        PDPT_DIRECT,
        idx(DIRECT_MAP_VA, 3),
        PD_DIRECT | P | RW,
    );
    put(
        &mut m,
        PDPT_KERNEL,
        idx(KERNEL_MAP_VA, 3),
        PD_KERNEL | P | RW,
    );
    for j in 0..huge {
        put(&mut m, PD_DIRECT, j, (j << 21) | P | RW | PS | G | NX);
        put(&mut m, PD_KERNEL, j, (j << 21) | P | RW | PS | G);
    }
    // User address space: one user text page.
    put(
        &mut m,
        USER_CR3,
        idx(USER_TEXT_VA, 4),
        PDPT_USER | P | RW | US,
    );
    put(
        &mut m,
        PDPT_USER,
        idx(USER_TEXT_VA, 3),
        PD_USER | P | RW | US,
    );
    put(&mut m, PD_USER, idx(USER_TEXT_VA, 2), PT_USER | P | RW | US);
    put(&mut m, PT_USER, idx(USER_TEXT_VA, 1), USER_TEXT_PA | P | US);
    // A user program: `mov eax, 39 (getpid); syscall; jmp $-9`.
    m.write(USER_TEXT_PA, &[0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7]);
    // Kernel text: INT3 padding (like the kernel's), then the instructions.
    m.write(TEXT_PA, &[0xcc; PAGE_SIZE]);
    for i in TEXT {
        m.write(TEXT_PA + i.off, i.bytes);
    }
    m.write(BANNER_PA, BANNER);
    // IDT: interrupt gates to the default handler, #BP (DPL 3) to its own.
    for v in 0..256u64 {
        let (target, ty) = if v == 3 {
            (SYM_EXC_INT3, 0xeeu64)
        } else {
            (SYM_EXC_DEFAULT, 0x8e)
        };
        let lo = (target & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (ty << 40)
            | (((target >> 16) & 0xffff) << 48);
        m.write(IDT_PA + v * 16, &lo.to_le_bytes());
        m.write(IDT_PA + v * 16 + 8, &(target >> 32).to_le_bytes());
    }
    // GDT: Linux's layout.
    let gdt: [u64; 8] = [
        0,
        0x00cf_9b00_0000_ffff, // 0x08 kernel CS32
        0x00af_9b00_0000_ffff, // 0x10 kernel CS64
        0x00cf_9300_0000_ffff, // 0x18 kernel DS
        0x00cf_fb00_0000_ffff, // 0x20 user CS32
        0x00cf_f300_0000_ffff, // 0x28 user DS
        0x00af_fb00_0000_ffff, // 0x30 user CS64
        0,
    ];
    for (i, d) in gdt.iter().enumerate() {
        m.write(GDT_PA + i as u64 * 8, &d.to_le_bytes());
    }
    let tss = kva(TSS_PA);
    let tss_lo = 0x67 | ((tss & 0xff_ffff) << 16) | (0x8bu64 << 40) | (((tss >> 24) & 0xff) << 56);
    m.write(GDT_PA + u64::from(TSS_SEL), &tss_lo.to_le_bytes());
    m.write(GDT_PA + u64::from(TSS_SEL) + 8, &(tss >> 32).to_le_bytes());
    m
}

/// vCPU `index` of the default guest: long mode, kernel CR3, RIP in the idle loop,
/// GDTR/IDTR/TR pointing at the tables above, GS_BASE at its per-CPU area.
pub fn initial_vcpu(index: usize) -> Vcpu {
    let code = KvmSegment {
        selector: KERNEL_CS,
        limit: 0xffff_ffff,
        type_: 11,
        present: 1,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = KvmSegment {
        selector: KERNEL_DS,
        limit: 0xffff_ffff,
        type_: 3,
        present: 1,
        s: 1,
        db: 1,
        g: 1,
        ..Default::default()
    };
    let sregs = KvmSregs {
        cs: code,
        ds: data,
        es: data,
        ss: data,
        fs: data,
        gs: KvmSegment {
            base: percpu_va(index),
            ..data
        },
        tr: KvmSegment {
            base: kva(TSS_PA),
            limit: 0x67,
            selector: TSS_SEL,
            type_: 11,
            present: 1,
            ..Default::default()
        },
        ldt: KvmSegment {
            unusable: 1,
            ..Default::default()
        },
        gdt: KvmDtable {
            base: GDT_VA,
            limit: GDT_LIMIT,
            padding: [0; 3],
        },
        idt: KvmDtable {
            base: IDT_VA,
            limit: IDT_LIMIT,
            padding: [0; 3],
        },
        // PG | AM | WP | NE | ET | MP | PE.
        cr0: 0x8005_0033,
        cr3: KERNEL_CR3,
        // OSXMMEXCPT | OSFXSR | PGE | PAE.
        cr4: 0x0000_06a0,
        // NXE | LMA | LME | SCE.
        efer: 0xd01,
        apic_base: 0xfee0_0900,
        ..Default::default()
    };
    let regs = KvmRegs {
        rip: SYM_IDLE,
        rsp: stack_top_va(index),
        rflags: 0x202,
        ..Default::default()
    };
    let msrs = [
        (msr::SYSENTER_CS, u64::from(KERNEL_CS)),
        (msr::SYSENTER_ESP, 0),
        (msr::SYSENTER_EIP, SYM_EXC_DEFAULT),
        (msr::EFER, 0xd01),
        (msr::STAR, 0x0023_0010_0000_0000),
        (msr::LSTAR, SYM_ENTRY_SYSCALL),
        (msr::CSTAR, SYM_EXC_DEFAULT),
        (msr::PAT, 0x0007_0406_0007_0406),
        (msr::FS_BASE, 0),
        (msr::GS_BASE, percpu_va(index)),
        (msr::KERNEL_GS_BASE, 0),
        (msr::TSC, 0),
        (msr::APIC_BASE, 0xfee0_0900),
    ]
    .into_iter()
    .collect();
    Vcpu::with_state(regs, sregs, msrs)
}
