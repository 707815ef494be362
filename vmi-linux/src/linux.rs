//! [`Linux`]: a Linux guest understood from its own memory.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmi_core::{AddressSpace, PhysicalMemory, ReadRegisters, VcpuId};

use crate::error::{Error, Result};
use crate::image::ImageCopy;
use crate::kallsyms::{self, Anchors, KallsymsTables};
use crate::kernel_map::{self, CopyExtent, VcpuFacts};
use crate::layout::{MmLayout, TaskLayout};
use crate::reader::Reader;
use crate::symbols::SymbolTable;
use crate::types::{self, Types};
use crate::vmcoreinfo::Vmcoreinfo;

/// Where kernel symbols come from.
#[derive(Debug, Clone, Default)]
pub enum SymbolSource {
    /// kallsyms decoded from guest memory (the default; needs CONFIG_KALLSYMS_ALL for
    /// data symbols, which every major distribution sets).
    #[default]
    Kallsyms,
    /// A System.map the user brings (link-time addresses; the KASLR slide is applied).
    SystemMap(String),
    /// The symbols of the ISF given as [`TypeSource::Isf`] (slide applied).
    Isf,
}

/// Where kernel types come from.
#[derive(Debug, Clone, Default)]
pub enum TypeSource {
    /// The kernel's own `.BTF`, carved from guest memory (the default; needs
    /// CONFIG_DEBUG_INFO_BTF: Debian ≥ 11, Ubuntu ≥ 20.10, Fedora, RHEL ≥ 8.2).
    #[default]
    KernelBtf,
    /// A BTF file (BTFHub's archive, or a copy of the guest's `/sys/kernel/btf/vmlinux`).
    BtfFile(Vec<u8>),
    /// A Volatility 3 ISF JSON file (dwarf2json or btf2json output).
    Isf(Vec<u8>),
}

/// How [`Linux::attach`] finds the kernel.
#[derive(Debug, Clone)]
pub struct LinuxOptions {
    /// The vCPU whose registers locate the kernel (default 0). Any vCPU works, also one
    /// paused in user mode under KPTI.
    pub vcpu: VcpuId,
    /// Symbols (default: kallsyms from guest memory).
    pub symbols: SymbolSource,
    /// Types (default: the kernel's BTF from guest memory).
    pub types: TypeSource,
    /// Largest kernel image copied (default 256 MiB).
    pub max_image_size: usize,
    /// A VMCOREINFO note (e.g. `vmi_dump::ElfDump::vmcoreinfo`): its kallsyms table
    /// addresses (6.0+) are used instead of searching for the tables, and its
    /// `KERNELOFFSET` must agree with the slide found.
    pub vmcoreinfo: Option<String>,
}

impl Default for LinuxOptions {
    fn default() -> Self {
        Self {
            vcpu: VcpuId(0),
            symbols: SymbolSource::Kallsyms,
            types: TypeSource::KernelBtf,
            max_image_size: 256 << 20,
            vmcoreinfo: None,
        }
    }
}

/// What the bootstrap found and where each fact came from.
#[derive(Debug, Clone, Default)]
pub struct BootstrapReport {
    /// One line per step: the fact, its source, and how it was validated.
    pub steps: Vec<String>,
    /// Time per phase.
    pub timings: Vec<(&'static str, Duration)>,
    /// Set while bootstrapping: whether the image copy was a window smaller than the image.
    window_was_partial: bool,
}

impl fmt::Display for BootstrapReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        let t: Vec<String> = self
            .timings
            .iter()
            .map(|(n, d)| format!("{n} {:.1} ms", d.as_secs_f64() * 1e3))
            .collect();
        write!(f, "timings: {}", t.join(", "))
    }
}

/// Facts about the running kernel.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    /// The banner (`/proc/version`).
    pub banner: String,
    /// `uname -r`.
    pub release: String,
    /// Runtime address of `_text`.
    pub text: u64,
    /// KASLR slide of the kernel image: runtime `_text` − the link address
    /// 0xffffffff81000000.
    pub slide: i64,
    /// The kernel's address space (kernel PGD) as found from the vCPU.
    pub kernel_space: AddressSpace,
    /// Whether 5-level paging is on.
    pub la57: bool,
}

