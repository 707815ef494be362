//! The guest model: sparse guest-physical memory and vCPU state.

use kvmi_sys::{KvmRegs, KvmSregs, KvmXsave, KVMI_UNMAPPED_GPA};
use std::collections::{BTreeMap, BTreeSet};

/// Size of a guest page frame.
pub const PAGE_SIZE: usize = 4096;

/// MSR indices reported in `kvmi_event.arch.msrs`.
pub mod msr {
    /// `IA32_SYSENTER_CS`.
    pub const SYSENTER_CS: u32 = 0x174;
    /// `IA32_SYSENTER_ESP`.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// `IA32_SYSENTER_EIP`.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// `IA32_PAT`.
    pub const PAT: u32 = 0x277;
    /// `IA32_EFER`.
    pub const EFER: u32 = 0xc000_0080;
    /// `STAR`.
    pub const STAR: u32 = 0xc000_0081;
    /// `LSTAR`.
    pub const LSTAR: u32 = 0xc000_0082;
    /// `CSTAR`.
    pub const CSTAR: u32 = 0xc000_0083;
    /// `FS_BASE`.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// `GS_BASE`.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// `KERNEL_GS_BASE` (the event's `shadow_gs`).
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// `IA32_TSC`.
    pub const TSC: u32 = 0x10;
    /// `IA32_APIC_BASE`.
    pub const APIC_BASE: u32 = 0x1b;
}

/// Sparse guest-physical memory: 4 KiB frames keyed by GFN, below `max_gfn`.
#[derive(Clone, Debug, Default)]
pub struct GuestMemory {
    frames: BTreeMap<u64, Box<[u8; PAGE_SIZE]>>,
    /// First GFN above guest RAM (reported by `VM_GET_MAX_GFN`).
    pub max_gfn: u64,
}

impl GuestMemory {
    /// Empty memory with the given `max_gfn`.
    pub fn new(max_gfn: u64) -> Self {
        Self {
            frames: BTreeMap::new(),
            max_gfn,
        }
    }

    /// Whether a frame backs `gfn`.
    pub fn is_backed(&self, gfn: u64) -> bool {
        self.frames.contains_key(&gfn)
    }

    /// Back `gfn` with a zeroed frame (no-op if already backed). Raises `max_gfn` if
    /// needed.
    pub fn add_frame(&mut self, gfn: u64) {
        self.frames
            .entry(gfn)
            .or_insert_with(|| Box::new([0; PAGE_SIZE]));
        if gfn >= self.max_gfn {
            self.max_gfn = gfn + 1;
        }
    }

    /// Remove the frame backing `gfn`; returns whether there was one.
    pub fn remove_frame(&mut self, gfn: u64) -> bool {
        self.frames.remove(&gfn).is_some()
    }

