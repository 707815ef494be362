#!/usr/bin/env python3
"""breakpoint: traps a guest kernel function by address (or, on a Linux guest, by
symbol) and prints every hit, like LibVMI's breakpoint-example. The breakpoint is
removed on exit, also on Ctrl-C.

    breakpoint.py QMP_SOCKET GDB_SOCKET ADDRESS|SYMBOL [--hits N] [--timeout SECS]
"""

import argparse
import sys

import vmi


def parse_address(text):
    digits = text[2:] if text.lower().startswith("0x") else text
    try:
        return int(digits, 16)
    except ValueError:
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("qmp")
    p.add_argument("gdb")
    p.add_argument("target", help="hex address (with or without 0x) or kernel symbol")
    p.add_argument("--hits", type=int, default=10)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    try:
        with vmi.open_qemu(args.qmp, gdb=args.gdb) as vm:
            address = parse_address(args.target)
            if address is None:
                with vm.pause():
                    address = vm.linux().symbol(args.target)
            seen = 0
            with vm.breakpoint(address):
                print(f"breakpoint at {address:#x} ({args.target}); waiting for {args.hits} hits")
                for ev in vm.events(timeout=args.timeout, count=args.hits):
                    with ev:  # answered (continue) at the end of the block
                        r = ev.registers
                        seen += 1
                        print(
                            f"hit {seen}: vcpu {ev.vcpu} rip {r.rip:#x} gfn {ev.details['gfn']:#x}"
                            f"+{ev.details['offset']:#x} cr3 {r.get('cr3', 0):#x} rdi {r.rdi:#x}"
                            f" rsi {r.rsi:#x} r12 {r.r12:#x}"
                        )
            print(f"{seen} hits; breakpoint removed")
            if seen < args.hits:
                print(f"breakpoint: error: only {seen} of {args.hits} hits", file=sys.stderr)
                return 1
    except vmi.VmiError as e:
        print(f"breakpoint: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