/// The kernel's default link address of `_text` on x86-64.
pub const LINK_TEXT: u64 = 0xffff_ffff_8100_0000;

/// A Linux guest, understood from its own memory.
///
/// `V` is any backend with physical memory and registers — `&LegacyQemu`, `&KvmiVm`, an
/// `Arc` of either, or a memory dump.
pub struct Linux<V> {
    vm: V,
    info: KernelInfo,
    symbols: SymbolTable,
    types: Types,
    report: BootstrapReport,
    pub(crate) task: TaskLayout,
    pub(crate) mm: OnceLock<Result<MmLayout, String>>,
    pub(crate) init_task: u64,
    pub(crate) module_layout: OnceLock<Result<crate::modules::ModuleLayout, String>>,
    pub(crate) log_layout: OnceLock<Result<crate::dmesg::LogLayout, String>>,
    pub(crate) vma_layout: OnceLock<Result<crate::vma::VmaLayout, String>>,
    image: ImageCopy,
}

impl<V> fmt::Debug for Linux<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Linux")
            .field("info", &self.info)
            .field("symbols", &self.symbols.len())
            .finish_non_exhaustive()
    }
}

fn timed<T>(
    report: &mut BootstrapReport,
    name: &'static str,
    f: impl FnOnce(&mut BootstrapReport) -> Result<T>,
) -> Result<T> {
    let t = Instant::now();
    let r = f(report);
    report.timings.push((name, t.elapsed()));
    r
}

impl<V: PhysicalMemory + ReadRegisters> Linux<V> {
    /// Finds the kernel in the guest and reads its symbols and types.
    ///
    /// Pause the guest first (a [`vmi_core::PauseGuard`]) so that what is read is one
    /// consistent state; nothing here needs the guest to run.
    pub fn attach(vm: V, options: LinuxOptions) -> Result<Self> {
        let mut report = BootstrapReport::default();
        let start = Instant::now();
        let facts = timed(&mut report, "registers", |_| {
            kernel_map::vcpu_facts(&vm, options.vcpu)
        })?;
        // The window of the image first (a fraction of the fresh memory: the first attach
        // of a process is dominated by faulting it in); the whole image when the window
        // did not hold what the bootstrap looks for, so that the outcome and its errors
        // are those of the whole image.
        let mut window_report = report.clone();
        let found = match bootstrap(
            &vm,
            &options,
            &facts,
            CopyExtent::Window,
            &mut window_report,
        ) {
            Ok(b) => {
                report = window_report;
                b
            }
            Err(e) if window_report.window_was_partial => {
                report.steps.push(format!(
                    "image window: {e}; the whole image is read instead"
                ));
                bootstrap(&vm, &options, &facts, CopyExtent::Whole, &mut report)?
            }
            Err(e) => return Err(e),
        };
        report.window_was_partial = false;
        report.timings.push(("total", start.elapsed()));
        let Bootstrap {
            info,
            symbols,
            types,
            task,
            init_task,
            image,
        } = found;
        Ok(Self {
            vm,
            info,
            symbols,
            types,
            report,
            task,
            mm: OnceLock::new(),
            init_task,
            module_layout: OnceLock::new(),
            log_layout: OnceLock::new(),
            vma_layout: OnceLock::new(),
            image,
        })
    }
}

/// What the bootstrap derives, before it becomes a [`Linux`].
struct Bootstrap {
    info: KernelInfo,
    symbols: SymbolTable,
    types: Types,
    task: TaskLayout,
    init_task: u64,
    image: ImageCopy,
}

