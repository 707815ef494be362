//! Finding the kernel from a vCPU: its page tables, its image and the banner.
//!
//! - **Kernel page tables.** A vCPU's CR3 with the PCID bits (11:0), the no-flush bit (63)
//!   and bit 12 masked. Under KPTI (`pti=on`) a vCPU running user code has CR3 pointing at
//!   the *user* PGD, which the kernel allocates as the odd 4 KiB half of an 8 KiB pair
//!   whose even half is the kernel PGD; clearing bit 12 selects the kernel PGD, so a vCPU
//!   paused in user mode still gives the kernel's address space (LibVMI #897).
//! - **Image.** The kernel image is mapped in `[KERNEL_MAP_START, MODULES_VADDR)`
//!   (0xffffffff80000000 + 1 GiB); after boot `cleanup_highmap` unmaps everything below
//!   `_text` and above `_end`, so the first mapped 2 MiB slot is `_text` (LibVMI's
//!   technique), and the image is copied once by walking the page tables of that range
//!   (holes where init memory was freed stay absent).
//! - **Cross-checks.** The IDT's divide-error gate and LSTAR (`entry_SYSCALL_64`, when it
//!   points into kernel text — on ~4.15–4.18 PTI kernels it points at a trampoline) must
//!   land inside the image.

use vmi_core::registers::msr;
use vmi_core::{
    AddressSpace, Gpa, Gva, PagingMode, PhysicalMemory, ReadRegisters, RegisterGroups, VcpuId,
};

use crate::error::{Error, Result};
use crate::image::{ImageCopy, KERNEL_MAP_START, PAGE};

/// End of the kernel image mapping (`MODULES_VADDR` with KASLR's 1 GiB image area).
pub const KERNEL_MAP_END: u64 = 0xffff_ffff_c000_0000;

/// CR3 bits that are not part of the table address: PCID (11:0), the KPTI user-PGD
/// selector (12), and everything above MAXPHYADDR 52 (including the no-flush bit 63).
const CR3_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000 & !(1 << 12);

/// The page-table root of the kernel's address space for a CR3 value (see the module docs).
pub fn kernel_cr3(cr3: u64) -> Gpa {
    Gpa(cr3 & CR3_ADDRESS_MASK)
}

/// The roots to try for a CR3 value: with bit 12 cleared (the kernel PGD of a KPTI pair),
/// then, when bit 12 was set, as it is — a kernel built without page-table isolation
/// allocates single-page PGDs, so bit 12 may be a plain address bit there.
pub fn kernel_cr3_candidates(cr3: u64) -> Vec<Gpa> {
    let masked = kernel_cr3(cr3);
    let plain = Gpa(cr3 & 0x000f_ffff_ffff_f000);
    if plain == masked {
        vec![masked]
    } else {
        vec![masked, plain]
    }
}

/// What a vCPU told us about the kernel.
#[derive(Debug, Clone)]
pub struct VcpuFacts {
    /// The vCPU read.
    pub vcpu: VcpuId,
    /// Its CR3 as read (unmasked).
    pub cr3: u64,
    /// The kernel address spaces its CR3 may stand for, most likely first
    /// ([`kernel_cr3_candidates`]).
    pub candidates: Vec<AddressSpace>,
    /// IDTR base, if reported.
    pub idt_base: Option<u64>,
    /// IA32_LSTAR, if the backend reports it.
    pub lstar: Option<u64>,
    /// The kernel's per-CPU base of this vCPU: GS base in kernel mode, KERNEL_GS_BASE in
    /// user mode (where SWAPGS parked it), if reported.
    pub kernel_gs_base: Option<u64>,
    /// Whether the vCPU was executing user code (CPL 3).
    pub user_mode: bool,
}

