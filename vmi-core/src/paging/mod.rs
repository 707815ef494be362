//! x86 guest address translation: a software page walk over any [`PhysicalMemory`], for
//! every paging mode, plus a bounded [`TranslationCache`].
//!
//! # Paging modes
//!
//! [`PagingMode`] says how the guest's linear addresses are translated; build it from the
//! vCPU's control registers with [`PagingMode::from_registers`] (see also
//! [`RegisterSnapshot::paging_inputs`](crate::registers::RegisterSnapshot::paging_inputs)).
//!
//! | Mode | Registers | Levels | Linear width | Page sizes |
//! |---|---|---|---|---|
//! | [`Disabled`](PagingMode::Disabled) | CR0.PG = 0 | 0 (identity) | 32 | 4 KiB |
//! | [`Legacy32`](PagingMode::Legacy32) | CR4.PAE = 0 | 2 (PD, PT), 32-bit entries | 32 | 4 KiB, 4 MiB with CR4.PSE (PSE-36) |
//! | [`Pae`](PagingMode::Pae) | CR4.PAE = 1, EFER.LMA = 0 | 3 (4 PDPTEs, PD, PT) | 32 | 4 KiB, 2 MiB |
//! | [`Ia32e`](PagingMode::Ia32e) | EFER.LMA = 1 | 4 (PML4 … PT) | 48, canonical | 4 KiB, 2 MiB, 1 GiB |
//! | [`Ia32e5`](PagingMode::Ia32e5) | EFER.LMA = 1, CR4.LA57 = 1 | 5 (PML5 … PT) | 57, canonical | 4 KiB, 2 MiB, 1 GiB |
//!
//! Levels are numbered as in [`Error::PageFault`]: 1 is the page table, 2 the page
//! directory, 3 the PDPT, 4 the PML4, 5 the PML5.
//!
//! The paging root passed to the walk is the raw CR3 value; it is masked inside for the
//! mode (32-bit paging: bits 31:12; PAE: bits 31:5; IA-32e: bits MAXPHYADDR-1:12, so PCID,
//! PWT/PCD and the high control bits are ignored). The masked value is what errors report
//! as `root`. Physical-address bits above MAXPHYADDR (52 unless set with
//! [`Translator::with_max_phys_bits`]) in a paging-structure entry are reserved bits.
//!
//! Two simplifications: PAE PDPTEs are read from memory on every walk (the CPU loads
//! them into registers when CR3 is written, so a guest changing them without reloading
//! CR3 is seen earlier here), and 1 GiB pages are assumed to be supported in IA-32e
//! mode (CPUID.80000001H:EDX.Page1GB, present on every 64-bit CPU KVM runs on).
//!
//! In the 32-bit modes (including `Disabled`), a linear address at or above 4 GiB does
//! not exist: translating one fails with [`PageFaultReason::NonCanonical`], as does a
//! non-canonical address in the IA-32e modes. Such faults report the mode's top level
//! (0 for `Disabled`) and entry 0, since no table was read.
//!
//! # PAE PDPTEs: which bits fault
//!
//! The Intel SDM (vol. 3A, "PDPTE Registers") reserves PDPTE bits 2:1, 8:5 and 63:MAXPHYADDR;
//! a CPU checks them when it *loads* the PDPTEs (MOV to CR3, CR0 or CR4; KVM does the same
//! for its guests) and refuses the load with #GP. QEMU's TCG instead reads the PDPTE on
//! every walk and faults only on bits 51:MAXPHYADDR, 62:52 and 63 (XD, even with
//! EFER.NXE); it ignores 2:1 and 8:5 and even sets the accessed bit, 5, in the guest's
//! PDPTEs — a 32-bit Debian 686-pae guest under TCG has PDPTEs like `0x13e94021`.
//!
//! The walk here faults only where both do: a present PDPTE fails with
//! [`ReservedBit`](PageFaultReason::ReservedBit) only for bits 63:MAXPHYADDR; bits 2:1,
//! 8:5 (and PS, 7) are ignored. This gives every guest the translation its CPU uses: on
//! hardware, PDPTEs with those bits set cannot have been loaded, so they never reach a
//! walk of a running guest's CR3 (unless the guest rewrote a loaded PDPTE in memory,
//! which the CPU does not see before the next CR3 load — the first simplification above).
//!
//! # Permissions
//!
//! A [`Translation`]'s permissions are the effective ones of the whole walk:
//! `writable` is the AND of the R/W bits of every level, `user` the AND of the U/S bits,
//! and `executable` is false when any level has the XD bit set while EFER.NXE = 1
//! (with NXE = 0 a set XD bit is a reserved-bit fault). PAE PDPTEs carry no permission
//! bits; 32-bit paging has no XD bit, so it is always executable. These are the
//! page-table permissions only: what the CPU enforces additionally depends on CPL,
//! CR0.WP, SMEP/SMAP, protection keys and the SLAT (EPT) permissions, none of which
//! are modelled here. Accessed/dirty bits are never written.
//!
//! # Hostile page tables
//!
//! Entries come from the guest and are not trusted. The walk reads at most one entry per
//! level (so at most five), never loops, never allocates and never panics: addresses are
//! composed with masks and checked arithmetic. An entry where the guest has no memory
//! ([`Error::UnmappedPhysical`] from the memory) fails with
//! [`PageFaultReason::UnreadableTable`] at the level being read.
//!
//! # Memory errors are not page faults
//!
//! Only "not backed by guest memory" is a page fault. Any other error of the
//! [`PhysicalMemory`] while reading a paging structure — [`Error::Disconnected`],
//! [`Error::Timeout`], [`Error::Io`], a backend failure — is returned unchanged: the guest
//! would not fault there, and a dead connection must not look like an unmapped page (a
//! scanner would skip the page and go on against a dead session).
//!
//! # The translation cache and its invalidation contract
//!
//! [`TranslationCache`] remembers page-granular translations keyed by (paging root,
//! page-aligned linear address, mode). The guest can rewrite its page tables at any time
//! and nothing tells the cache: **a cached translation is only as fresh as the last
//! invalidation covering it**. Callers invalidate:
//!
//! - one address space with [`TranslationCache::invalidate_root`] — a CR3-write event is
//!   the natural place to do this (and for the old root when a process exits);
//! - every translation that read a given frame, as a paging-structure page or as the
//!   data page, with [`TranslationCache::invalidate_gfn`] — call it from a write event on
//!   a page-table page, or after a SLAT change;
//! - everything with [`TranslationCache::invalidate_all`] (e.g. after resuming a guest
//!   that ran unobserved).
//!
//! Failed walks are never cached.

