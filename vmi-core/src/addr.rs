//! Address newtypes, page constants and identifiers.
//!
//! Guest physical addresses ([`Gpa`]), guest frame numbers ([`Gfn`]) and guest virtual
//! addresses ([`Gva`]) are distinct types so that a frame number can never be passed
//! where an address is expected. Conversions that could lose bits are fallible.
//!
//! # Address arithmetic
//!
//! Every operation is total: none panics, in debug or release builds, whatever the
//! operands (they come from the guest). The operators pick one semantics per type, on
//! purpose; the `checked_*`, `wrapping_*` and `saturating_*` methods are there when
//! another one is wanted.
//!
//! - [`Gva`] `+`/`-` **wrap** modulo 2^64, as the CPU's linear-address arithmetic does;
//!   `(va + n) - va == n` always. Whether the result is a valid linear address is then
//!   the paging mode's business: the walk faults with
//!   [`PageFaultReason::NonCanonical`](crate::PageFaultReason::NonCanonical) for
//!   addresses that do not exist in the mode.
//! - [`Gpa`] `+` **saturates** at `u64::MAX`: physical addresses do not wrap, and a
//!   saturated address lies above every MAXPHYADDR (≤ 52 bits), so an access there fails
//!   with [`Error::UnmappedPhysical`](crate::Error::UnmappedPhysical) instead of silently
//!   aliasing low memory. `Gpa - Gpa` (a distance) saturates at 0; use
//!   [`Gpa::checked_offset_from`] when the order is not known.

use core::fmt;
use core::ops::{Add, Sub};

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// Size of a base (4 KiB) page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the offset bits inside a base page.
pub const PAGE_MASK: u64 = PAGE_SIZE - 1;
/// Size of a 2 MiB large page (PAE and IA-32e page directory entries).
pub const PAGE_SIZE_2M: u64 = 1 << 21;
/// Size of a 4 MiB large page (32-bit paging with PSE).
pub const PAGE_SIZE_4M: u64 = 1 << 22;
/// Size of a 1 GiB huge page (IA-32e page directory pointer entries).
pub const PAGE_SIZE_1G: u64 = 1 << 30;
/// Largest physical address width x86 defines (MAXPHYADDR ≤ 52).
pub const MAX_PHYSICAL_ADDRESS_BITS: u32 = 52;

macro_rules! address_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// Wraps a raw value.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// Adds `bytes`, or `None` if the result would wrap around.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Subtracts `bytes`, or `None` if the result would go below 0.
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Adds `bytes` modulo 2^64.
            pub const fn wrapping_add(self, bytes: u64) -> Self {
                Self(self.0.wrapping_add(bytes))
            }

            /// Subtracts `bytes` modulo 2^64.
            pub const fn wrapping_sub(self, bytes: u64) -> Self {
                Self(self.0.wrapping_sub(bytes))
            }

            /// Adds `bytes`, stopping at `u64::MAX`.
            pub const fn saturating_add(self, bytes: u64) -> Self {
                Self(self.0.saturating_add(bytes))
            }

            /// Subtracts `bytes`, stopping at 0.
            pub const fn saturating_sub(self, bytes: u64) -> Self {
                Self(self.0.saturating_sub(bytes))
            }

            /// Bytes from `base` up to this address, or `None` if `base` lies above it.
            pub const fn checked_offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// Offset of this address inside its 4 KiB page.
            pub const fn page_offset(self) -> u64 {
                self.0 & PAGE_MASK
            }

            /// This address rounded down to its 4 KiB page.
            pub const fn page_base(self) -> Self {
                Self(self.0 & !PAGE_MASK)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }

    };
}

address_newtype!(
    /// A guest physical address.
    Gpa
);
address_newtype!(
    /// A guest virtual (linear) address.
    Gva
);

impl Gpa {
    /// The frame this address lies in.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }
}

/// Saturates at `u64::MAX`, an address no guest memory has (see the
/// [module documentation](self#address-arithmetic)).
impl Add<u64> for Gpa {
    type Output = Self;
    fn add(self, rhs: u64) -> Self {
        self.saturating_add(rhs)
    }
}

/// Distance in bytes from `rhs` up to `self`; 0 if `rhs` lies above (see
/// [`Gpa::checked_offset_from`]).
impl Sub for Gpa {
    type Output = u64;
    fn sub(self, rhs: Self) -> u64 {
        self.0.saturating_sub(rhs.0)
    }
}

impl Gva {
    /// Sign-extends the low `bits` bits to 64: the canonical form of a 48-bit (4-level
    /// paging) or 57-bit (5-level) linear address.
    ///
    /// Total for every `bits`: the low `bits` bits are read as a two's-complement number
    /// of that width, so `bits >= 64` returns the address unchanged (every 64-bit value
    /// is canonical in a 64-bit space) and `bits == 0` returns 0 (a zero-width number
    /// holds only 0).
    pub const fn canonical(self, bits: u32) -> Self {
        if bits == 0 {
            return Self(0);
        }
        if bits >= 64 {
            return self;
        }
        let shift = 64 - bits;
        Self((((self.0 << shift) as i64) >> shift) as u64)
    }

