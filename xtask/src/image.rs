//! The guest initramfs: busybox and an `/init` script that prints test markers; the
//! kernel-matrix guests' variant also carries kernel modules that `/init` loads.

use std::path::Path;

use crate::cpio::Cpio;
use crate::util::{write_if_changed, Result};

/// Kernel symbols whose runtime addresses `/init` prints (those that exist).
///
/// `linux_banner` (a string to find in memory), `init_task` / `init_mm` / `init_top_pgt`
/// (walk processes and page tables), `page_offset_base` / `phys_base` (the randomized
/// direct map and the kernel's physical load offset), and functions the guest executes
/// all the time (breakpoint targets: the tick loop opens and reads `/proc/uptime` and
/// sleeps every second).
pub(crate) const KALLSYMS: &[&str] = &[
    "_text",
    "_stext",
    "linux_banner",
    "jiffies",
    "init_task",
    "init_mm",
    "init_top_pgt",
    "page_offset_base",
    "vmemmap_base",
    "phys_base",
    "__per_cpu_offset",
    "current_task",
    "pcpu_hot",
    "__x64_sys_getpid",
    "__x64_sys_openat",
    "do_sys_openat2",
    "__x64_sys_read",
    "ksys_read",
    "__x64_sys_clock_nanosleep",
    "__x64_sys_nanosleep",
    "proc_uptime_show",
    "schedule",
];

/// The `/init` script (busybox `sh`, PID 1).
///
/// Markers go to the console one per line as `VMI-TEST <key>=<value>` (see
/// `vmi_tests::markers`). After `VMI-TEST ready` a background loop reads `/proc/uptime`
/// every second and prints `VMI-TEST tick <n>` every 5 s, while the foreground loop runs
/// `<id> <command>` lines from the console, framed by `VMI-CMD begin <id>` and
/// `VMI-CMD end <id> <status>`. `/init` never exits (that would panic the kernel).
///
/// With `modules` (names, in dependency order), `/init` first loads
/// `/lib/modules/<name>.ko` for each with `insmod` and prints `VMI-TEST module
/// <name>=loaded` (or `=failed`); without, the script is the default guest's.
pub(crate) fn init_script(modules: &[String]) -> String {
    let syms = KALLSYMS.join(" ");
    let load_modules = if modules.is_empty() {
        String::new()
    } else {
        format!(
            "for m in {}; do\n    if insmod /lib/modules/$m.ko; then s=loaded; else \
             s=failed; fi\n    echo \"VMI-TEST module $m=$s\"\ndone\n",
            modules.join(" ")
        )
    };
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
stty -echo -onlcr 2>/dev/null
echo 0 > /proc/sys/kernel/kptr_restrict
echo 1 > /proc/sys/kernel/printk_ratelimit 2>/dev/null
echo "VMI-TEST banner=$(cat /proc/version)"
echo "VMI-TEST release=$(uname -r)"
echo "VMI-TEST cmdline=$(cat /proc/cmdline)"
# One pass with a hash lookup per line: busybox awk is slow under TCG (~1 s here).
awk 'BEGIN {{ n = split("{syms}", l, " "); for (i = 1; i <= n; i++) want[l[i]] = 1 }}
     ($3 in want) && !seen[$3]++ {{ print "VMI-TEST kallsyms " $3 "=" $1 }}' /proc/kallsyms
echo "VMI-TEST memtotal=$(awk '/^MemTotal:/ {{ print $2 }}' /proc/meminfo)"
echo "VMI-TEST cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "VMI-TEST uptime=$(cut -d' ' -f1 /proc/uptime)"
{load_modules}echo "VMI-TEST ready"
(
    n=0
    while :; do
        cat /proc/uptime >/dev/null
        n=$((n + 1))
        [ $((n % 5)) -eq 0 ] && echo "VMI-TEST tick $n"
        sleep 1
    done
) &
while :; do
    if read -r id cmd; then
        echo "VMI-CMD begin $id"
        sh -c "$cmd" </dev/null 2>&1
        echo "VMI-CMD end $id $?"
    else
        sleep 1
    fi
done
"#
    )
}

/// Builds the initramfs at `out`; returns whether it changed.
pub(crate) fn build_initramfs(busybox: &Path, out: &Path) -> Result<bool> {
    build_initramfs_with_modules(busybox, out, &[])
}

/// Builds an initramfs at `out` whose `/init` loads `modules` (name and uncompressed
/// `.ko`, in dependency order) before `VMI-TEST ready`; returns whether it changed.
pub(crate) fn build_initramfs_with_modules(
    busybox: &Path,
    out: &Path,
    modules: &[(String, Vec<u8>)],
) -> Result<bool> {
    let bb = std::fs::read(busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    let mut cpio = Cpio::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "root", "etc"] {
        cpio.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for init before /init can mount devtmpfs.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.file("bin/busybox", 0o755, &bb);
    cpio.symlink("bin/sh", "busybox");
    if !modules.is_empty() {
        cpio.dir("lib", 0o755);
        cpio.dir("lib/modules", 0o755);
    }
    for (name, ko) in modules {
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, ko);
    }
    let names: Vec<String> = modules.iter().map(|(name, _)| name.clone()).collect();
    cpio.file("init", 0o755, init_script(&names).as_bytes());
    write_if_changed(out, &cpio.finish())
}