/// Everything of [`Linux::attach`] after the registers, on a copy of `extent` of the image.
fn bootstrap<V: PhysicalMemory + ?Sized>(
    vm: &V,
    options: &LinuxOptions,
    facts: &VcpuFacts,
    extent: CopyExtent,
    report: &mut BootstrapReport,
) -> Result<Bootstrap> {
    {
        let located = timed(report, "image copy", |_| {
            kernel_map::locate_kernel(vm, facts, options.max_image_size, extent)
        })?;
        report.window_was_partial = located.image.copy.len() < located.image.mapped_len;
        let kernel = located.space;
        report.steps.push(format!(
            "kernel page tables: CR3 {:#x} of {} ({} mode) → root {:#x}{}",
            facts.cr3,
            facts.vcpu,
            if facts.user_mode { "user" } else { "kernel" },
            kernel.cr3.0,
            if facts.cr3 & (1 << 12) != 0 && kernel.cr3.0 & (1 << 12) == 0 {
                " (KPTI user PGD → kernel PGD)"
            } else {
                ""
            }
        ));
        let image = located.image;
        let text = image.text;
        let copy = image.copy;
        validate_entry_points(
            facts,
            located.idt_divide_error,
            text,
            image.mapped_len as u64,
            report,
        )?;
        let copied = if copy.len() < image.mapped_len {
            format!(
                "the window {:#x}..{:#x} holding the banners and .BTF copied ({:.1} MiB)",
                copy.base(),
                copy.base() + copy.len() as u64,
                copy.len() as f64 / f64::from(1 << 20)
            )
        } else {
            "copied whole".to_owned()
        };
        report.steps.push(format!(
            "kernel image: _text {text:#x} (first mapped 2 MiB slot of the kernel map), {} MiB mapped in {} runs, {copied}",
            image.mapped_len >> 20,
            image.runs.len()
        ));
        let banners = kernel_map::find_banners(&copy);
        let first_banner = banners.first().cloned().ok_or_else(|| {
            Error::not_found(
                "kernel banner",
                "no `Linux version` string in the kernel image",
            )
        })?;
        let anchors = Anchors {
            text: Some(text),
            banner: (banners.len() == 1).then_some(first_banner.address),
        };

        let mut isf_symbols = None;
        let types = timed(report, "types", |report| match &options.types {
            TypeSource::KernelBtf => {
                let (va, n, t) = types::carve_btf_types(&copy).map_err(|e| Error::Unavailable {
                    what: "kernel BTF",
                    reason: format!(
                        "no valid .BTF in the kernel image ({e}): the kernel may be built without \
                         CONFIG_DEBUG_INFO_BTF, or its BTF is damaged; use TypeSource::BtfFile (BTFHub, or the guest's /sys/kernel/btf/vmlinux) \
                         or TypeSource::Isf (dwarf2json/btf2json), with SymbolSource::SystemMap \
                         if kallsyms is missing too"
                    )
                    .into(),
                })?;
                report.steps.push(format!(
                    "types: the kernel's own .BTF carved from memory at {va:#x} ({} KiB)",
                    n >> 10
                ));
                Ok(t)
            }
            TypeSource::BtfFile(bytes) => {
                report
                    .steps
                    .push(format!("types: BTF file ({} KiB)", bytes.len() >> 10));
                Types::from_btf(bytes.clone())
            }
            TypeSource::Isf(json) => {
                let (t, syms, _) = Types::from_isf(json)?;
                report
                    .steps
                    .push(format!("types: ISF file ({} symbols)", syms.len()));
                isf_symbols = Some(syms);
                Ok(t)
            }
        })?;

        let vmcoreinfo = options
            .vmcoreinfo
            .as_deref()
            .map(Vmcoreinfo::parse)
            .transpose()?;
        if let Some(offset) = vmcoreinfo.as_ref().and_then(Vmcoreinfo::kernel_offset) {
            let slide = text.wrapping_sub(LINK_TEXT);
            if offset != slide {
                return Err(Error::malformed(
                    "VMCOREINFO",
                    format!("KERNELOFFSET {offset:#x}, but the image says the slide is {slide:#x}"),
                ));
            }
            report.steps.push(format!(
                "VMCOREINFO: KERNELOFFSET {offset:#x} agrees with _text"
            ));
        }
        let tables = vmcoreinfo.as_ref().and_then(Vmcoreinfo::kallsyms_tables);
        let symbols = timed(report, "symbols", |report| {
            symbols_from(
                &options.symbols,
                &copy,
                anchors,
                tables,
                isf_symbols,
                text,
                report,
            )
        })?;
        let banner = match symbols.address_of("linux_banner") {
            Some(va) => banners
                .iter()
                .find(|b| b.address == va)
                .cloned()
                .ok_or_else(|| {
                    Error::malformed(
                        "kernel symbols",
                        format!("linux_banner at {va:#x} is not a banner found in the image"),
                    )
                })?,
            None => first_banner,
        };
        report.steps.push(format!(
            "banner at {:#x} (= linux_banner): {}",
            banner.address, banner.text
        ));
        let info = KernelInfo {
            release: banner.release().to_owned(),
            banner: banner.text.clone(),
            text,
            slide: text.wrapping_sub(LINK_TEXT) as i64,
            kernel_space: kernel,
            la57: matches!(kernel.mode, vmi_core::PagingMode::Ia32e5 { .. }),
        };
        let task = TaskLayout::resolve(&types)?;
        let init_task = symbols
            .address_of("init_task")
            .ok_or_else(|| Error::not_found("symbol", "init_task"))?;
        let t = Instant::now();
        let step = validate_init_task(vm, kernel, &task, init_task)?;
        report.steps.push(step);
        report.timings.push(("validate", t.elapsed()));
        Ok(Bootstrap {
            info,
            symbols,
            types,
            task,
            init_task,
            image: copy,
        })
    }
}

