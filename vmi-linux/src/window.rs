//! The part of the kernel image an attach reads, found without copying the rest.
//!
//! Everything the bootstrap decodes lies between the first `Linux version` banner and
//! the end of the kernel's `.BTF` (both in `.rodata`, kallsyms between them): about 8 MiB
//! of a 42 MiB image on Debian's 6.1 kernel. Copying the whole image costs little in a
//! warm process, but the first copy in a process faults in tens of MiB of fresh memory,
//! which on a loaded or virtualised host takes 50–250 ms. So the image is first *scanned*
//! through a small reused buffer (1 MiB at a time, read with the backend's ordinary reads —
//! volatile copies out of a shared-RAM mapping), and only the window from the first
//! banner or BTF header to the end of the last banner or BTF is copied. The decoders then
//! run unchanged on that window; [`crate::Linux::attach`] falls back to the whole image
//! when anything is not found in the window.

use vmi_core::{Gpa, PhysicalMemory};

use crate::error::Result;
use crate::image::PAGE;
use crate::kernel_map::MappedRun;
use crate::types::{btf_plausible_len, BTF_MAGIC_HDR24, BTF_MAX_HEADER};

/// Bytes scanned per read.
const CHUNK: usize = 1 << 20;
/// Bytes read past each chunk so that a needle or BTF header starting in the chunk is
/// seen whole.
const OVERLAP: usize = BTF_MAX_HEADER;
/// The banner's prefix (as [`crate::kernel_map::find_banners`] looks for it).
const BANNER: &[u8] = b"Linux version ";
/// How far past its start a banner is read ([`crate::kernel_map::find_banners`] and
/// kallsyms' banner check look at most 1 KiB).
const BANNER_SPAN: usize = 1024;
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
/// holds every banner and every plausible BTF; `None` when the image has no banner or no
/// plausible BTF (or too many), so that the whole image is to be copied.
pub(crate) fn kernel_window<M: PhysicalMemory + ?Sized>(
    mem: &M,
    runs: &[MappedRun],
    text: u64,
    len: usize,
) -> Result<Option<(usize, usize)>> {
    let mut chunk = vec![0u8; CHUNK + OVERLAP];
    let mut banners: Option<(usize, usize)> = None;
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
        for at in memchr::memmem::find_iter(buf, BANNER).take_while(|&a| a < own) {
            widen(&mut banners, off + at, off + at + BANNER_SPAN);
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
    let (Some(b), Some(t)) = (banners, btf) else {
        return Ok(None);
    };
    let page = PAGE as usize;
    let start = b.0.min(t.0) / page * page;
    let end = b.1.max(t.1).min(len).next_multiple_of(page).min(len);
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
            let src = b.get(s..s + buf.len()).ok_or(vmi_core::Error::UnmappedPhysical {
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
                w.iter().zip(f.iter()).all(|(a, b)| a.name == b.name && a.address == b.address),
                "{suite}: symbols"
            );
        }
    }
}