/// Reads the registers of `vcpu` and derives the kernel address space from them.
pub fn vcpu_facts<V: PhysicalMemory + ReadRegisters + ?Sized>(
    vm: &V,
    vcpu: VcpuId,
) -> Result<VcpuFacts> {
    let groups = RegisterGroups::CONTROL
        | RegisterGroups::EFER
        | RegisterGroups::SEGMENTS
        | RegisterGroups::DESCRIPTOR_TABLES
        | RegisterGroups::MSRS;
    let regs = vm.registers(
        vcpu,
        groups,
        &[msr::LSTAR, msr::GS_BASE, msr::KERNEL_GS_BASE],
    )?;
    let (cr0, cr4, efer) = regs.paging_inputs().ok_or_else(|| {
        Error::not_found(
            "paging registers",
            format!("the backend reported no CR0/CR4/EFER of {vcpu}"),
        )
    })?;
    let mode = PagingMode::from_registers(cr0, cr4, efer);
    if !matches!(mode, PagingMode::Ia32e { .. } | PagingMode::Ia32e5 { .. }) {
        return Err(Error::Unavailable {
            what: "a 64-bit kernel",
            reason: format!("{vcpu} is in {mode:?}; only x86-64 Linux guests are supported").into(),
        });
    }
    let cr3 = regs.control.map_or(0, |c| c.cr3);
    let candidates = kernel_cr3_candidates(cr3)
        .into_iter()
        .map(|root| AddressSpace::new(mode, root))
        .collect();
    let user_mode = regs.segments.is_some_and(|s| s.cs.selector & 3 == 3);
    let gs = regs
        .msrs
        .get(msr::GS_BASE)
        .or(regs.segments.map(|s| s.gs.base));
    let kernel_gs_base = if user_mode {
        regs.msrs.get(msr::KERNEL_GS_BASE)
    } else {
        gs
    };
    let idt_base = regs.idtr.map(|t| t.base);
    Ok(VcpuFacts {
        vcpu,
        cr3,
        candidates,
        idt_base,
        lstar: regs.msrs.get(msr::LSTAR),
        kernel_gs_base,
        user_mode,
    })
}

/// The divide-error gate's target in the IDT at `idt_base`, read through `space`.
pub fn idt_divide_error<M: PhysicalMemory + ?Sized>(
    mem: &M,
    space: AddressSpace,
    idt_base: u64,
) -> Option<u64> {
    let mut gate = [0u8; 16];
    vmi_core::read_virtual(mem, space.mode, space.cr3, Gva(idt_base), &mut gate).ok()?;
    Some(gate_target(&gate))
}

/// The kernel found from a vCPU: its address space, image, and the entry points checked.
#[derive(Debug)]
pub struct LocatedKernel {
    /// The kernel's address space.
    pub space: AddressSpace,
    /// The image and its copy.
    pub image: KernelImage,
    /// The IDT's divide-error handler, inside the image.
    pub idt_divide_error: Option<u64>,
}

/// Tries each candidate root of `facts` until one maps a kernel image that holds the
/// IDT's divide-error handler (when the IDT is readable); the errors of the others are
/// returned if none does.
pub fn locate_kernel<M: PhysicalMemory + ?Sized>(
    mem: &M,
    facts: &VcpuFacts,
    max_len: usize,
    extent: CopyExtent,
) -> Result<LocatedKernel> {
    let mut errors = Vec::new();
    for &space in &facts.candidates {
        let idt = facts.idt_base.and_then(|b| idt_divide_error(mem, space, b));
        match copy_kernel_image(mem, space, max_len, extent) {
            Ok(image) => {
                let end = image.text + image.mapped_len as u64;
                match idt {
                    Some(t) if t < image.text || t >= end => errors.push(format!(
                        "root {:#x}: IDT divide-error gate {t:#x} outside the image at {:#x}..{end:#x}",
                        space.cr3.0, image.text
                    )),
                    _ => {
                        return Ok(LocatedKernel {
                            space,
                            image,
                            idt_divide_error: idt,
                        })
                    }
                }
            }
            Err(e) => errors.push(format!("root {:#x}: {e}", space.cr3.0)),
        }
    }
    Err(Error::not_found("kernel image", errors.join("; ")))
}

/// The handler address of a 16-byte IA-32e interrupt gate.
pub fn gate_target(gate: &[u8; 16]) -> u64 {
    let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
    let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
    let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
    lo | mid << 16 | hi << 32
}