mod cache;
mod walker;

#[cfg(test)]
mod tests;

pub use cache::TranslationCache;

use crate::addr::{Gfn, Gpa, Gva, PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4M};
use crate::error::{Error, PageFaultReason, Result};
use crate::memory::PhysicalMemory;

/// CR0.PG: paging enabled.
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: 64-bit paging-structure entries.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging in IA-32e mode.
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: IA-32e mode active.
const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: the XD bit of paging-structure entries is honoured.
const EFER_NXE: u64 = 1 << 11;

/// How the guest translates linear addresses (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: no translation, the physical address is the linear address. Linear
    /// addresses are 32 bits wide.
    Disabled,
    /// 32-bit paging (CR0.PG = 1, CR4.PAE = 0): two levels of 32-bit entries. There is no
    /// XD bit, so every page is executable.
    Legacy32 {
        /// CR4.PSE: a page-directory entry with PS = 1 maps a 4 MiB page (with PSE-36,
        /// its bits 20:13 give physical-address bits 39:32). Without it, PS is ignored.
        pse: bool,
    },
    /// PAE paging (CR0.PG = 1, CR4.PAE = 1, EFER.LMA = 0): four PDPTEs, then page
    /// directories and page tables of 64-bit entries.
    Pae {
        /// EFER.NXE: the XD bit (63) is honoured; when false it is a reserved bit.
        nxe: bool,
    },
    /// 4-level IA-32e paging (EFER.LMA = 1, CR4.LA57 = 0): 48-bit canonical linear
    /// addresses.
    Ia32e {
        /// EFER.NXE: the XD bit (63) is honoured; when false it is a reserved bit.
        nxe: bool,
    },
    /// 5-level IA-32e paging (EFER.LMA = 1, CR4.LA57 = 1): 57-bit canonical linear
    /// addresses.
    Ia32e5 {
        /// EFER.NXE: the XD bit (63) is honoured; when false it is a reserved bit.
        nxe: bool,
    },
}