/// Checks `init_task` as the symbols and types describe it: pid 0, a `swapper` comm, no
/// mm, its task list linked both ways. Returns the report's line.
fn validate_init_task<V: PhysicalMemory + ?Sized>(
    vm: &V,
    kernel: AddressSpace,
    t: &TaskLayout,
    init_task: u64,
) -> Result<String> {
    let r = Reader::new(vm, kernel);
    let pid = r.u32(init_task + t.pid.offset)?;
    let comm = r.cstr(init_task + t.comm.offset, t.comm.size as usize)?;
    let mm = r.u64(init_task + t.mm.offset)?;
    let next = r.u64(init_task + t.tasks.offset)?;
    let back = r.u64(next + 8)?;
    if pid != 0 || !comm.starts_with("swapper") || mm != 0 || back != init_task + t.tasks.offset {
        return Err(Error::malformed(
            "init_task",
            format!(
                "pid {pid}, comm {comm:?}, mm {mm:#x}, tasks.next->prev {back:#x}: the symbols or types do not match this kernel"
            ),
        ));
    }
    Ok(format!(
        "init_task at {init_task:#x}: pid 0, comm {comm:?}, no mm, task list linked both ways"
    ))
}

fn validate_entry_points(
    facts: &VcpuFacts,
    idt_divide_error: Option<u64>,
    text: u64,
    len: u64,
    report: &mut BootstrapReport,
) -> Result<()> {
    let inside = |va: u64| va >= text && va < text + len;
    let mut checks = Vec::new();
    if let Some(t) = idt_divide_error {
        if !inside(t) {
            return Err(Error::malformed(
                "kernel image",
                format!(
                    "IDT divide-error gate {t:#x} lies outside the image at {text:#x}+{len:#x}"
                ),
            ));
        }
        checks.push(format!("IDT[0] → {t:#x}"));
    }
    match facts.lstar {
        Some(l) if inside(l) => checks.push(format!("LSTAR {l:#x}")),
        Some(l) => checks.push(format!(
            "LSTAR {l:#x} outside the image (PTI trampoline), not used"
        )),
        None => {}
    }
    if checks.is_empty() {
        checks.push("no IDT or LSTAR reported: unchecked".into());
    }
    report.steps.push(format!(
        "entry points inside the image: {}",
        checks.join(", ")
    ));
    Ok(())
}