/// One mapped piece of virtual memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRun {
    /// Virtual start.
    pub va: u64,
    /// Physical start.
    pub pa: u64,
    /// Length in bytes.
    pub len: u64,
}

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Every mapped page of `[start, end)` in `space` (IA-32e, 4 or 5 levels), found by reading
/// whole paging structures (one 4 KiB read per table) rather than translating page by
/// page. Physically contiguous neighbours are merged. At most `max_tables` tables are read.
pub fn mapped_runs<M: PhysicalMemory + ?Sized>(
    mem: &M,
    space: AddressSpace,
    start: u64,
    end: u64,
    max_tables: usize,
) -> Result<Vec<MappedRun>> {
    let levels = match space.mode {
        PagingMode::Ia32e { .. } => 4u8,
        PagingMode::Ia32e5 { .. } => 5,
        other => {
            return Err(Error::Unavailable {
                what: "kernel page-table walk",
                reason: format!("paging mode {other:?}").into(),
            })
        }
    };
    let mut out: Vec<MappedRun> = Vec::new();
    let mut tables = 0usize;
    walk_table(
        mem,
        space.cr3.0 & ADDR_MASK,
        levels,
        // The top level covers the whole (sign-extended) address space.
        TOP,
        start,
        end,
        &mut tables,
        max_tables,
        &mut out,
    )?;
    Ok(out)
}

/// Marks the top-level table in [`walk_table`] (no real table starts at this address).
const TOP: u64 = 1;

/// Bytes one entry maps at `level` (1 = page table).
const fn entry_span(level: u8) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

#[allow(clippy::too_many_arguments)]
fn walk_table<M: PhysicalMemory + ?Sized>(
    mem: &M,
    table: u64,
    level: u8,
    table_va: u64,
    start: u64,
    end: u64,
    tables: &mut usize,
    max_tables: usize,
    out: &mut Vec<MappedRun>,
) -> Result<()> {
    *tables += 1;
    if *tables > max_tables {
        return Err(Error::Limit {
            what: "page tables read for the kernel map",
            limit: max_tables as u64,
        });
    }
    let mut raw = [0u8; PAGE as usize];
    mem.read_physical(Gpa(table), &mut raw)?;
    let span = entry_span(level);
    for i in 0..512u64 {
        let va = if table_va == TOP {
            // Top level: only the upper (kernel) half, index 256 and up, sign-extended
            // from the top bit of the linear address (47 or 56).
            if i < 256 {
                continue;
            }
            let bits = 12 + 9 * u32::from(level);
            ((i * span) as i64)
                .wrapping_shl(64 - bits)
                .wrapping_shr(64 - bits) as u64
        } else {
            table_va.wrapping_add(i * span)
        };
        let va_end = va.wrapping_add(span);
        if va_end <= start && va_end != 0 || va >= end {
            continue;
        }
        let off = (i * 8) as usize;
        let entry = u64::from_le_bytes(raw[off..off + 8].try_into().unwrap_or_default());
        if entry & PRESENT == 0 {
            continue;
        }
        let leaf = level == 1 || (entry & PAGE_SIZE_BIT != 0 && (level == 2 || level == 3));
        if leaf {
            let pa = entry & ADDR_MASK & !(span - 1);
            push_run(out, MappedRun { va, pa, len: span });
        } else {
            walk_table(
                mem,
                entry & ADDR_MASK,
                level - 1,
                va,
                start,
                end,
                tables,
                max_tables,
                out,
            )?;
        }
    }
    Ok(())
}

fn push_run(out: &mut Vec<MappedRun>, run: MappedRun) {
    if let Some(last) = out.last_mut() {
        if last.va + last.len == run.va && last.pa + last.len == run.pa {
            last.len += run.len;
            return;
        }
    }
    out.push(run);
}

/// Where the kernel image is and a copy of it.
#[derive(Debug)]
pub struct KernelImage {
    /// `_text` at run time: the first mapped address of the kernel map.
    pub text: u64,
    /// Bytes from `text` to the end of the last mapped page.
    pub mapped_len: usize,
    /// The copy: the whole image from `text` ([`CopyExtent::Whole`]), or the window of it
    /// the bootstrap reads ([`CopyExtent::Window`]; see [`ImageCopy::base`]).
    pub copy: ImageCopy,
    /// Mapped runs (virtual → physical) of the image.
    pub runs: Vec<MappedRun>,
}