    /// Backed GFNs, ascending.
    pub fn gfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.frames.keys().copied()
    }

    /// Write `data` at `gpa`, backing every touched frame first (initial contents).
    pub fn load(&mut self, gpa: u64, data: &[u8]) {
        let mut off = 0usize;
        while off < data.len() {
            let a = gpa + off as u64;
            let gfn = a >> 12;
            let in_page = (a & 0xfff) as usize;
            let n = (PAGE_SIZE - in_page).min(data.len() - off);
            self.add_frame(gfn);
            if let Some(f) = self.frames.get_mut(&gfn) {
                f[in_page..in_page + n].copy_from_slice(&data[off..off + n]);
            }
            off += n;
        }
    }

    /// Read bytes (may cross pages); `None` if any touched frame is unbacked.
    pub fn read(&self, gpa: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let mut a = gpa;
        while out.len() < len {
            let f = self.frames.get(&(a >> 12))?;
            let in_page = (a & 0xfff) as usize;
            let n = (PAGE_SIZE - in_page).min(len - out.len());
            out.extend_from_slice(&f[in_page..in_page + n]);
            a = a.wrapping_add(n as u64);
        }
        Some(out)
    }

    /// Write bytes into backed frames; `false` (nothing written) if any is unbacked.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let end = gpa.wrapping_add(data.len().max(1) as u64 - 1);
        if !(gpa >> 12..=end >> 12).all(|g| self.is_backed(g)) {
            return false;
        }
        let mut off = 0usize;
        while off < data.len() {
            let a = gpa + off as u64;
            let in_page = (a & 0xfff) as usize;
            let n = (PAGE_SIZE - in_page).min(data.len() - off);
            if let Some(f) = self.frames.get_mut(&(a >> 12)) {
                f[in_page..in_page + n].copy_from_slice(&data[off..off + n]);
            }
            off += n;
        }
        true
    }

    /// Read a little-endian u64 (`None` if unbacked).
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let b = self.read(gpa, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Read a little-endian u32 (`None` if unbacked).
    pub fn read_u32(&self, gpa: u64) -> Option<u32> {
        let b = self.read(gpa, 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    /// Translate a guest-virtual address with the paging mode given by CR0/CR4/EFER
    /// and the tables at CR3: 4-level (long mode), 3-level PAE or 2-level 32-bit
    /// paging, with large pages. Returns [`KVMI_UNMAPPED_GPA`] if unmapped.
    pub fn translate(&self, sregs: &KvmSregs, gva: u64) -> u64 {
        const PG: u64 = 1 << 31;
        const PAE: u64 = 1 << 5;
        const PSE: u64 = 1 << 4;
        const LMA: u64 = 1 << 10;
        const ADDR: u64 = 0x000f_ffff_ffff_f000;
        if sregs.cr0 & PG == 0 {
            return gva;
        }
        let present = |e: u64| e & 1 != 0;
        let large = |e: u64| e & (1 << 7) != 0;
        if sregs.cr4 & PAE != 0 {
            let (mut table, levels) = if sregs.efer & LMA != 0 {
                (sregs.cr3 & ADDR, 4u32)
            } else {
                (sregs.cr3 & 0xffff_ffe0, 3u32)
            };
            for level in (1..=levels).rev() {
                let shift = 12 + 9 * (level - 1);
                let mask = if levels == 3 && level == 3 { 3 } else { 0x1ff };
                let idx = (gva >> shift) & mask;
                let Some(e) = self.read_u64(table + idx * 8) else {
                    return KVMI_UNMAPPED_GPA;
                };
                if !present(e) {
                    return KVMI_UNMAPPED_GPA;
                }
                if level == 1 || ((level == 2 || (level == 3 && levels == 4)) && large(e)) {
                    let page_mask = (1u64 << shift) - 1;
                    return (e & ADDR & !page_mask) | (gva & page_mask);
                }
                table = e & ADDR;
            }
            KVMI_UNMAPPED_GPA
        } else {
            let gva = gva & 0xffff_ffff;
            let pde_addr = (sregs.cr3 & 0xffff_f000) + ((gva >> 22) & 0x3ff) * 4;
            let Some(pde) = self.read_u32(pde_addr) else {
                return KVMI_UNMAPPED_GPA;
            };
            if pde & 1 == 0 {
                return KVMI_UNMAPPED_GPA;
            }
            if sregs.cr4 & PSE != 0 && pde & (1 << 7) != 0 {
                let hi = u64::from((pde >> 13) & 0xff) << 32;
                return hi | u64::from(pde & 0xffc0_0000) | (gva & 0x3f_ffff);
            }
            let pte_addr = u64::from(pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4;
            let Some(pte) = self.read_u32(pte_addr) else {
                return KVMI_UNMAPPED_GPA;
            };
            if pte & 1 == 0 {
                return KVMI_UNMAPPED_GPA;
            }
            u64::from(pte & 0xffff_f000) | (gva & 0xfff)
        }
    }

    /// Map the 4 KiB page `gva` → `gpa` in 4-level tables rooted at `cr3` (a GPA),
    /// allocating missing tables from `next_table` (advanced by one page per table).
    pub fn map_4level(&mut self, cr3: u64, gva: u64, gpa: u64, next_table: &mut u64) {
        const ADDR: u64 = 0x000f_ffff_ffff_f000;
        self.add_frame(cr3 >> 12);
        let mut table = cr3 & ADDR;
        for level in (2..=4u32).rev() {
            let idx = (gva >> (12 + 9 * (level - 1))) & 0x1ff;
            let slot = table + idx * 8;
            let e = self.read_u64(slot).unwrap_or(0);
            if e & 1 != 0 {
                table = e & ADDR;
            } else {
                let t = *next_table & ADDR;
                *next_table += PAGE_SIZE as u64;
                self.add_frame(t >> 12);
                self.write(slot, &(t | 0x7).to_le_bytes());
                table = t;
            }
        }
        let slot = table + ((gva >> 12) & 0x1ff) * 8;
        self.write(slot, &((gpa & ADDR) | 0x7).to_le_bytes());
    }
}

/// An exception the model injected into a vCPU (by `INJECT_EXCEPTION` or by a
/// breakpoint reinjection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Vector.
    pub vector: u8,
    /// Error code (0 if the vector pushes none).
    pub error_code: u32,
    /// CR2 for #PF (else 0).
    pub cr2: u64,
    /// `true` for a #BP reinjected after a breakpoint CONTINUE.
    pub reinjected_bp: bool,
}

/// One vCPU of the model.
#[derive(Clone, Debug)]
pub struct Vcpu {
    /// General-purpose registers.
    pub regs: KvmRegs,
    /// Special registers.
    pub sregs: KvmSregs,
    /// MSR values (`VCPU_GET_REGISTERS` fails with `EINVAL` for an absent index).
    pub msrs: BTreeMap<u32, u64>,
    /// XSAVE area.
    pub xsave: KvmXsave,
    /// XCR0.
    pub xcr0: u64,
    /// TSC frequency in Hz (`VCPU_GET_INFO`).
    pub tsc_speed: u64,
    /// Current EPT view.
    pub view: u16,
    /// EPT views the guest may switch to with VMFUNC (`VCPU_CONTROL_EPT_VIEW`).
    pub visible_views: BTreeSet<u16>,
    /// vCPU events enabled with `VCPU_CONTROL_EVENTS` (by id).
    pub events: BTreeSet<u8>,
    /// Intercepted control registers (`VCPU_CONTROL_CR`).
    pub cr_intercepts: BTreeSet<u32>,
    /// Intercepted MSRs (`VCPU_CONTROL_MSR`).
    pub msr_intercepts: BTreeSet<u32>,
    /// MTF single-stepping armed (`VCPU_CONTROL_SINGLESTEP`).
    pub singlestep: bool,
    /// #VE info page (`VCPU_SET_VE_INFO`): gpa and trigger_vmexit; `None` if disabled.
    pub ve_info: Option<(u64, bool)>,
    /// Exceptions injected so far (oldest first).
    pub injections: Vec<Injection>,
    /// Pending `VCPU_PAUSE` requests not yet turned into PAUSE events.
    pub pause_requests: u32,
    /// Injection waiting for its TRAP event.
    pub pending_trap: Option<Injection>,
    /// Registers set by `VCPU_SET_REGISTERS` during the current event.
    pub pending_regs: Option<KvmRegs>,
}

impl Vcpu {
    /// vCPU `index` of the default guest ([`crate::guest::initial_vcpu`]).
    pub fn new_long_mode(index: usize) -> Self {
        crate::guest::initial_vcpu(index)
    }

    /// A vCPU with the given registers and MSRs, everything else at reset values.
    pub fn with_state(regs: KvmRegs, sregs: KvmSregs, msrs: BTreeMap<u32, u64>) -> Self {
        Self {
            regs,
            sregs,
            msrs,
            xsave: KvmXsave::default(),
            xcr0: 0x7,
            tsc_speed: 2_400_000_000,
            view: 0,
            visible_views: BTreeSet::new(),
            events: BTreeSet::new(),
            cr_intercepts: BTreeSet::new(),
            msr_intercepts: BTreeSet::new(),
            singlestep: false,
            ve_info: None,
            injections: Vec::new(),
            pause_requests: 0,
            pending_trap: None,
            pending_regs: None,
        }
    }

    /// Operand size in bytes as reported in `arch.mode`: 8, 4 or 2.
    pub fn mode(&self) -> u8 {
        if self.sregs.cr0 & 1 == 0 {
            2
        } else if self.sregs.efer & (1 << 10) != 0 && self.sregs.cs.l != 0 {
            8
        } else if self.sregs.cs.db != 0 {
            4
        } else {
            2
        }
    }

    /// Value of CR0/CR3/CR4 (others read as 0).
    pub fn cr(&self, cr: u32) -> u64 {
        match cr {
            0 => self.sregs.cr0,
            2 => self.sregs.cr2,
            3 => self.sregs.cr3,
            4 => self.sregs.cr4,
            8 => self.sregs.cr8,
            _ => 0,
        }
    }

    /// Set CR0/2/3/4/8.
    pub fn set_cr(&mut self, cr: u32, v: u64) {
        match cr {
            0 => self.sregs.cr0 = v,
            2 => self.sregs.cr2 = v,
            3 => self.sregs.cr3 = v,
            4 => self.sregs.cr4 = v,
            8 => self.sregs.cr8 = v,
            _ => {}
        }
    }
}

/// The whole VM: memory, vCPUs and VM-wide introspection state.
#[derive(Clone, Debug)]
pub struct Vm {
    /// Guest-physical memory.
    pub memory: GuestMemory,
    /// vCPUs.
    pub vcpus: Vec<Vcpu>,
    /// CPUID table: (leaf, subleaf) → [eax, ebx, ecx, edx].
    pub cpuid: BTreeMap<(u32, u32), [u32; 4]>,
    /// MTRR memory type reported for every GPA.
    pub mtrr_type: u8,
    /// Allowed page access per (view, gfn); absent = RWX.
    pub page_access: BTreeMap<(u16, u64), u8>,
    /// SPP write bitmaps per gfn.
    pub write_bitmaps: BTreeMap<u64, u32>,
    /// SPP enabled (`VM_CONTROL_SPP`).
    pub spp_enabled: bool,
    /// Suppress-#VE bits per (view, gfn) (`VM_SET_PAGE_SVE`).
    pub sve: BTreeMap<(u16, u64), bool>,
    /// EPT views created with `CREATE_EPT_VIEW` (view 0 always exists).
    pub views: BTreeSet<u16>,
    /// GFN remappings per (view, old_gfn) → new_gfn (`VCPU_CHANGE_GFN`).
    pub gfn_remap: BTreeMap<(u16, u64), u64>,
    /// VM events enabled with `VM_CONTROL_EVENTS`.
    pub vm_events: BTreeSet<u8>,
    /// Map tokens handed out.
    pub map_tokens: u64,
    /// The guest was crashed by an event reply with action CRASH.
    pub crashed: bool,
}

impl Vm {
    /// Whether `access` (a single R/W/X bit) is restricted on `gpa` in `view`.
    pub fn access_restricted(&self, view: u16, gpa: u64, access: u8) -> bool {
        self.page_access
            .get(&(view, gpa >> 12))
            .is_some_and(|a| a & access == 0)
    }

    /// Pending (unsent) deferred work of a vCPU: TRAP first, then PAUSE.
    pub(crate) fn take_deferred(&mut self, vcpu: usize) -> Option<Deferred> {
        let v = self.vcpus.get_mut(vcpu)?;
        if let Some(t) = v.pending_trap.take() {
            return Some(Deferred::Trap(t));
        }
        if v.pause_requests > 0 {
            v.pause_requests -= 1;
            return Some(Deferred::Pause);
        }
        None
    }
}

/// Work a vCPU does on its next guest entry.
pub(crate) enum Deferred {
    Trap(Injection),
    Pause,
}

/// Default CPUID table (a generic 64-bit Intel CPU with VMX features hidden).
pub(crate) fn default_cpuid() -> BTreeMap<(u32, u32), [u32; 4]> {
    let mut t = BTreeMap::new();
    // "GenuineIntel"
    t.insert((0, 0), [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
    t.insert((1, 0), [0x0005_0657, 0x0000_0800, 0xfffa_3203, 0x0f8b_fbff]);
    t.insert((7, 0), [0, 0x0000_0001, 0, 0]);
    t.insert((0xd, 0), [0x7, 0x340, 0x340, 0]);
    t.insert((0x8000_0000, 0), [0x8000_0008, 0, 0, 0]);
    t.insert((0x8000_0001, 0), [0, 0, 0x121, 0x2c10_0800]);
    t.insert((0x8000_0008, 0), [0x3027, 0, 0, 0]);
    t.insert(
        (0x4000_0000, 0),
        [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
    );
    t
}

/// A page-fault/other event the workload could fire on `vcpu`: the first restricted
/// (view, gfn, missing-bit) found.
pub(crate) fn first_restricted(vm: &Vm, view: u16) -> Option<(u64, u8)> {
    vm.page_access
        .iter()
        .filter(|((v, _), _)| *v == view)
        .find_map(|((_, gfn), a)| {
            [1u8, 2, 4]
                .into_iter()
                .find(|bit| a & bit == 0)
                .map(|bit| (gfn << 12, bit))
        })
}
