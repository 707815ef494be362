//! Processes and threads: the task list, each task's identity, state, credentials and
//! address space, and the task running on each vCPU.

use vmi_core::{
    AddressSpace, Gpa, Gva, PhysicalMemory, PhysicalMemoryWrite, ReadRegisters, VcpuId,
};

use crate::error::{Error, Result};
use crate::linux::Linux;
use crate::reader::Reader;

/// At most this many tasks are walked (a looping list is an error, not a hang).
pub const MAX_TASKS: usize = 1 << 20;
/// At most this many bytes of a command line or environment are read.
pub const MAX_ARGS: usize = 1 << 20;

/// `PF_KTHREAD` in `task_struct.flags` (stable since 2.6).
const PF_KTHREAD: u64 = 0x0020_0000;
/// `PF_WQ_WORKER`: a workqueue worker, which /proc names by `comm` (plus what it works
/// on), never by the kthread's full name.
const PF_WQ_WORKER: u64 = 0x20;

/// A task's scheduling state as `/proc/PID/status` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// `R (running)`.
    Running,
    /// `S (sleeping)`.
    Sleeping,
    /// `D (disk sleep)`.
    DiskSleep,
    /// `T (stopped)`.
    Stopped,
    /// `t (tracing stop)`.
    TracingStop,
    /// `X (dead)`.
    Dead,
    /// `Z (zombie)`.
    Zombie,
    /// `P (parked)`.
    Parked,
    /// `I (idle)`.
    Idle,
}

/// The report states in `fls()` order (index 0 = running), as the kernel's
/// `task_state_array`; the bit values are the kernel ABI since 4.14.
const STATES: [(TaskState, char, &str); 9] = [
    (TaskState::Running, 'R', "running"),
    (TaskState::Sleeping, 'S', "sleeping"),
    (TaskState::DiskSleep, 'D', "disk sleep"),
    (TaskState::Stopped, 'T', "stopped"),
    (TaskState::TracingStop, 't', "tracing stop"),
    (TaskState::Dead, 'X', "dead"),
    (TaskState::Zombie, 'Z', "zombie"),
    (TaskState::Parked, 'P', "parked"),
    (TaskState::Idle, 'I', "idle"),
];
/// `TASK_REPORT`: the state bits /proc reports.
const TASK_REPORT: u64 = 0x7f;
/// `TASK_IDLE` = TASK_UNINTERRUPTIBLE | TASK_NOLOAD.
const TASK_IDLE: u64 = 0x402;

impl TaskState {
    /// The state the kernel reports for `__state` / `state` and `exit_state` (the
    /// kernel's `__task_state_index`).
    pub fn from_raw(state: u64, exit_state: u64) -> Self {
        if state == TASK_IDLE && exit_state == 0 {
            return TaskState::Idle;
        }
        let bits = (state | exit_state) & TASK_REPORT;
        let index = if bits == 0 {
            0
        } else {
            64 - bits.leading_zeros() as usize
        };
        STATES[index.min(STATES.len() - 1)].0
    }

    /// The letter `ps` and `/proc` print.
    pub fn letter(self) -> char {
        STATES.iter().find(|s| s.0 == self).map_or('?', |s| s.1)
    }

    /// The word `/proc/PID/status` prints in parentheses.
    pub fn name(self) -> &'static str {
        STATES.iter().find(|s| s.0 == self).map_or("?", |s| s.2)
    }
}

/// One task (a process's thread-group leader, or a thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Address of its `task_struct`.
    pub task: u64,
    /// Thread id (`pid` in the kernel).
    pub pid: u32,
    /// Process id (`tgid`).
    pub tgid: u32,
    /// The parent's process id (`real_parent->tgid`; 0 for pid 0, 1 and 2's parent).
    pub ppid: u32,
    /// `comm`: the executable's name, at most 15 bytes.
    pub comm: String,
    /// The name `/proc/PID/status` shows: `comm`, or a kernel thread's full name when
    /// `comm` cut it (5.17+; not for workqueue workers, which /proc shows as `comm` plus
    /// the work they run, `kworker/0:0-rcu_gp`).
    pub name: String,
    /// Scheduling state.
    pub state: TaskState,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// A kernel thread (`PF_KTHREAD`): no user address space.
    pub kernel_thread: bool,
    /// Its `mm_struct` (0 for kernel threads).
    pub mm: u64,
    /// The physical address of its top-level page table (`mm->pgd` translated through
    /// the kernel's page tables, never by subtracting a direct-map constant).
    pub pgd: Option<Gpa>,
}