fn symbols_from(
    source: &SymbolSource,
    copy: &ImageCopy,
    anchors: Anchors,
    tables: Option<KallsymsTables>,
    isf: Option<SymbolTable>,
    text: u64,
    report: &mut BootstrapReport,
) -> Result<SymbolTable> {
    let link_time =
        |table: SymbolTable, what: &str, report: &mut BootstrapReport| -> Result<SymbolTable> {
            let link_text = table
                .address_of("_text")
                .ok_or_else(|| Error::not_found("symbol", format!("_text in the {what}")))?;
            let slide = text.wrapping_sub(link_text) as i64;
            report.steps.push(format!(
                "symbols: {what}, {} symbols, KASLR slide {slide:#x} applied",
                table.len()
            ));
            Ok(table.slid(slide))
        };
    match source {
        SymbolSource::Kallsyms => {
            let (table, kr, how) = match tables {
                Some(t) => {
                    let (table, kr) = kallsyms::decode_at(copy, t, anchors)?;
                    (table, kr, "at the addresses VMCOREINFO gives")
                }
                None => {
                    let (table, kr) = kallsyms::decode(copy, anchors)?;
                    (table, kr, "found by the tables' shape")
                }
            };
            report.steps.push(format!(
                "symbols: kallsyms decoded from memory {how}, {} symbols ({}); _text and linux_banner agree",
                kr.count, kr.description
            ));
            Ok(table)
        }
        SymbolSource::SystemMap(text_map) => {
            let table = SymbolTable::from_system_map(text_map, 4 << 20)?;
            link_time(table, "System.map", report)
        }
        SymbolSource::Isf => {
            let table = isf.ok_or_else(|| Error::Unavailable {
                what: "ISF symbols",
                reason: "SymbolSource::Isf needs TypeSource::Isf".into(),
            })?;
            link_time(table, "ISF", report)
        }
    }
}

impl<V: PhysicalMemory> Linux<V> {
    /// The backend.
    pub fn vm(&self) -> &V {
        &self.vm
    }

    /// Facts about the kernel.
    pub fn kernel(&self) -> &KernelInfo {
        &self.info
    }

    /// Kernel symbols, both ways.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// Kernel types: any struct by name.
    pub fn types(&self) -> &Types {
        &self.types
    }

    /// What the bootstrap found, where from, and how long it took.
    pub fn report(&self) -> &BootstrapReport {
        &self.report
    }

    /// The copy of the kernel image taken at attach.
    pub fn image(&self) -> &ImageCopy {
        &self.image
    }

    /// A reader of kernel virtual memory (translation cache for one operation).
    pub fn kernel_reader(&self) -> Reader<'_, V> {
        Reader::new(&self.vm, self.info.kernel_space)
    }

    /// The address of symbol `name`.
    pub fn symbol(&self, name: &str) -> Result<u64> {
        self.symbols
            .address_of(name)
            .ok_or_else(|| Error::not_found("symbol", name.to_owned()))
    }

    /// The kernel's own VMCOREINFO note, read from guest memory through the
    /// `vmcoreinfo_data` symbol (CONFIG_CRASH_CORE / CONFIG_VMCORE_INFO kernels).
    pub fn vmcoreinfo(&self) -> Result<Vmcoreinfo> {
        let r = self.kernel_reader();
        let data = r.u64(self.symbol("vmcoreinfo_data")?)?;
        if data == 0 {
            return Err(Error::not_found("VMCOREINFO", "vmcoreinfo_data is NULL"));
        }
        let text = r.cstr(data, 4096)?;
        Vmcoreinfo::parse(&text)
    }

    /// Exports what was derived (types from BTF, symbols, the banner) as a Volatility 3
    /// ISF: Volatility can then analyse a dump of this kernel build without a debug
    /// kernel. Symbols are written at their link-time addresses (the KASLR slide
    /// removed; per-CPU offsets kept), as dwarf2json writes them: Volatility finds the
    /// slide of each dump itself, so the file serves every boot of this build. See
    /// [`Types::write_isf`].
    pub fn write_isf(&self, out: impl std::io::Write) -> Result<()> {
        // The banner as in memory (with its newline), which Volatility scans for.
        let banner = format!("{}\n", self.info.banner);
        let link_time = self.symbols.slid(self.info.slide.wrapping_neg());
        self.types.write_isf(&link_time, &banner, out)
    }

    /// A breakpoint on kernel symbol `name` plus `offset` (for
    /// [`vmi_core::Breakpoints::set_breakpoint`]): breakpoints by name, with the KASLR slide applied.
    pub fn breakpoint(&self, name: &str, offset: u64) -> Result<vmi_core::Breakpoint> {
        Ok(vmi_core::Breakpoint::at(vmi_core::Gva(
            self.symbol(name)?.wrapping_add(offset),
        )))
    }

    pub(crate) fn mm_layout(&self) -> Result<&MmLayout> {
        self.mm
            .get_or_init(|| MmLayout::resolve(&self.types).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::not_found("mm_struct layout", e.clone()))
    }
}
