//! The part of the kernel image an attach reads, found without copying the rest.
//!
//! Everything the bootstrap decodes lies between the first `Linux version` banner and
//! the end of the kernel's `.BTF` (both in `.rodata`, kallsyms between them): about 8 MiB
//! of a 42 MiB image on Debian's 6.1 kernel. Copying the whole image costs little in a
//! warm process, but the first copy in a process faults in tens of MiB of fresh memory,
//! which on a loaded or virtualised host takes 50–250 ms. So the image is first *scanned*
//! through a small reused buffer (1 MiB at a time, read with the backend's ordinary reads —
//! volatile copies out of a shared-RAM mapping), and only the window from the first
//! banner or BTF header to the end of the last BTF is copied. The decoders then run
//! unchanged on that window; [`crate::Linux::attach`] falls back to the whole image when
//! anything is not found in the window.
//!
//! Banners count as [`crate::kernel_map::find_banners`] counts them (well formed: a
//! release, printable text, a newline), and only those before the end of the last BTF:
//! `linux_banner` (and 6.1+'s weak copy of it) lies at the start of `.rodata`, before
//! kallsyms and `.BTF`. A running kernel has more copies further on, which are data, not
//! the banner: the printk ring (`__log_buf`, in `.bss`) and pages the kernel freed after
//! boot (the gap between `.BTF_ids` and `.data`, reused by the page allocator). On
//! Debian's 6.1 these stretched the window to 19 MiB; without them it is 8 MiB.

use vmi_core::{Gpa, PhysicalMemory};

use crate::error::Result;
use crate::image::PAGE;
use crate::kernel_map::{banner_len, MappedRun, BANNER_PREFIX, BANNER_SPAN};
use crate::types::{btf_plausible_len, BTF_MAGIC_HDR24, BTF_MAX_HEADER};

/// Bytes scanned per read.
const CHUNK: usize = 1 << 20;
/// Bytes read past each chunk so that a banner or BTF header starting in the chunk is
/// judged whole (a banner's newline is looked for within [`BANNER_SPAN`] bytes).
const OVERLAP: usize = if BANNER_SPAN > BTF_MAX_HEADER {
    BANNER_SPAN
} else {
    BTF_MAX_HEADER
};
/// Banners [`crate::kernel_map::find_banners`] reports at most (the first ones); the scan
/// keeps as many.
const MAX_BANNERS: usize = 16;
/// Plausible BTF headers beyond which the window is given up (the whole image is copied
/// and the carve's own limit speaks).
const MAX_BTF_HEADERS: usize = 64;

/// Fills `buf` with the image bytes at offset `off` of the image starting at `text`
/// (pages of holes between `runs` read as zeros).
pub(crate) fn read_image<M: PhysicalMemory + ?Sized>(
    mem: &M,
    runs: &[MappedRun],
    text: u64,
    off: usize,
    buf: &mut [u8],
) -> Result<()> {
    buf.fill(0);
    let start = text + off as u64;
    let end = start + buf.len() as u64;
    for r in runs {
        let (s, e) = (r.va.max(start), (r.va + r.len).min(end));
        if s >= e {
            continue;
        }
        let dst = &mut buf[(s - start) as usize..(e - start) as usize];
        mem.read_physical(Gpa(r.pa + (s - r.va)), dst)?;
    }
    Ok(())
}