impl<V: PhysicalMemory + ReadRegisters> Linux<V> {
    fn read_task(&self, r: &Reader<'_, V>, task: u64) -> Result<Process> {
        let t = &self.task;
        let pid = r.u32(task + t.pid.offset)?;
        let tgid = r.u32(task + t.tgid.offset)?;
        let comm = r.cstr(task + t.comm.offset, t.comm.size.min(64) as usize)?;
        let state = r.uint(task + t.state.offset, t.state.size)?;
        let exit_state = r.uint(task + t.exit_state.offset, t.exit_state.size)?;
        let flags = r.uint(task + t.flags.offset, t.flags.size)?;
        let parent = r.u64(task + t.real_parent.offset)?;
        let ppid = if parent == 0 || parent == task {
            0
        } else {
            r.u32(parent + t.tgid.offset)?
        };
        let ppid = if pid == 0 { 0 } else { ppid };
        let cred = r.u64(task + t.real_cred.offset)?;
        let (uid, gid) = if cred == 0 {
            (0, 0)
        } else {
            (
                r.u32(cred + t.cred_uid.offset)?,
                r.u32(cred + t.cred_gid.offset)?,
            )
        };
        let kernel_thread = flags & PF_KTHREAD != 0;
        let name = match t.kthread_full_name {
            Some((worker, full)) if kernel_thread && flags & PF_WQ_WORKER == 0 => {
                let kthread = r.u64(task + worker.offset)?;
                let p = if kthread == 0 {
                    0
                } else {
                    r.u64(kthread + full.offset)?
                };
                if p == 0 {
                    comm.clone()
                } else {
                    r.cstr(p, 256)?
                }
            }
            _ => comm.clone(),
        };
        let mm = r.u64(task + t.mm.offset)?;
        let pgd = if mm == 0 {
            None
        } else {
            let layout = self.mm_layout()?;
            let pgd_va = r.u64(mm + layout.pgd.offset)?;
            Some(self.kernel_va_to_pa(pgd_va)?)
        };
        Ok(Process {
            task,
            pid,
            tgid,
            ppid,
            comm,
            name,
            state: TaskState::from_raw(state, exit_state),
            uid,
            gid,
            kernel_thread,
            mm,
            pgd,
        })
    }

    /// The physical address of a kernel virtual address.
    pub fn kernel_va_to_pa(&self, va: u64) -> Result<Gpa> {
        let s = self.kernel().kernel_space;
        Ok(vmi_core::translate(self.vm(), s.mode, s.cr3, Gva(va))?.gpa)
    }

    /// The task at `task` (a `task_struct` address).
    pub fn task(&self, task: u64) -> Result<Process> {
        self.read_task(&self.kernel_reader(), task)
    }

    /// Every process (thread-group leader) on the kernel's task list, `init_task` (pid 0,
    /// the idle task) first, as `ps` lists them plus pid 0.
    pub fn processes(&self) -> Result<Vec<Process>> {
        let r = self.kernel_reader();
        let head = self.init_task + self.task.tasks.offset;
        let nodes = r.list(head, MAX_TASKS, "task list")?;
        let mut out = Vec::with_capacity(nodes.len() + 1);
        out.push(self.read_task(&r, self.init_task)?);
        for node in nodes {
            out.push(self.read_task(&r, node - self.task.tasks.offset)?);
        }
        Ok(out)
    }

    /// The process with process id `pid`.
    pub fn process(&self, pid: u32) -> Result<Process> {
        self.processes()?
            .into_iter()
            .find(|p| p.tgid == pid)
            .ok_or_else(|| Error::not_found("process", format!("pid {pid}")))
    }

    /// Every thread of `process` (itself included), from its signal struct's thread list.
    pub fn threads(&self, process: &Process) -> Result<Vec<Process>> {
        let r = self.kernel_reader();
        let t = &self.task;
        let signal = r.u64(process.task + t.signal.offset)?;
        if signal == 0 {
            return Ok(vec![process.clone()]);
        }
        let nodes = r.list(
            signal + t.signal_thread_head.offset,
            MAX_TASKS,
            "thread list",
        )?;
        nodes
            .into_iter()
            .map(|n| self.read_task(&r, n - t.thread_node.offset))
            .collect()
    }

    /// The address space of `process` (its own page tables; the kernel's paging mode).
    pub fn process_space(&self, process: &Process) -> Result<AddressSpace> {
        let pgd = process.pgd.ok_or_else(|| Error::Unavailable {
            what: "user address space",
            reason: format!("pid {} ({}) is a kernel thread", process.pid, process.comm).into(),
        })?;
        Ok(self.kernel().kernel_space.with_cr3(pgd))
    }

    /// Reads `buf.len()` bytes of the virtual memory of process `pid` (LibVMI's
    /// `vmi_read_va` with a pid).
    pub fn read_process_memory(&self, pid: u32, va: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.process(pid)?;
        let space = self.process_space(&p)?;
        Reader::new(self.vm(), space).read(va, buf)
    }

