//! A hostile guest made from a clean one: guest memory (any [`PhysicalMemory`], e.g. a
//! dump) with chosen bytes replaced, and registers with chosen values replaced.
//!
//! The tests corrupt kernel structures (task lists, kallsyms, BTF, page tables) at
//! guest-physical addresses they found by attaching to the clean memory first, then check
//! that introspection of the patched memory fails with a typed error, in bounded time.
//!
//! ```
//! use vmi_core::{Gpa, PhysicalMemory, SparseMemory};
//! use vmi_tests::overlay::Overlay;
//!
//! let mut clean = SparseMemory::new();
//! clean.write_u64(Gpa(0x1000), 0x1111);
//! let mut hostile = Overlay::new(&clean);
//! hostile.patch_u64(0x1004, u64::MAX);
//! assert_eq!(hostile.read_u64(Gpa(0x1000)).unwrap(), 0xffff_ffff_0000_1111);
//! assert_eq!(clean.read_u64(Gpa(0x1000)).unwrap(), 0x1111);
//! ```

use vmi_core::{Gpa, PhysicalMemory, ReadRegisters, RegisterGroups, RegisterSnapshot, VcpuId};

/// Changes a register snapshot before it is returned.
type RegisterPatch = Box<dyn Fn(VcpuId, &mut RegisterSnapshot) + Send + Sync>;

/// `inner` with byte ranges replaced (reads only; `inner` is never written).
///
/// Reads of ranges `inner` cannot serve fail as they do on `inner`: a patch does not
/// make memory exist.
pub struct Overlay<M> {
    inner: M,
    /// `(gpa, bytes)`, later patches win where they overlap.
    patches: Vec<(u64, Vec<u8>)>,
    registers: Option<RegisterPatch>,
}

impl<M> Overlay<M> {
    /// `inner`, unchanged so far.
    pub fn new(inner: M) -> Self {
        Self {
            inner,
            patches: Vec::new(),
            registers: None,
        }
    }

    /// Replaces the bytes at `gpa` with `bytes`.
    pub fn patch(&mut self, gpa: u64, bytes: &[u8]) -> &mut Self {
        self.patches.push((gpa, bytes.to_vec()));
        self
    }

    /// Replaces the little-endian u64 at `gpa`.
    pub fn patch_u64(&mut self, gpa: u64, value: u64) -> &mut Self {
        self.patch(gpa, &value.to_le_bytes())
    }

    /// Replaces the little-endian u32 at `gpa`.
    pub fn patch_u32(&mut self, gpa: u64, value: u32) -> &mut Self {
        self.patch(gpa, &value.to_le_bytes())
    }

    /// Changes every register snapshot read through [`ReadRegisters`] with `f`.
    pub fn patch_registers(
        &mut self,
        f: impl Fn(VcpuId, &mut RegisterSnapshot) + Send + Sync + 'static,
    ) -> &mut Self {
        self.registers = Some(Box::new(f));
        self
    }

    /// The memory underneath.
    pub fn inner(&self) -> &M {
        &self.inner
    }
}

impl<M: PhysicalMemory> PhysicalMemory for Overlay<M> {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> vmi_core::Result<()> {
        self.inner.read_physical(gpa, buf)?;
        let start = gpa.0;
        let end = start.saturating_add(buf.len() as u64);
        for (at, bytes) in &self.patches {
            let p_end = at.saturating_add(bytes.len() as u64);
            let (lo, hi) = ((*at).max(start), p_end.min(end));
            if lo < hi {
                let dst = (lo - start) as usize..(hi - start) as usize;
                let src = (lo - at) as usize..(hi - at) as usize;
                buf[dst].copy_from_slice(&bytes[src]);
            }
        }
        Ok(())
    }
}

impl<M: ReadRegisters> ReadRegisters for Overlay<M> {
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> vmi_core::Result<RegisterSnapshot> {
        let mut regs = self.inner.registers(vcpu, groups, msrs)?;
        if let Some(f) = &self.registers {
            f(vcpu, &mut regs);
        }
        Ok(regs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmi_core::SparseMemory;

    #[test]
    fn patches_overlap_reads_partially_and_in_order() {
        let mut clean = SparseMemory::new();
        clean.write(Gpa(0x1000), &[1; 32]);
        let mut o = Overlay::new(&clean);
        o.patch(0x0ffc, &[9; 8])
            .patch(0x1006, &[7; 4])
            .patch(0x1008, &[5]);
        let mut buf = [0u8; 12];
        o.read_physical(Gpa(0x1000), &mut buf).unwrap();
        assert_eq!(buf, [9, 9, 9, 9, 1, 1, 7, 7, 5, 7, 1, 1]);
        // A patch where the memory has nothing does not create memory.
        let mut o = Overlay::new(&clean);
        o.patch(0x9000, &[1]);
        assert!(o.read_physical(Gpa(0x9000), &mut [0u8; 1]).is_err());
    }
}
