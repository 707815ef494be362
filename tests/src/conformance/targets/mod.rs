//! The conformance targets of this repository: vmi-legacy on real QEMU guests
//! ([`legacy`]) and vmi-kvm on kvmi-sim ([`kvmi_sim`]).

pub mod kvmi_sim;
pub mod legacy;

use vmi_core::{Error, Gpa, PhysicalMemory, Result};

use crate::Guest;

/// A guest's RAM file read directly: ground truth for memory, and a [`PhysicalMemory`]
/// to walk the guest's page tables without any backend.
pub struct RamFile<'a>(pub &'a Guest);

impl PhysicalMemory for RamFile<'_> {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        if gpa
            .0
            .checked_add(len)
            .is_none_or(|end| end > self.0.ram_size())
        {
            return Err(Error::UnmappedPhysical { gpa, len });
        }
        self.0
            .read_ram(gpa.0, buf)
            .map_err(|e| Error::io("reading the guest's RAM file", e))
    }
}
