//! The protocol's commands on top of the packet exchange: memory, threads, registers,
//! breakpoints, running and stopping, monitor commands, detach.

use std::time::Duration;

use vmi_core::{Deadline, Error, Result};

use super::super::codec::{self, StopReason};
use super::{BreakpointKind, GdbClient};

impl GdbClient {
    /// Switches `m`/`M` between guest-virtual (false) and guest-physical (true)
    /// addresses (QEMU `Qqemu.PhyMemMode`).
    pub fn set_physical_mode(&mut self, physical: bool) -> Result<()> {
        let cmd = if physical {
            "Qqemu.PhyMemMode:1"
        } else {
            "Qqemu.PhyMemMode:0"
        };
        self.command_ok(cmd.as_bytes())
    }

    /// Reads memory in the current addressing mode, in packet-sized chunks.
    pub fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        // Hex doubles the size; leave room for framing.
        let chunk = (self.packet_size.saturating_sub(32) / 2).max(16);
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(chunk);
            let a = addr
                .checked_add(done as u64)
                .ok_or(Error::UnmappedPhysical {
                    gpa: vmi_core::Gpa(addr),
                    len: buf.len() as u64,
                })?;
            let reply = self
                .command(format!("m{a:x},{n:x}").as_bytes())
                .map_err(|e| match e {
                    Error::Backend { .. } => Error::UnmappedPhysical {
                        gpa: vmi_core::Gpa(a),
                        len: n as u64,
                    },
                    other => other,
                })?;
            let bytes = codec::from_hex(&reply)?;
            if bytes.is_empty() || bytes.len() > n {
                return Err(Error::malformed("gdbstub", "memory reply of wrong length"));
            }
            buf[done..done + bytes.len()].copy_from_slice(&bytes);
            done += bytes.len();
        }
        Ok(())
    }

    /// Writes memory in the current addressing mode.
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        let chunk = (self.packet_size.saturating_sub(64) / 2).max(16);
        for (i, part) in data.chunks(chunk).enumerate() {
            let a = addr.wrapping_add((i * chunk) as u64);
            let cmd = format!("M{a:x},{:x}:{}", part.len(), codec::to_hex(part));
            self.command_ok(cmd.as_bytes())?;
        }
        Ok(())
    }

    /// Selects the thread (vCPU + 1) for register and step operations (`Hg`, `Hc`),
    /// sending only what is not selected already.
    pub fn select_thread(&mut self, thread: u64) -> Result<()> {
        self.select_register_thread(thread)?;
        if self.c_thread != Some(thread) {
            self.command_ok(format!("Hc{thread:x}").as_bytes())?;
            self.c_thread = Some(thread);
        }
        Ok(())
    }

    /// Selects the thread for register access only (`Hg`), if it is not selected.
    pub fn select_register_thread(&mut self, thread: u64) -> Result<()> {
        if self.g_thread != Some(thread) {
            self.g_thread = None;
            self.command_ok(format!("Hg{thread:x}").as_bytes())?;
            self.g_thread = Some(thread);
        }
        Ok(())
    }

    /// The `g` packet of `thread` (raw bytes laid out per [`Self::registers`]): from
    /// the last read if the target has not run and no register was written since,
    /// else `Hg` (if needed) and `g`.
    pub fn thread_registers(&mut self, thread: u64) -> Result<Vec<u8>> {
        if let Some((t, raw)) = &self.g_cache {
            if *t == thread {
                return Ok(raw.clone());
            }
        }
        self.select_register_thread(thread)?;
        let raw = self.read_all_registers()?;
        self.g_cache = Some((thread, raw.clone()));
        Ok(raw)
    }

    /// Lists the stub's threads (vCPUs on QEMU).
    pub fn threads(&mut self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut reply = self.command(b"qfThreadInfo")?;
        loop {
            match reply.split_first() {
                Some((b'm', ids)) => {
                    for id in ids.split(|&b| b == b',') {
                        // Multiprocess form `p<pid>.<tid>`, else `<tid>`.
                        if let Some(rest) = id.strip_prefix(b"p") {
                            let pid = rest.split(|&c| c == b'.').next().unwrap_or(rest);
                            self.process = Some(codec::parse_hex_u64(pid)?);
                        }
                        let id = id.rsplit(|&c| c == b'.').next().unwrap_or(id);
                        out.push(codec::parse_hex_u64(id.strip_prefix(b"p").unwrap_or(id))?);
                        if out.len() > 4096 {
                            return Err(Error::malformed("gdbstub", "too many threads"));
                        }
                    }
                }
                Some((b'l', _)) | None => break,
                _ => return Err(Error::malformed("gdbstub", "bad thread list")),
            }
            reply = self.command(b"qsThreadInfo")?;
        }
        Ok(out)
    }

    /// Reads all registers (`g`), as raw bytes laid out per [`Self::registers`].
    pub fn read_all_registers(&mut self) -> Result<Vec<u8>> {
        let r = self.command(b"g")?;
        codec::from_hex(&r)
    }

    /// Reads one register by number (`p`), little-endian bytes.
    pub fn read_register(&mut self, regnum: usize) -> Result<Vec<u8>> {
        let r = self.command(format!("p{regnum:x}").as_bytes())?;
        codec::from_hex(&r)
    }

    /// Writes one register by number (`P`), little-endian bytes.
    pub fn write_register(&mut self, regnum: usize, value: &[u8]) -> Result<()> {
        self.command_ok(format!("P{regnum:x}={}", codec::to_hex(value)).as_bytes())
    }

    /// Reads a named register as an integer (up to 8 bytes, little-endian).
    pub fn read_register_u64(&mut self, name: &str) -> Result<u64> {
        let desc = self.register(name).cloned().ok_or_else(|| {
            Error::unsupported(format!("register {name}"), "not in the target description")
        })?;
        let bytes = self.read_register(desc.regnum)?;
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        Ok(u64::from_le_bytes(b))
    }

    /// Inserts a breakpoint or watchpoint (`Z`); `len` is the kind for software/hardware
    /// breakpoints (1 on x86) and the watched length for watchpoints.
    pub fn insert_breakpoint(&mut self, kind: BreakpointKind, addr: u64, len: u64) -> Result<()> {
        self.command_ok(format!("Z{},{addr:x},{len:x}", kind.z_type()).as_bytes())
    }

    /// Removes a breakpoint or watchpoint (`z`).
    pub fn remove_breakpoint(&mut self, kind: BreakpointKind, addr: u64, len: u64) -> Result<()> {
        self.command_ok(format!("z{},{addr:x},{len:x}", kind.z_type()).as_bytes())
    }

    /// Reads QEMU's single-step mask (`qqemu.sstep`).
    pub fn sstep_flags(&mut self) -> Result<u64> {
        let r = self.command(b"qqemu.sstep")?;
        let v = r.strip_prefix(b"0x").unwrap_or(&r);
        codec::parse_hex_u64(v)
    }

    /// Sets QEMU's single-step mask (`Qqemu.sstep`; 1 = enable, 2 = no IRQs, 4 = no
    /// timers).
    pub fn set_sstep_flags(&mut self, flags: u64) -> Result<()> {
        self.command_ok(format!("Qqemu.sstep={flags:x}").as_bytes())
    }

    /// Resumes all vCPUs (`c`) without waiting for a stop.
    pub fn resume(&mut self) -> Result<()> {
        self.stashed_stop = None;
        self.send_packet(b"c", Deadline::after(self.timeout))
    }

    /// Single-steps the selected thread (`s`) and waits for the stop.
    pub fn step(&mut self) -> Result<StopReason> {
        self.stashed_stop = None;
        let deadline = Deadline::after(self.timeout);
        self.send_packet(b"s", deadline)?;
        self.wait_stop_until(deadline)?.ok_or(Error::Timeout {
            what: "single step".into(),
            after: self.timeout,
        })
    }

    /// Single-steps one vCPU thread while the others stay stopped (`vCont;s:<tid>`).
    pub fn step_thread(&mut self, thread: u64) -> Result<StopReason> {
        self.stashed_stop = None;
        let deadline = Deadline::after(self.timeout);
        self.send_packet(format!("vCont;s:{thread:x}").as_bytes(), deadline)?;
        self.wait_stop_until(deadline)?.ok_or(Error::Timeout {
            what: "single step".into(),
            after: self.timeout,
        })
    }

    /// Stops a running target (the `0x03` interrupt byte) and waits for the stop reply.
    pub fn interrupt(&mut self) -> Result<StopReason> {
        self.counters.interrupts += 1;
        self.send_raw(&[0x03])?;
        self.wait_stop(self.timeout)?.ok_or(Error::Timeout {
            what: "stop after interrupt".into(),
            after: self.timeout,
        })
    }

    /// Waits up to `timeout` for a stop reply after [`Self::resume`]. `Ok(None)` if the
    /// target is still running.
    pub fn wait_stop(&mut self, timeout: Duration) -> Result<Option<StopReason>> {
        self.wait_stop_until(Deadline::after(timeout))
    }

    /// [`Self::wait_stop`] until `deadline`.
    fn wait_stop_until(&mut self, deadline: Deadline) -> Result<Option<StopReason>> {
        if let Some(s) = self.stashed_stop.take() {
            return Ok(Some(s));
        }
        let mut polled = false;
        loop {
            if let Some(p) = self.try_take_packet()? {
                match p.first() {
                    Some(b'T' | b'S' | b'W' | b'X') => {
                        let stop = codec::parse_stop_reply(&p)?;
                        self.note_stop(&stop);
                        return Ok(Some(stop));
                    }
                    _ => continue, // console output
                }
            }
            // The first read is made even at a zero timeout: a poll sees a stop that
            // was already sent.
            let read = if std::mem::replace(&mut polled, true) {
                self.fill(deadline)
            } else {
                self.read_more(deadline)
            };
            match read {
                Ok(()) => {}
                Err(Error::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a monitor (HMP) command through the stub (`qRcmd`) and returns its output.
    pub fn monitor(&mut self, cmd: &str) -> Result<String> {
        let deadline = Deadline::after(self.timeout);
        self.send_packet(
            format!("qRcmd,{}", codec::to_hex(cmd.as_bytes())).as_bytes(),
            deadline,
        )?;
        let mut out = Vec::new();
        loop {
            let p = self.recv_packet(deadline)?;
            if p == b"OK" {
                break;
            }
            match p.split_first() {
                Some((b'O', hex)) if !hex.is_empty() => out.extend(codec::from_hex(hex)?),
                _ if p.is_empty() => {
                    return Err(Error::unsupported(
                        "gdbstub qRcmd",
                        "not supported by the stub",
                    ))
                }
                _ => {
                    out.extend_from_slice(&codec::from_hex(&p).unwrap_or_default());
                    break;
                }
            }
            if out.len() > codec::MAX_PACKET * 4 {
                return Err(Error::malformed("gdbstub", "monitor output too large"));
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The process id of the stub's multiprocess thread ids, if [`Self::threads`] saw
    /// them.
    pub fn multiprocess_id(&self) -> Option<u64> {
        self.process
    }

    /// The detach packet in the form the stub expects: `D;<pid>` once it uses
    /// multiprocess thread ids (QEMU keeps the mode an earlier client such as gdb
    /// negotiated, although we send `qSupported:multiprocess-`, and then refuses a plain
    /// `D` with `E22`), else `D`.
    fn detach_packet(&self) -> Vec<u8> {
        match self.process {
            Some(pid) => format!("D;{pid:x}").into_bytes(),
            None => b"D".to_vec(),
        }
    }

    /// Detaches: QEMU removes all breakpoints and resumes the guest. Sends `D;<pid>` or
    /// `D` (see [`Self::multiprocess_id`]); if the stub refuses that form (`E nn`), the
    /// other one, with pid 1 (QEMU's only process in system emulation).
    pub fn detach(&mut self) -> Result<()> {
        let first = self.detach_packet();
        match self.command_ok(&first) {
            Err(Error::Backend { .. }) => {
                let other: &[u8] = if self.process.is_some() { b"D" } else { b"D;1" };
                self.command_ok(other)
            }
            r => r,
        }
    }
}