    /// Whether the address is canonical for a `bits`-wide linear address space (bits
    /// 63 down to `bits - 1` all equal); see [`Gva::canonical`] for `bits` 0 and ≥ 64.
    pub const fn is_canonical(self, bits: u32) -> bool {
        self.canonical(bits).0 == self.0
    }
}

/// Wraps modulo 2^64, like the CPU's linear-address arithmetic (see the
/// [module documentation](self#address-arithmetic)).
impl Add<u64> for Gva {
    type Output = Self;
    fn add(self, rhs: u64) -> Self {
        self.wrapping_add(rhs)
    }
}

/// Distance in bytes from `rhs` to `self`, modulo 2^64, so `(va + n) - va == n`.
impl Sub for Gva {
    type Output = u64;
    fn sub(self, rhs: Self) -> u64 {
        self.0.wrapping_sub(rhs.0)
    }
}

/// A guest frame number: a guest physical address shifted right by [`PAGE_SHIFT`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gfn(pub u64);

impl Gfn {
    /// The largest frame number that still fits a 64-bit address.
    pub const MAX: Gfn = Gfn(u64::MAX >> PAGE_SHIFT);

    /// Wraps a raw frame number.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw frame number.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The physical address of the first byte of this frame, or `None` if the frame
    /// number is too large for a 64-bit address (no silent truncation).
    pub const fn checked_gpa(self) -> Option<Gpa> {
        if self.0 > Self::MAX.0 {
            None
        } else {
            Some(Gpa(self.0 << PAGE_SHIFT))
        }
    }

    /// The physical address of byte `offset` of this frame, or `None` if `offset` is not
    /// inside a page or the frame number is too large.
    pub const fn checked_gpa_at(self, offset: u64) -> Option<Gpa> {
        if offset >= PAGE_SIZE {
            return None;
        }
        match self.checked_gpa() {
            Some(Gpa(base)) => Some(Gpa(base | offset)),
            None => None,
        }
    }

    /// The next frame, or `None` at the end of the address space.
    pub const fn next(self) -> Option<Gfn> {
        if self.0 >= Self::MAX.0 {
            None
        } else {
            Some(Gfn(self.0 + 1))
        }
    }
}

impl From<Gpa> for Gfn {
    fn from(gpa: Gpa) -> Self {
        gpa.gfn()
    }
}

impl TryFrom<Gfn> for Gpa {
    type Error = crate::Error;
    fn try_from(gfn: Gfn) -> Result<Self, Self::Error> {
        gfn.checked_gpa()
            .ok_or_else(|| crate::Error::InvalidArgument {
                what: "gfn",
                reason: format!("frame {:#x} does not fit a 64-bit address", gfn.0).into(),
            })
    }
}

impl fmt::Debug for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gfn({:#x})", self.0)
    }
}

impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Index of a virtual CPU. KVMi addresses vCPUs with 16 bits, so that is the width here;
/// conversions from wider integers are fallible.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VcpuId(pub u16);

impl VcpuId {
    /// The raw index.
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// The index as a `usize`, for indexing per-vCPU tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl From<u16> for VcpuId {
    fn from(v: u16) -> Self {
        Self(v)
    }
}

impl TryFrom<u32> for VcpuId {
    type Error = crate::Error;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        u16::try_from(v)
            .map(Self)
            .map_err(|_| crate::Error::InvalidArgument {
                what: "vcpu",
                reason: format!("vCPU index {v} exceeds 16 bits").into(),
            })
    }
}

impl TryFrom<usize> for VcpuId {
    type Error = crate::Error;
    fn try_from(v: usize) -> Result<Self, Self::Error> {
        u16::try_from(v)
            .map(Self)
            .map_err(|_| crate::Error::InvalidArgument {
                what: "vcpu",
                reason: format!("vCPU index {v} exceeds 16 bits").into(),
            })
    }
}

impl fmt::Debug for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VcpuId({})", self.0)
    }
}

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A second-level address translation view (EPT view / altp2m index). View 0 is the
/// default view every guest has.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
#[repr(transparent)]
pub struct View(pub u16);

impl View {
    /// The default view.
    pub const DEFAULT: View = View(0);
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfn_gpa_round_trip() {
        let gpa = Gpa(0x1234_5678);
        assert_eq!(gpa.gfn(), Gfn(0x12345));
        assert_eq!(gpa.gfn().checked_gpa(), Some(Gpa(0x1234_5000)));
        assert_eq!(Gfn(0x12345).checked_gpa_at(0x678), Some(gpa));
        assert_eq!(Gfn(1).checked_gpa_at(PAGE_SIZE), None);
    }

    #[test]
    fn gfn_overflow_is_refused() {
        assert!(Gfn::MAX.checked_gpa().is_some());
        assert_eq!(Gfn(Gfn::MAX.0 + 1).checked_gpa(), None);
        assert!(Gpa::try_from(Gfn(u64::MAX)).is_err());
        assert_eq!(Gfn::MAX.next(), None);
    }