/// How much of the kernel image [`copy_kernel_image`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyExtent {
    /// Every mapped page from `_text` to the end of the image.
    Whole,
    /// Only the window from the first `Linux version` banner or BTF header to the end of
    /// the last BTF (`.rodata` and `.BTF`: where the banner, kallsyms and the types are),
    /// found by scanning the image through a 1 MiB buffer; the whole image when it has no
    /// plausible BTF header or no banner before the end of the last one. Copies of the
    /// banner after the BTF (the printk ring in `.bss`, reused pages) are left out: they
    /// are the running kernel's data, and [`find_banners`] on the window does not count
    /// them. This spares the first attach of a process most
    /// of the fresh memory a whole copy faults in (see the crate's README, "Speed").
    Window,
}

/// Finds and copies the kernel image mapped in `space` (all of it or the bootstrap's
/// window, per `extent`); at most `max_len` bytes of image.
pub fn copy_kernel_image<M: PhysicalMemory + ?Sized>(
    mem: &M,
    space: AddressSpace,
    max_len: usize,
    extent: CopyExtent,
) -> Result<KernelImage> {
    let runs = mapped_runs(mem, space, KERNEL_MAP_START, KERNEL_MAP_END, 4096)?;
    let first = runs.first().ok_or_else(|| {
        Error::not_found(
            "kernel image",
            "nothing is mapped at 0xffffffff80000000..0xffffffffc0000000",
        )
    })?;
    let text = first.va;
    let last = runs.last().map_or(text, |r| r.va + r.len);
    let len = usize::try_from(last - text).unwrap_or(usize::MAX);
    if len > max_len {
        return Err(Error::Limit {
            what: "kernel image size",
            limit: max_len as u64,
        });
    }
    let window = match extent {
        CopyExtent::Window => crate::window::kernel_window(mem, &runs, text, len)?,
        CopyExtent::Whole => None,
    };
    let copy = match window {
        Some((start, end)) => {
            // A few MiB: plain memory (advising huge pages would let the first fault wait
            // for the kernel to compact memory, which is what the window avoids).
            let mut bytes = vec![0u8; end - start];
            crate::window::read_image(mem, &runs, text, start, &mut bytes)?;
            let mut present = vec![false; bytes.len().div_ceil(PAGE as usize)];
            for r in &runs {
                let (s, e) = (r.va - text, r.va - text + r.len);
                let (s, e) = (s.max(start as u64), e.min(end as u64));
                if s < e {
                    let first = (s - start as u64) / PAGE;
                    let last = (e - start as u64).div_ceil(PAGE);
                    for p in &mut present[first as usize..last as usize] {
                        *p = true;
                    }
                }
            }
            ImageCopy::with_presence(text + start as u64, bytes, present)?
        }
        None => {
            let mut bytes = buffer_for_copy(len);
            let mut present = vec![false; len.div_ceil(PAGE as usize)];
            for r in &runs {
                let at = (r.va - text) as usize;
                let n = r.len as usize;
                mem.read_physical(Gpa(r.pa), &mut bytes[at..at + n])?;
                for p in &mut present[at / PAGE as usize..(at + n).div_ceil(PAGE as usize)] {
                    *p = true;
                }
            }
            ImageCopy::with_presence(text, bytes, present)?
        }
    };
    Ok(KernelImage {
        text,
        mapped_len: len,
        copy,
        runs,
    })
}

