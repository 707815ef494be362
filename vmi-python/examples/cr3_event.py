#!/usr/bin/env python3
"""cr3-event: prints CR3 writes (address-space switches), like LibVMI's
cr3-event-example. Needs a KVM-VMI host (CR3 exits are not reachable through an
unpatched QEMU).

    cr3_event.py KVMI_SOCKET [--secret S] [--count N]
"""

import argparse
import sys

import vmi


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("socket", help="KVMi listener socket (the host connects to it)")
    p.add_argument("--secret")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    try:
        secret = args.secret.encode() if args.secret else None
        with vmi.open_kvmi(args.socket, secret=secret, timeout=60) as vm:
            seen = 0
            with vm.monitor("cr3"):
                for ev in vm.events(timeout=args.timeout, count=args.count):
                    d = ev.details
                    print(f"vCPU {ev.vcpu} CR3 {d['previous'] or 0:#x} -> {d['value']:#x}")
                    ev.reply()
                    seen += 1
            if seen < args.count:
                print(f"cr3-event: error: only {seen} of {args.count} events", file=sys.stderr)
                return 1
    except vmi.VmiError as e:
        print(f"cr3-event: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