    #[test]
    fn canonical_addresses() {
        assert_eq!(
            Gva(0x0000_8000_0000_0000).canonical(48),
            Gva(0xffff_8000_0000_0000)
        );
        assert!(Gva(0xffff_ffff_8100_0000).is_canonical(48));
        assert!(!Gva(0x0000_8000_0000_0000).is_canonical(48));
        assert!(Gva(0x0000_8000_0000_0000).is_canonical(57));
    }

    #[test]
    fn canonical_is_total() {
        // These widths used to panic (shift overflow, subtraction underflow).
        assert_eq!(Gva(0x1234).canonical(0), Gva(0));
        assert!(Gva(0).is_canonical(0) && !Gva(1).is_canonical(0));
        for bits in [64, 65, 200, u32::MAX] {
            assert_eq!(Gva(0x8000_0000_0000_0000).canonical(bits).0, 1 << 63);
            assert!(Gva(u64::MAX).is_canonical(bits));
        }
        assert_eq!(Gva(1).canonical(1), Gva(u64::MAX));
        assert_eq!(Gva(0xffff_ffff).canonical(32), Gva(u64::MAX));
        assert_eq!(Gva(0x7fff_ffff).canonical(32), Gva(0x7fff_ffff));
    }

    #[test]
    fn gva_arithmetic_wraps_like_the_cpu() {
        assert_eq!(Gva(u64::MAX) + 1, Gva(0));
        assert_eq!(Gva(0xffff_ffff_ffff_f000) + 0x2000, Gva(0x1000));
        assert_eq!(Gva(0x1000) - Gva(0x3000), (-0x2000i64) as u64);
        assert_eq!((Gva(u64::MAX - 5) + 10) - Gva(u64::MAX - 5), 10);
        assert_eq!(Gva(u64::MAX).checked_add(1), None);
        assert_eq!(Gva(0).wrapping_sub(1), Gva(u64::MAX));
    }

    #[test]
    fn gpa_arithmetic_saturates_to_unbacked_addresses() {
        let top = Gpa(u64::MAX - 0xfff);
        assert_eq!(top + 0x10_0000, Gpa(u64::MAX));
        // The saturated address is backed by no memory: the access fails, it does not
        // alias low memory as wrapping would.
        let mut mem = crate::SparseMemory::new();
        mem.write(Gpa(0xff0), &[0xaa; 16]);
        let mut b = [0u8; 1];
        assert!(matches!(
            crate::PhysicalMemory::read_physical(&mem, top + 0x1ff0, &mut b),
            Err(crate::Error::UnmappedPhysical { .. })
        ));
        assert_eq!(Gpa(0x1000) - Gpa(0x3000), 0);
        assert_eq!(Gpa(0x3000) - Gpa(0x1000), 0x2000);
        assert_eq!(Gpa(0x1000).checked_offset_from(Gpa(0x3000)), None);
        assert_eq!(Gpa(0x3000).checked_offset_from(Gpa(0x1000)), Some(0x2000));
        assert_eq!(Gpa(5).checked_sub(6), None);
        assert_eq!(Gpa(5).saturating_sub(6), Gpa(0));
        assert_eq!(Gpa(u64::MAX).wrapping_add(1), Gpa(0));
    }

    proptest::proptest! {
        #[test]
        fn address_operations_never_panic(a in proptest::num::u64::ANY, b in proptest::num::u64::ANY, bits in 0u32..200) {
            let (va, pa) = (Gva(a), Gpa(a));
            let c = va.canonical(bits);
            proptest::prop_assert!(c.is_canonical(bits), "canonical form is canonical");
            proptest::prop_assert_eq!(c.canonical(bits), c);
            if (1..64).contains(&bits) {
                // Low bits kept, the rest copies of bit `bits - 1`.
                let low = (1u64 << bits) - 1;
                proptest::prop_assert_eq!(c.0 & low, a & low);
                let sign = (a >> (bits - 1)) & 1;
                proptest::prop_assert_eq!(c.0 & !low, if sign == 1 { !low } else { 0 });
            }
            proptest::prop_assert_eq!((va + b) - va, b);
            proptest::prop_assert_eq!(va + b, Gva(a.wrapping_add(b)));
            let sum = pa + b;
            proptest::prop_assert!(sum >= pa);
            proptest::prop_assert_eq!(sum, pa.checked_add(b).unwrap_or(Gpa(u64::MAX)));
            proptest::prop_assert_eq!(pa - Gpa(b), a.saturating_sub(b));
            proptest::prop_assert_eq!(pa.checked_offset_from(Gpa(b)), a.checked_sub(b));
            let _ = (va.page_base(), va.page_offset(), pa.gfn(), va.checked_sub(b), va.saturating_sub(b));
        }
    }

    #[test]
    fn vcpu_conversions_do_not_truncate() {
        assert_eq!(VcpuId::try_from(7u32).unwrap(), VcpuId(7));
        assert!(VcpuId::try_from(0x1_0000u32).is_err());
        assert!(VcpuId::try_from(usize::MAX).is_err());
    }
}
