//! Getting past a breakpoint without a single step, where the instruction allows it.
//!
//! The usual way past a software breakpoint (remove it, step the vCPU, reinsert it) costs
//! three requests and a second debug stop, and under TCG every debug stop and every
//! breakpoint insert or removal makes QEMU drop its whole translated-code cache. Many
//! breakpoints sit on an instruction whose only effect is `RIP += length`: the 5-byte
//! NOP at the entry of every function of a kernel built with ftrace (`call __fentry__`
//! patched to `0f 1f 44 00 00`). For those, writing RIP past the instruction is the same
//! as executing it, in one request and without a second stop.
//!
//! What counts: [`nop_length`] accepts only `90`, `66 90` and `0F 1F /0` (any operand,
//! no memory access) behind `66`/`2E` prefixes, in 64-bit code; anything else is
//! stepped. The caller also requires what makes "only RIP changes" true: the vCPU is
//! not single-stepping (the tool wants the step event), RFLAGS.TF is clear (the guest
//! would expect a #DB after the instruction), the bytes come from guest memory as the
//! vCPU sees it (no `0xCC` of a KVM software breakpoint there), and the code runs in
//! 64-bit mode (long mode and RIP above 4 GiB: compatibility mode cannot execute there,
//! and 16-bit code would decode the operand differently). One effect is not visible
//! through the stub and is accepted: a NOP right after `STI`/`MOV SS` ends their
//! one-instruction interrupt shadow when executed; skipped, the shadow covers the next
//! instruction instead (no function entry follows an `STI`).

/// RFLAGS trap flag.
pub(super) const RFLAGS_TF: u64 = 1 << 8;
/// EFER long mode active.
pub(super) const EFER_LMA: u64 = 1 << 10;

/// The length of the NOP at the start of `code` (64-bit mode), or `None` if `code` does
/// not start with a whole instruction of the accepted forms.
pub(super) fn nop_length(code: &[u8]) -> Option<u64> {
    let mut i = 0;
    while matches!(code.get(i), Some(0x66 | 0x2e)) {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    // `90` is NOP in 64-bit mode (not `xchg eax, eax`, which would clear RAX's top
    // half); `66 90` is `xchg ax, ax`. A segment prefix on it means nothing either.
    if code.get(i) == Some(&0x90) {
        return Some(i as u64 + 1);
    }
    if code.get(i..i + 2) != Some(&[0x0f, 0x1f]) {
        return None;
    }
    i += 2;
    let modrm = *code.get(i)?;
    i += 1;
    if (modrm >> 3) & 7 != 0 {
        return None; // 0F 1F /1–/7 are reserved hint NOPs: not assumed.
    }
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md != 3 {
        if rm == 4 {
            let sib = *code.get(i)?;
            i += 1;
            if md == 0 && sib & 7 == 5 {
                i += 4; // SIB without base: disp32
            }
        }
        i += match (md, rm) {
            (0, 5) => 4, // RIP-relative disp32
            (0, _) => 0,
            (1, _) => 1,
            _ => 4,
        };
    }
    (i <= code.len()).then_some(i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recommended_nops_have_their_lengths() {
        // The multi-byte NOPs of the Intel SDM (vol. 2B, NOP), 1 to 9 bytes, and the
        // 10-byte form assemblers emit.
        let forms: [&[u8]; 10] = [
            &[0x90],
            &[0x66, 0x90],
            &[0x0f, 0x1f, 0x00],
            &[0x0f, 0x1f, 0x40, 0x00],
            &[0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x0f, 0x1f, 0x80, 0, 0, 0, 0],
            &[0x0f, 0x1f, 0x84, 0x00, 0, 0, 0, 0],
            &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0, 0, 0, 0],
            &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0, 0, 0, 0],
        ];
        for f in forms {
            let mut code = f.to_vec();
            code.extend_from_slice(&[0x55, 0x48, 0x89, 0xe5]); // push rbp; mov rbp, rsp
            assert_eq!(nop_length(&code), Some(f.len() as u64), "{f:02x?}");
            // Cut short: not a whole instruction.
            assert_eq!(nop_length(&f[..f.len() - 1]), None, "{f:02x?} cut");
        }
        assert_eq!(nop_length(&[0x0f, 0x1f, 0xc0]), Some(3)); // nop eax
        assert_eq!(nop_length(&[0x0f, 0x1f, 0x05, 1, 2, 3, 4]), Some(7)); // [rip+d32]
        assert_eq!(nop_length(&[0x0f, 0x1f, 0x04, 0x25, 1, 2, 3, 4]), Some(8)); // [d32]
    }

    #[test]
    fn everything_else_is_stepped() {
        for code in [
            &[0xcc][..],                           // int3 (a KVM software breakpoint)
            &[0xf3, 0x0f, 0x1e, 0xfa],             // endbr64: IBT state
            &[0xf3, 0x90],                         // pause
            &[0x41, 0x90],                         // xchg r8d, eax
            &[0x0f, 0x1f],                         // truncated
            &[0x0f, 0x1f, 0x48, 0x00],             // 0F 1F /1
            &[0xf0, 0x0f, 0x1f, 0x00],             // lock: #UD
            &[0x55],                               // push rbp
            &[0xe8, 0, 0, 0, 0],                   // call __fentry__ (not patched)
            &[0x66, 0x66, 0x66, 0x66, 0x66, 0x90], // too many prefixes
            &[],
        ] {
            assert_eq!(nop_length(code), None, "{code:02x?}");
        }
    }
}