/// The byte range `[start, end)` of the image (offsets from `text`, whole pages) that
/// holds every plausible BTF and every well-formed banner that starts before the end of
/// the last BTF (the first [`MAX_BANNERS`] of the image); `None` when there is no such
/// banner or no plausible BTF (or too many), so that the whole image is to be copied.
pub(crate) fn kernel_window<M: PhysicalMemory + ?Sized>(
    mem: &M,
    runs: &[MappedRun],
    text: u64,
    len: usize,
) -> Result<Option<(usize, usize)>> {
    let mut chunk = vec![0u8; CHUNK + OVERLAP];
    // Well-formed banners, `[start, start + BANNER_SPAN)`, in ascending order.
    let mut banners: Vec<(usize, usize)> = Vec::new();
    let mut btf: Option<(usize, usize)> = None;
    let mut btf_headers = 0usize;
    let widen = |range: &mut Option<(usize, usize)>, s: usize, e: usize| {
        *range = Some(range.map_or((s, e), |(a, b)| (a.min(s), b.max(e))));
    };
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK + OVERLAP);
        let buf = &mut chunk[..n];
        read_image(mem, runs, text, off, buf)?;
        // Hits starting in this chunk; the overlap belongs to the next one. BTF headers
        // are looked for with the usual 24-byte header length, as the carve tries them
        // first (the bare magic stops at every `jmp rel8` of the code): a BTF with
        // another header length is not in the window, and the whole image is read.
        let own = n.min(CHUNK);
        for at in memchr::memmem::find_iter(buf, BANNER_PREFIX).take_while(|&a| a < own) {
            if banners.len() == MAX_BANNERS {
                break;
            }
            // `at < CHUNK`: the overlap holds the banner's span, up to the image's end. The
            // window keeps the whole span, which kallsyms' banner check reads too.
            if banner_len(&buf[at..n.min(at + BANNER_SPAN)]).is_some() {
                banners.push((off + at, off + at + BANNER_SPAN));
            }
        }
        for at in memchr::memmem::find_iter(buf, &BTF_MAGIC_HDR24).take_while(|&a| a < own) {
            // A whole header: `at < CHUNK` and the overlap is as long as the longest
            // header (only the image's tail may cut one short, which then fails the checks).
            let total = btf_plausible_len(&buf[at..n.min(at + BTF_MAX_HEADER)]);
            if let Some(total) = total {
                btf_headers += 1;
                if btf_headers > MAX_BTF_HEADERS {
                    return Ok(None);
                }
                widen(&mut btf, off + at, off + at + total);
            }
        }
        off += CHUNK;
    }
    let Some(t) = btf else {
        return Ok(None);
    };
    // Copies of the banner after the BTF are the running kernel's data (see the module).
    let before_btf_end = || banners.iter().take_while(|b| b.0 < t.1);
    let (Some(first), Some(last_end)) = (
        before_btf_end().next().map(|b| b.0),
        before_btf_end().map(|b| b.1).max(),
    ) else {
        return Ok(None);
    };
    let page = PAGE as usize;
    let start = first.min(t.0) / page * page;
    let end = last_end.max(t.1).min(len).next_multiple_of(page).min(len);
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageCopy;
    use crate::kallsyms::{self, Anchors};
    use crate::kernel_map::find_banners;
    use crate::types::carve_btf;

    /// The image as guest memory: physical address = offset in the image.
    struct Flat<'a>(&'a ImageCopy);

    impl PhysicalMemory for Flat<'_> {
        fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> vmi_core::Result<()> {
            let b = self.0.bytes();
            let s = gpa.0 as usize;
            let src = b
                .get(s..s + buf.len())
                .ok_or(vmi_core::Error::UnmappedPhysical {
                    gpa,
                    len: buf.len() as u64,
                })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    /// The mapped runs of an image (its present pages), physical = offset.
    fn runs(image: &ImageCopy) -> Vec<MappedRun> {
        let mut out: Vec<MappedRun> = Vec::new();
        for off in (0..image.len()).step_by(PAGE as usize) {
            if !image.is_present(off) {
                continue;
            }
            match out.last_mut() {
                Some(r) if r.pa + r.len == off as u64 => r.len += PAGE,
                _ => out.push(MappedRun {
                    va: image.va_of(off),
                    pa: off as u64,
                    len: PAGE,
                }),
            }
        }
        out
    }

    /// The window starts at the first well-formed banner and ends with the BTF: a
    /// `Linux version ` that is no banner before it, and well-formed copies of the banner
    /// after the BTF (the printk ring, reused pages), are left out; without a banner before
    /// the BTF's end there is no window.
    #[test]
    fn window_spans_the_banners_before_the_btf_end_and_the_btf() {
        const MIB: usize = 1 << 20;
        let banner =
            b"Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\n\0";
        let mut bytes = vec![0u8; 12 * MIB];
        let put =
            |bytes: &mut Vec<u8>, at: usize, b: &[u8]| bytes[at..at + b.len()].copy_from_slice(b);
        put(&mut bytes, MIB + 5, b"Linux version %s\n\0");
        put(&mut bytes, 3 * MIB + 0x100, banner);
        put(&mut bytes, 3 * MIB + 0x800, banner);
        // A BTF header: 24-byte header, 0x100 bytes of types, 0x10 of strings.
        let btf_at = 5 * MIB - 12;
        let mut hdr = BTF_MAGIC_HDR24.to_vec();
        for v in [0u32, 0x100, 0x100, 0x10] {
            hdr.extend_from_slice(&v.to_le_bytes());
        }
        put(&mut bytes, btf_at, &hdr);
        let btf_end = btf_at + 24 + 0x110;
        put(&mut bytes, 7 * MIB - 20, banner);
        put(&mut bytes, 11 * MIB, banner);
        let image = ImageCopy::new(0xffff_ffff_8100_0000, bytes.clone());
        let runs = runs(&image);
        let window = |image: &ImageCopy| {
            kernel_window(&Flat(image), &runs, image.base(), image.len()).unwrap()
        };
        let page = PAGE as usize;
        assert_eq!(
            window(&image),
            Some((3 * MIB, btf_end.next_multiple_of(page)))
        );
        // A banner straddling the BTF's end: kept whole.
        let mut straddling = bytes.clone();
        put(&mut straddling, btf_end - 10, banner);
        let image = ImageCopy::new(0xffff_ffff_8100_0000, straddling);
        assert_eq!(
            window(&image),
            Some((3 * MIB, (btf_end - 10 + BANNER_SPAN).next_multiple_of(page)))
        );
        // Banners only after the BTF: no window.
        bytes[3 * MIB..4 * MIB].fill(0);
        let image = ImageCopy::new(0xffff_ffff_8100_0000, bytes);
        assert_eq!(window(&image), None);
    }

    /// On each kernel of the matrix (5.10 to 7.x), the window found by the scan holds
    /// the same banners, BTF and kallsyms as the whole image, and is a fraction of it.
    #[test]
    fn window_of_each_matrix_kernel_decodes_as_the_whole_image() {
        let Some(dir) = std::env::var_os("VMI_LINUX_KERNELS") else {
            assert!(
                std::env::var("VMI_REQUIRE_QEMU").as_deref() != Ok("1"),
                "VMI_LINUX_KERNELS is unset and VMI_REQUIRE_QEMU=1"
            );
            eprintln!("SKIPPED: VMI_LINUX_KERNELS is unset");
            return;
        };
        for suite in ["bullseye", "bookworm", "trixie", "sid"] {
            let elf = std::fs::read(std::path::Path::new(&dir).join(suite).join("vmlinux"))
                .expect("vmlinux of the matrix");
            let whole = ImageCopy::from_vmlinux(&elf, 256 << 20).unwrap();
            let runs = runs(&whole);
            let text = whole.base();
            // The runs as the page-table walk gives them: from the first mapped page.
            assert_eq!(runs[0].va, text, "{suite}");
            let (start, end) = kernel_window(&Flat(&whole), &runs, text, whole.len())
                .unwrap()
                .expect("a window");
            let mut bytes = vec![0u8; end - start];
            read_image(&Flat(&whole), &runs, text, start, &mut bytes).unwrap();
            let present = (start..end)
                .step_by(PAGE as usize)
                .map(|o| whole.is_present(o))
                .collect();
            let window = ImageCopy::with_presence(text + start as u64, bytes, present).unwrap();
            eprintln!(
                "{suite}: window {:.1} MiB of {:.1} MiB",
                window.len() as f64 / f64::from(1 << 20),
                whole.len() as f64 / f64::from(1 << 20)
            );
            assert!(window.len() * 2 < whole.len(), "{suite}: window too large");

            let banners = find_banners(&whole);
            assert!(!banners.is_empty(), "{suite}");
            assert_eq!(find_banners(&window), banners, "{suite}: banners");
            assert_eq!(
                carve_btf(&window).unwrap(),
                carve_btf(&whole).unwrap(),
                "{suite}: BTF"
            );
            // A vmlinux is linked at 0xffffffff81000000 (_text), banner as the scan found it.
            let anchors = Anchors {
                text: Some(crate::linux::LINK_TEXT),
                banner: (banners.len() == 1).then_some(banners[0].address),
            };
            let (w, wr) = kallsyms::decode(&window, anchors).expect("kallsyms in the window");
            let (f, fr) = kallsyms::decode(&whole, anchors).expect("kallsyms in the image");
            assert_eq!(wr.tables, fr.tables, "{suite}: kallsyms tables");
            assert_eq!(w.len(), f.len(), "{suite}");
            assert!(
                w.iter()
                    .zip(f.iter())
                    .all(|(a, b)| a.name == b.name && a.address == b.address),
                "{suite}: symbols"
            );
        }
    }
}