impl PagingMode {
    /// The mode that CR0, CR4 and EFER select: no paging without CR0.PG (bit 31);
    /// IA-32e when EFER.LMA (bit 10) and CR0.PG, 5-level with CR4.LA57 (bit 12);
    /// otherwise PAE with CR4.PAE (bit 5), else 32-bit paging honouring CR4.PSE (bit 4).
    /// EFER.NXE (bit 11) enables the XD bit.
    pub const fn from_registers(cr0: u64, cr4: u64, efer: u64) -> Self {
        let nxe = efer & EFER_NXE != 0;
        if cr0 & CR0_PG == 0 {
            Self::Disabled
        } else if efer & EFER_LMA != 0 {
            if cr4 & CR4_LA57 != 0 {
                Self::Ia32e5 { nxe }
            } else {
                Self::Ia32e { nxe }
            }
        } else if cr4 & CR4_PAE != 0 {
            Self::Pae { nxe }
        } else {
            Self::Legacy32 {
                pse: cr4 & CR4_PSE != 0,
            }
        }
    }

    /// Number of paging-structure levels walked (0 for [`PagingMode::Disabled`]).
    pub const fn levels(self) -> u8 {
        match self {
            Self::Disabled => 0,
            Self::Legacy32 { .. } => 2,
            Self::Pae { .. } => 3,
            Self::Ia32e { .. } => 4,
            Self::Ia32e5 { .. } => 5,
        }
    }

    /// Width of a linear address: 32 outside IA-32e mode, 48 or 57 in it.
    pub const fn linear_address_bits(self) -> u32 {
        match self {
            Self::Disabled | Self::Legacy32 { .. } | Self::Pae { .. } => 32,
            Self::Ia32e { .. } => 48,
            Self::Ia32e5 { .. } => 57,
        }
    }

    /// Whether the XD bit is honoured (EFER.NXE; always false for the modes without one).
    pub const fn nxe(self) -> bool {
        match self {
            Self::Disabled | Self::Legacy32 { .. } => false,
            Self::Pae { nxe } | Self::Ia32e { nxe } | Self::Ia32e5 { nxe } => nxe,
        }
    }

    /// The page sizes a translation in this mode can have, smallest first.
    pub const fn page_sizes(self) -> &'static [PageSize] {
        match self {
            Self::Disabled | Self::Legacy32 { pse: false } => &[PageSize::Size4K],
            Self::Legacy32 { pse: true } => &[PageSize::Size4K, PageSize::Size4M],
            Self::Pae { .. } => &[PageSize::Size4K, PageSize::Size2M],
            Self::Ia32e { .. } | Self::Ia32e5 { .. } => {
                &[PageSize::Size4K, PageSize::Size2M, PageSize::Size1G]
            }
        }
    }

    /// Whether `gva` is a valid linear address in this mode: below 4 GiB outside IA-32e
    /// mode, canonical (48 or 57 bits) in it.
    pub const fn is_valid_address(self, gva: Gva) -> bool {
        match self {
            Self::Disabled | Self::Legacy32 { .. } | Self::Pae { .. } => gva.0 <= u32::MAX as u64,
            Self::Ia32e { .. } => gva.is_canonical(48),
            Self::Ia32e5 { .. } => gva.is_canonical(57),
        }
    }
}

/// The size of the page a translation lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB (a page-table entry, or paging disabled).
    Size4K,
    /// 2 MiB (a PAE or IA-32e page-directory entry with PS = 1).
    Size2M,
    /// 4 MiB (a 32-bit page-directory entry with PS = 1 and CR4.PSE).
    Size4M,
    /// 1 GiB (an IA-32e PDPTE with PS = 1).
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => PAGE_SIZE,
            Self::Size2M => PAGE_SIZE_2M,
            Self::Size4M => PAGE_SIZE_4M,
            Self::Size1G => PAGE_SIZE_1G,
        }
    }

    /// Mask of the offset bits inside a page of this size.
    pub const fn offset_mask(self) -> u64 {
        self.bytes() - 1
    }

    /// Number of 4 KiB frames in a page of this size.
    pub const fn frames(self) -> u64 {
        self.bytes() / PAGE_SIZE
    }
}

/// One paging-structure entry read during a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagingEntry {
    /// The level of the structure it was read from (1 = page table, 5 = PML5).
    pub level: u8,
    /// The guest physical address the entry was read at.
    pub gpa: Gpa,
    /// The raw entry (zero-extended for 32-bit paging).
    pub value: u64,
}

/// The result of translating one linear address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The linear address that was translated.
    pub gva: Gva,
    /// The guest physical address it translates to.
    pub gpa: Gpa,
    /// The size of the page it lies in.
    pub page_size: PageSize,
    /// Writable through this translation (R/W = 1 at every level).
    pub writable: bool,
    /// Accessible from user mode (U/S = 1 at every level).
    pub user: bool,
    /// Executable (no level has XD = 1 with EFER.NXE = 1).
    pub executable: bool,
    /// Level of the leaf entry: 1 for a 4 KiB page, 2 for 2/4 MiB, 3 for 1 GiB, 0 when
    /// paging is disabled.
    pub level: u8,
    entries: [PagingEntry; 5],
    entry_count: u8,
}

