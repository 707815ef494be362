#!/usr/bin/env python3
"""process-list: every process of a live Linux guest, like LibVMI's vmi-process-list,
without a profile (symbols and types from the guest's own kallsyms and BTF).

    process_list.py --qmp /tmp/qmp.sock
    process_list.py --kvmi /tmp/kvmi.sock
"""

import argparse
import sys

import vmi


def open_target(args):
    if args.qmp:
        return vmi.open_qemu(args.qmp, gdb=args.gdb)
    return vmi.open_kvmi(args.kvmi, secret=args.secret.encode() if args.secret else None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--qmp", help="QMP socket of an unpatched QEMU")
    g.add_argument("--kvmi", help="KVMi listener socket (a KVM-VMI host connects to it)")
    p.add_argument("--gdb", help="QEMU's GDB stub socket (optional)")
    p.add_argument("--secret", help="KVMi cookie secret")
    args = p.parse_args()
    try:
        with open_target(args) as vm, vm.pause():
            linux = vm.linux()
            print(linux.banner)
            print(f"{'PID':>7} {'PPID':>7} {'UID':>5} {'S':>2} {'PGD':>18}  {'COMM':<16} CMDLINE")
            for proc in linux.processes():
                try:
                    cmdline = " ".join(linux.cmdline(proc.pid))
                except vmi.VmiError:
                    cmdline = ""
                pgd = f"{proc.pgd:#x}" if proc.pgd is not None else "-"
                name = f"[{proc.comm}]" if proc.kernel_thread else proc.comm
                print(f"{proc.pid:>7} {proc.ppid:>7} {proc.uid:>5} {proc.state:>2} {pgd:>18}  {name:<16} {cmdline}")
    except vmi.VmiError as e:
        print(f"process-list: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
