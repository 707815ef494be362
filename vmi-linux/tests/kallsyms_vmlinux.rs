//! quick
use vmi_linux::kallsyms::{decode, Anchors};
use vmi_linux::ImageCopy;
#[test]
fn quick() {
    for suite in ["bullseye", "bookworm", "trixie", "sid"] {
        let elf = std::fs::read(format!("/work/kernels/{suite}/vmlinux")).unwrap();
        let img = ImageCopy::from_vmlinux(&elf, 1 << 30).unwrap();
        let t0 = std::time::Instant::now();
        let r = decode(&img, Anchors::default());
        let dt = t0.elapsed();
        match r {
            Ok((t, rep)) => println!("{suite}: {:?} {} {:?} {:?}", dt, rep.description, t.get("_text"), t.get("linux_banner")),
            Err(e) => println!("{suite}: {:?} ERR {e}", dt),
        }
    }
}