    /// Writes `data` into the virtual memory of process `pid`, page by page through its
    /// page tables (LibVMI's `vmi_write_va` with a pid). Stops at the first page that
    /// does not translate (the guest would fault there; nothing is paged in) with the
    /// earlier pages written.
    pub fn write_process_memory(&self, pid: u32, va: u64, data: &[u8]) -> Result<()>
    where
        V: PhysicalMemoryWrite,
    {
        let p = self.process(pid)?;
        let space = self.process_space(&p)?;
        let mut at = va;
        let mut rest = data;
        while !rest.is_empty() {
            let t = vmi_core::translate(self.vm(), space.mode, space.cr3, Gva(at))?;
            let n = usize::try_from(t.bytes_to_page_end())
                .unwrap_or(usize::MAX)
                .min(rest.len());
            self.vm().write_physical(t.gpa, &rest[..n])?;
            rest = &rest[n..];
            at = at.wrapping_add(n as u64);
        }
        Ok(())
    }

    /// The process an event belongs to: the task current on the event's vCPU (its
    /// registers come from the parked vCPU's snapshot, so this costs no round trip for
    /// them).
    pub fn event_process(&self, event: &vmi_core::Event) -> Result<Process> {
        self.current_task(event.vcpu)
    }

    fn user_strings(&self, process: &Process, start_field: bool) -> Result<Vec<String>> {
        if process.mm == 0 {
            return Ok(Vec::new());
        }
        let layout = self.mm_layout()?;
        let r = self.kernel_reader();
        let (s, e) = if start_field {
            (layout.arg_start, layout.arg_end)
        } else {
            (layout.env_start, layout.env_end)
        };
        let start = r.u64(process.mm + s.offset)?;
        let end = r.u64(process.mm + e.offset)?;
        if end <= start {
            return Ok(Vec::new());
        }
        let len = usize::try_from(end - start).unwrap_or(usize::MAX);
        if len > MAX_ARGS {
            return Err(Error::Limit {
                what: "argument/environment area",
                limit: MAX_ARGS as u64,
            });
        }
        let mut buf = vec![0u8; len];
        Reader::new(self.vm(), self.process_space(process)?).read(start, &mut buf)?;
        let mut parts: Vec<String> = buf
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        while parts.last().is_some_and(String::is_empty) {
            parts.pop();
        }
        Ok(parts)
    }

    /// The command line (`argv`), read from the process's own memory
    /// (`mm->arg_start..arg_end`). Kernel threads have none.
    pub fn cmdline(&self, process: &Process) -> Result<Vec<String>> {
        self.user_strings(process, true)
    }

    /// The environment (`KEY=value` strings), read from the process's own memory.
    pub fn environment(&self, process: &Process) -> Result<Vec<String>> {
        self.user_strings(process, false)
    }

    /// The task running on `vcpu` now: the per-CPU `current_task` (or
    /// `pcpu_hot.current_task` on 6.2–6.14) of the CPU whose per-CPU area the vCPU's
    /// kernel GS base points at.
    pub fn current_task(&self, vcpu: VcpuId) -> Result<Process> {
        let facts = crate::kernel_map::vcpu_facts(self.vm(), vcpu)?;
        let r = self.kernel_reader();
        // The kernel's GS base is the CPU's `__per_cpu_offset`, which the address of a
        // per-CPU symbol is added to — whether the symbol is an offset from 0
        // (zero-based per-CPU, x86-64 up to 6.14) or its link address in
        // `.data..percpu` (6.15+).
        let cpu_offset = match facts.kernel_gs_base {
            Some(gs) if gs != 0 => gs,
            _ => {
                // No GS base from the backend: assume vCPU n is CPU n.
                let offsets = self.symbol("__per_cpu_offset")?;
                r.u64(offsets + 8 * u64::from(vcpu.0))?
            }
        };
        let slot = if let Some(ct) = self.symbols().address_of("current_task") {
            ct.wrapping_add(cpu_offset)
        } else {
            let hot = self.symbol("pcpu_hot")?;
            let f = self.types().field("pcpu_hot", "current_task")?;
            hot.wrapping_add(cpu_offset) + f.offset
        };
        let task = r.u64(slot)?;
        self.read_task(&r, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_match_proc() {
        assert_eq!(TaskState::from_raw(0, 0).letter(), 'R');
        assert_eq!(TaskState::from_raw(1, 0).letter(), 'S');
        assert_eq!(TaskState::from_raw(2, 0).letter(), 'D');
        assert_eq!(TaskState::from_raw(0x402, 0).letter(), 'I');
        assert_eq!(TaskState::from_raw(0, 32).letter(), 'Z');
        assert_eq!(TaskState::from_raw(0x100, 16).letter(), 'X');
        assert_eq!(TaskState::from_raw(8, 0).name(), "tracing stop");
    }
}