/// A zeroed buffer of `len` bytes for the image copy, backed by transparent huge pages
/// where the kernel allows them.
///
/// Fresh memory is faulted in page by page on its first write: for a 40 MiB image that
/// is ten thousand page faults, which cost several times the copy itself (the
/// `bootstrap/image_memcpy_fresh` floor of `cargo xtask bench -p vmi-tests --bench
/// linux`). Huge pages take one fault per 2 MiB; where THP is `madvise` only (Ubuntu's
/// default, and the benchmark host's) they need this advice, with `always` it changes
/// nothing, and with THP off the buffer is ordinary memory.
fn buffer_for_copy(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    #[cfg(target_os = "linux")]
    if len >= 4 << 20 {
        // Whole pages inside the allocation (a large `vec!` is its own anonymous mapping,
        // not yet touched: `calloc` knows mmap's pages are zero).
        let start = bytes.as_mut_ptr() as usize;
        let first = start.next_multiple_of(PAGE as usize);
        let end = (start + len) & !(PAGE as usize - 1);
        if end > first {
            // SAFETY: madvise only sets a paging hint on whole pages of memory this Vec
            // owns; MADV_HUGEPAGE changes neither the contents nor the validity of any
            // address. The result is ignored: without THP the hint is refused, harmlessly.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    bytes
}

/// A `Linux version …` banner found in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    /// Its virtual address.
    pub address: u64,
    /// The text, up to (not including) the newline.
    pub text: String,
}

impl Banner {
    /// The release (`uname -r`), the word after `Linux version`.
    pub fn release(&self) -> &str {
        self.text
            .strip_prefix("Linux version ")
            .and_then(|r| r.split_ascii_whitespace().next())
            .unwrap_or("")
    }

    /// (major, minor) parsed from the release, if it starts with digits.
    pub fn version(&self) -> Option<(u32, u32)> {
        let mut parts = self.release().split(|c: char| !c.is_ascii_digit());
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }
}

/// Every `Linux version X.Y…\n` string in the image (at most 16): a release, printable
/// ASCII, then a newline within 1 KiB of its start.
pub fn find_banners(image: &ImageCopy) -> Vec<Banner> {
    let bytes = image.bytes();
    let mut out = Vec::new();
    // SIMD substring search: a scan for the needle's first byte alone stops at every `L`
    // (0x4c, a common REX prefix in x86 code), which made this the slowest step of attach.
    for at in memchr::memmem::find_iter(bytes, BANNER_PREFIX) {
        let Some(len) = banner_len(&bytes[at..bytes.len().min(at + BANNER_SPAN)]) else {
            continue;
        };
        out.push(Banner {
            address: image.va_of(at),
            text: String::from_utf8_lossy(&bytes[at..at + len]).into_owned(),
        });
        if out.len() == 16 {
            break;
        }
    }
    out
}

/// What every banner starts with.
pub(crate) const BANNER_PREFIX: &[u8] = b"Linux version ";
/// How many bytes from its start a banner's newline is looked for within.
pub(crate) const BANNER_SPAN: usize = 1024;

/// The length (up to its newline) of the banner `bytes` start with ([`BANNER_SPAN`] bytes
/// or fewer at the image's end): [`BANNER_PREFIX`], a digit, printable ASCII, then a
/// newline. `None` when `bytes` hold no such banner. Shared by [`find_banners`] and the
/// scan that sizes the image window, so both judge a banner alike.
pub(crate) fn banner_len(bytes: &[u8]) -> Option<usize> {
    let rest = bytes.strip_prefix(BANNER_PREFIX)?;
    let rest = &rest[..rest.len().min(BANNER_SPAN - BANNER_PREFIX.len())];
    if !rest.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let nl = rest.iter().position(|&b| b == b'\n' || b == 0)?;
    (rest[nl] == b'\n' && rest[..nl].iter().all(|b| (0x20..0x7f).contains(b)))
        .then_some(BANNER_PREFIX.len() + nl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kpti_user_pgd_selects_the_kernel_pgd() {
        // PCID 5, user PGD (bit 12), no-flush (bit 63).
        assert_eq!(kernel_cr3(0x8000_0000_1234_5005), Gpa(0x1234_4000));
        assert_eq!(kernel_cr3(0x1234_5000), Gpa(0x1234_4000));
        assert_eq!(kernel_cr3(0x1234_4000), Gpa(0x1234_4000));
    }

    #[test]
    fn gate() {
        let mut g = [0u8; 16];
        g[0..2].copy_from_slice(&0x5678u16.to_le_bytes());
        g[6..8].copy_from_slice(&0x1234u16.to_le_bytes());
        g[8..12].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        assert_eq!(gate_target(&g), 0xffff_ffff_1234_5678);
    }

    #[test]
    fn banners() {
        let mut bytes = vec![0u8; 8192];
        let b = b"Linux version 6.1.0-48-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\n";
        bytes[100..100 + b.len()].copy_from_slice(b);
        bytes[4000..4014].copy_from_slice(b"Linux version ");
        let img = ImageCopy::new(0xffff_ffff_8100_0000, bytes);
        let found = find_banners(&img);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].address, 0xffff_ffff_8100_0064);
        assert_eq!(found[0].release(), "6.1.0-48-cloud-amd64");
        assert_eq!(found[0].version(), Some((6, 1)));
    }
}
