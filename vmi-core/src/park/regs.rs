//! Register access through the parking: reads served from a parked vCPU's cache,
//! writes queued until it is released.

use super::{closed_error, Parking, PauseScope, Wait};
use crate::addr::VcpuId;
use crate::error::Result;
use crate::registers::{RegisterGroups, RegisterSnapshot};

impl Parking {
    /// Registers of `vcpu`: from the cache while it is parked and the cache holds what
    /// is asked, else from `fetch` (whose result is cached while the vCPU stays parked).
    /// `fetch` runs without the lock held.
    pub fn read_registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
        fetch: impl FnOnce(RegisterGroups, &[u32]) -> Result<RegisterSnapshot>,
    ) -> Result<RegisterSnapshot> {
        let mut st = self.wait(self.lock(), Wait::Transition);
        if !st.parked(vcpu) {
            drop(st);
            return fetch(groups, msrs);
        }
        {
            let cache = st.vcpu_mut(vcpu).cache();
            if cache.covers(groups, msrs) {
                return Ok(cache.select(groups, msrs));
            }
        }
        let generation = st.generation;
        drop(st);
        let mut fresh = fetch(groups, msrs)?;
        let mut st = self.lock();
        let v = st.vcpu_mut(vcpu);
        // Queued writes win over what the (not yet written) vCPU reports.
        if let Some(q) = &v.queued {
            fresh.merge(q);
        }
        if st.generation == generation && !st.transition && st.parked(vcpu) {
            // Still the same parking: what was read stays true until the release.
            let cache = st.vcpu_mut(vcpu).cache();
            cache.merge(&fresh);
            return Ok(cache.select(groups, msrs));
        }
        Ok(fresh.select(groups, msrs))
    }

    /// Writes registers of `vcpu`: queued while it is parked (applied when it is
    /// released, with its event's answer or at the end of the pause); otherwise the
    /// vCPU (or, on all-stop backends, the guest) is paused for the write, which is
    /// applied as that pause ends.
    pub fn write_registers(&self, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        self.caps()
            .require_all(crate::event::register_write_capabilities(regs))?;
        self.ops.check_write(vcpu, regs)?;
        {
            let mut st = self.wait(self.lock(), Wait::Transition);
            if st.closed {
                return Err(closed_error());
            }
            if st.parked(vcpu) {
                let v = st.vcpu_mut(vcpu);
                v.cache().merge(regs);
                v.queued
                    .get_or_insert_with(RegisterSnapshot::default)
                    .merge(regs);
                return Ok(());
            }
        }
        let scope = if self.ops.can_pause_vcpu() {
            PauseScope::Vcpu(vcpu)
        } else {
            PauseScope::All
        };
        let guard = self.pause(scope)?;
        {
            let mut st = self.wait(self.lock(), Wait::Transition);
            st.vcpu_mut(vcpu)
                .queued
                .get_or_insert_with(RegisterSnapshot::default)
                .merge(regs);
        }
        guard.resume()
    }
}