impl Translation {
    /// A translation of `gva` to the physical address of the same value, with every
    /// permission, for [`PagingMode::Disabled`].
    const fn identity(gva: Gva) -> Self {
        Self {
            gva,
            gpa: Gpa(gva.0),
            page_size: PageSize::Size4K,
            writable: true,
            user: true,
            executable: true,
            level: 0,
            entries: [PagingEntry {
                level: 0,
                gpa: Gpa(0),
                value: 0,
            }; 5],
            entry_count: 0,
        }
    }

    /// The 4 KiB frame the translated byte lies in (for a large page, the frame inside
    /// it, not its first frame).
    pub const fn gfn(&self) -> Gfn {
        self.gpa.gfn()
    }

    /// Physical address of the first byte of the (possibly large) page.
    pub const fn page_base(&self) -> Gpa {
        Gpa(self.gpa.0 & !self.page_size.offset_mask())
    }

    /// Linear address of the first byte of the (possibly large) page.
    pub const fn virtual_page_base(&self) -> Gva {
        Gva(self.gva.0 & !self.page_size.offset_mask())
    }

    /// Physical address of byte `offset` of the page, or `None` if `offset` is not
    /// inside the page.
    pub const fn gpa_at(&self, offset: u64) -> Option<Gpa> {
        if offset > self.page_size.offset_mask() {
            None
        } else {
            Some(Gpa(self.page_base().0 | offset))
        }
    }

    /// Physical address of `gva` if it lies in the same (possibly large) page as the
    /// translated address, `None` otherwise.
    pub const fn gpa_of(&self, gva: Gva) -> Option<Gpa> {
        if gva.0 & !self.page_size.offset_mask() != self.virtual_page_base().0 {
            None
        } else {
            self.gpa_at(gva.0 & self.page_size.offset_mask())
        }
    }

    /// Bytes from the translated address to the end of its page (at least 1).
    pub const fn bytes_to_page_end(&self) -> u64 {
        self.page_size.bytes() - (self.gpa.0 & self.page_size.offset_mask())
    }

    /// The paging-structure entries read, from the root down to the leaf. Empty when
    /// paging is disabled and for translations served by a [`TranslationCache`].
    pub fn entries(&self) -> &[PagingEntry] {
        self.entries
            .get(..usize::from(self.entry_count))
            .unwrap_or(&[])
    }
}

/// A paging mode together with the platform parameters the walk needs (MAXPHYADDR).
///
/// `Translator::from(mode)` (or [`Translator::new`]) assumes MAXPHYADDR = 52, the
/// architectural maximum; give the guest's real value (CPUID leaf 0x8000_0008,
/// `EAX[7:0]`) with [`Translator::with_max_phys_bits`] to get reserved-bit faults where
/// the CPU would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translator {
    mode: PagingMode,
    max_phys_bits: u8,
}

impl Translator {
    /// Smallest accepted MAXPHYADDR.
    pub const MIN_PHYS_BITS: u32 = 32;
    /// Largest accepted MAXPHYADDR (and the default).
    pub const MAX_PHYS_BITS: u32 = crate::addr::MAX_PHYSICAL_ADDRESS_BITS;

    /// A translator for `mode` with MAXPHYADDR = 52.
    pub const fn new(mode: PagingMode) -> Self {
        Self {
            mode,
            max_phys_bits: Self::MAX_PHYS_BITS as u8,
        }
    }

    /// Sets MAXPHYADDR, clamped to 32..=52.
    pub const fn with_max_phys_bits(mut self, bits: u32) -> Self {
        let bits = if bits < Self::MIN_PHYS_BITS {
            Self::MIN_PHYS_BITS
        } else if bits > Self::MAX_PHYS_BITS {
            Self::MAX_PHYS_BITS
        } else {
            bits
        };
        self.max_phys_bits = bits as u8;
        self
    }

    /// The paging mode.
    pub const fn mode(&self) -> PagingMode {
        self.mode
    }

    /// MAXPHYADDR.
    pub const fn max_phys_bits(&self) -> u32 {
        self.max_phys_bits as u32
    }

