//! VMCOREINFO: the `KEY=value` note the kernel writes at boot for crash tools
//! (CONFIG_CRASH_CORE / CONFIG_VMCORE_INFO). It names the release, the KASLR offset and
//! the runtime addresses of key symbols — since 6.0 also the kallsyms tables.
//!
//! It reaches us two ways: from a dump's `VMCOREINFO` ELF note (QEMU with
//! `-device vmcoreinfo`, see `vmi_dump::ElfDump::vmcoreinfo`) given to
//! [`crate::LinuxOptions::vmcoreinfo`], where it locates kallsyms directly; or read from
//! guest memory through the `vmcoreinfo_data` symbol after attaching, where it
//! cross-checks what was derived ([`crate::Linux::vmcoreinfo`]).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::kallsyms::KallsymsTables;

/// Largest note accepted (the kernel's buffer is one page; QEMU's note at most 4 KiB).
pub const MAX_VMCOREINFO: usize = 64 << 10;

/// A parsed VMCOREINFO note.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vmcoreinfo {
    /// Every `KEY=value` line, in order.
    pub entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Vmcoreinfo {
    /// Parses the note's text; lines without `=` and NULs are ignored. Refuses text over
    /// [`MAX_VMCOREINFO`] bytes.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_VMCOREINFO {
            return Err(Error::Limit {
                what: "VMCOREINFO size",
                limit: MAX_VMCOREINFO as u64,
            });
        }
        let mut v = Self::default();
        for line in text.split(['\n', '\0']) {
            if let Some((k, val)) = line.split_once('=') {
                v.index.insert(k.to_owned(), v.entries.len());
                v.entries.push((k.to_owned(), val.to_owned()));
            }
        }
        if v.entries.is_empty() {
            return Err(Error::malformed("VMCOREINFO", "no KEY=value line"));
        }
        Ok(v)
    }

    /// The value of `key` (`OSRELEASE`, `SYMBOL(init_task)`, `NUMBER(phys_base)`, …).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|&i| self.entries[i].1.as_str())
    }

    /// `OSRELEASE`.
    pub fn osrelease(&self) -> Option<&str> {
        self.get("OSRELEASE")
    }

    /// `SYMBOL(name)`: a runtime address (hex in the note).
    pub fn symbol(&self, name: &str) -> Option<u64> {
        u64::from_str_radix(self.get(&format!("SYMBOL({name})"))?, 16).ok()
    }

    /// `KERNELOFFSET`: the KASLR slide of the kernel image (hex).
    pub fn kernel_offset(&self) -> Option<u64> {
        u64::from_str_radix(self.get("KERNELOFFSET")?, 16).ok()
    }

    /// The kallsyms tables it names (6.0+; without markers, which the decoder finds).
    pub fn kallsyms_tables(&self) -> Option<KallsymsTables> {
        let t = KallsymsTables {
            names: self.symbol("kallsyms_names"),
            num_syms: self.symbol("kallsyms_num_syms"),
            token_table: self.symbol("kallsyms_token_table"),
            token_index: self.symbol("kallsyms_token_index"),
            offsets: self.symbol("kallsyms_offsets"),
            relative_base: self.symbol("kallsyms_relative_base"),
            ..KallsymsTables::default()
        };
        (t.names.is_some() && t.token_table.is_some()).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_format() {
        let v = Vmcoreinfo::parse(
            "OSRELEASE=6.1.0-57-cloud-amd64\nPAGESIZE=4096\nSYMBOL(init_task)=ffffffffaa01aa40\n\
             SYMBOL(kallsyms_names)=ffffffffa9775590\nSYMBOL(kallsyms_token_table)=ffffffffa98c9d08\n\
             KERNELOFFSET=28600000\n\0\0",
        )
        .unwrap();
        assert_eq!(v.osrelease(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(v.symbol("init_task"), Some(0xffff_ffff_aa01_aa40));
        assert_eq!(v.kernel_offset(), Some(0x2860_0000));
        let t = v.kallsyms_tables().unwrap();
        assert_eq!(t.names, Some(0xffff_ffff_a977_5590));
        assert_eq!(t.markers, None);
        assert!(Vmcoreinfo::parse("garbage").is_err());
        assert!(Vmcoreinfo::parse(&"A=1\n".repeat(20_000)).is_err());
    }
}
