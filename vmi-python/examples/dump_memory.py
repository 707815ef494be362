#!/usr/bin/env python3
"""dump-memory: writes guest RAM to a raw file (each RAM range at its physical address,
holes left as zeros), with the guest paused for a consistent image — the file
Volatility reads with -f.

    dump_memory.py QMP_SOCKET OUTPUT [--live]
"""

import argparse
import sys

import vmi

CHUNK = 16 << 20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("qmp", help="QMP socket of an unpatched QEMU")
    p.add_argument("output", help="the raw dump to write")
    p.add_argument("--live", action="store_true", help="do not pause the guest")
    args = p.parse_args()
    try:
        with vmi.open_qemu(args.qmp) as vm:
            pause = None if args.live else vm.pause()
            try:
                ranges = vm.memory_ranges()
                print(f"guest RAM ({vm.ram_access}):")
                total = 0
                with open(args.output, "wb") as out:
                    for start, end in ranges:
                        print(f"  {start:#x}-{end:#x} ({(end - start) >> 20} MiB)")
                        out.seek(start)
                        for at in range(start, end, CHUNK):
                            data = vm.read(at, min(CHUNK, end - at))
                            out.write(data)
                            total += len(data)
                    out.truncate(max(e for _, e in ranges))
                print(f"wrote {total} bytes to {args.output}")
            finally:
                if pause is not None:
                    pause.resume()
    except (vmi.VmiError, OSError) as e:
        print(f"dump-memory: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