    /// The address of the top-level paging structure that the CR3 value `cr3` selects in
    /// this mode (0 when paging is disabled).
    pub const fn root_base(&self, cr3: Gpa) -> Gpa {
        Gpa(match self.mode {
            PagingMode::Disabled => 0,
            PagingMode::Legacy32 { .. } => cr3.0 & 0xffff_f000,
            PagingMode::Pae { .. } => cr3.0 & 0xffff_ffe0,
            PagingMode::Ia32e { .. } | PagingMode::Ia32e5 { .. } => {
                cr3.0 & walker::phys_mask(self.max_phys_bits()) & !0xfff
            }
        })
    }

    /// Translates `gva` in the address space whose CR3 value is `root`. See [`translate`].
    pub fn translate<M: PhysicalMemory + ?Sized>(
        &self,
        mem: &M,
        root: Gpa,
        gva: Gva,
    ) -> Result<Translation> {
        walker::walk(mem, *self, root, gva)
    }

    /// Reads `buf.len()` bytes of guest virtual memory. See [`read_virtual`].
    pub fn read_virtual<M: PhysicalMemory + ?Sized>(
        &self,
        mem: &M,
        root: Gpa,
        gva: Gva,
        buf: &mut [u8],
    ) -> Result<()> {
        read_virtual_with(mem, gva, buf, |va| self.translate(mem, root, va))
    }
}

impl From<PagingMode> for Translator {
    fn from(mode: PagingMode) -> Self {
        Self::new(mode)
    }
}

/// Translates the linear address `gva` in the address space whose CR3 value is `root`
/// (masked inside for the mode), reading the paging structures from `mem`.
///
/// `mode` is a [`PagingMode`] (MAXPHYADDR 52) or a [`Translator`]. With paging disabled
/// the translation is the identity, with a 4 KiB page and every permission.
///
/// # Errors
///
/// [`Error::PageFault`], with the level at which the walk stopped and the reason:
/// [`NotPresent`](PageFaultReason::NotPresent), [`ReservedBit`](PageFaultReason::ReservedBit),
/// [`NonCanonical`](PageFaultReason::NonCanonical) (also for addresses at or above 4 GiB
/// outside IA-32e mode) or [`UnreadableTable`](PageFaultReason::UnreadableTable) (a
/// paging structure where `mem` reports [`Error::UnmappedPhysical`]).
///
/// Any other error of `mem` (disconnected, timed out, I/O) is passed on unchanged — see
/// [Memory errors are not page faults](self#memory-errors-are-not-page-faults).
pub fn translate<M: PhysicalMemory + ?Sized>(
    mem: &M,
    mode: impl Into<Translator>,
    root: Gpa,
    gva: Gva,
) -> Result<Translation> {
    mode.into().translate(mem, root, gva)
}

/// Reads `buf.len()` bytes of guest virtual memory at `gva`, translating page by page
/// (so the range may cross pages of any size mapped to unrelated frames).
///
/// # Errors
///
/// The first failure: an [`Error::PageFault`] from [`translate`], the memory's error for
/// a data read, or [`Error::InvalidArgument`] if the range wraps past the end of the
/// 64-bit address space. `buf` may be partly written then.
pub fn read_virtual<M: PhysicalMemory + ?Sized>(
    mem: &M,
    mode: impl Into<Translator>,
    root: Gpa,
    gva: Gva,
    buf: &mut [u8],
) -> Result<()> {
    mode.into().read_virtual(mem, root, gva, buf)
}

/// The page-by-page read loop shared by [`read_virtual`] and the cache.
fn read_virtual_with<M: PhysicalMemory + ?Sized>(
    mem: &M,
    gva: Gva,
    buf: &mut [u8],
    mut translate: impl FnMut(Gva) -> Result<Translation>,
) -> Result<()> {
    let mut va = gva.0;
    let mut rest = buf;
    while !rest.is_empty() {
        let t = translate(Gva(va))?;
        let n = usize::try_from(t.bytes_to_page_end())
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let (chunk, tail) = rest.split_at_mut(n);
        mem.read_physical(t.gpa, chunk)?;
        rest = tail;
        if !rest.is_empty() {
            va = va
                .checked_add(n as u64)
                .ok_or_else(|| Error::InvalidArgument {
                    what: "gva",
                    reason: "virtual range wraps past the end of the address space".into(),
                })?;
        }
    }
    Ok(())
}

/// Builds the page-fault error of a walk.
const fn fault(gva: Gva, root: Gpa, level: u8, entry: u64, reason: PageFaultReason) -> Error {
    Error::PageFault {
        gva,
        root,
        level,
        entry,
        reason,
    }
}
