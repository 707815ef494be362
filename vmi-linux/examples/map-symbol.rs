//! `map-symbol`: kernel symbols both ways, like LibVMI's `vmi-map-symbol` — a name to its
//! runtime (KASLR-slid) address, physical address and first bytes, or an address to
//! `symbol+offset`.
//!
//! ```text
//! map-symbol --qmp /tmp/qmp.sock linux_banner
//! map-symbol --qmp /tmp/qmp.sock ffffffff8a2001c0      (hex, with or without 0x)
//! ```

#![allow(missing_docs)]

mod common;

use std::process::ExitCode;

use common::usage;

fn main() -> ExitCode {
    common::main_with("map-symbol", "TARGET NAME|ADDRESS...", |args| {
        if args.positional.is_empty() {
            return Err(usage("name a symbol or an address"));
        }
        common::with_linux(&args, |linux| {
            for what in &args.positional {
                if let Some(va) = linux.symbols().address_of(what) {
                    let pa = linux
                        .kernel_va_to_pa(va)
                        .map_or_else(|e| format!("not mapped ({e})"), |p| format!("{:#x}", p.0));
                    let mut bytes = [0u8; 16];
                    let shown = match linux.kernel_reader().read(va, &mut bytes) {
                        Ok(()) => format!("{bytes:02x?}"),
                        Err(e) => e.to_string(),
                    };
                    println!("{what} = {va:#x} (physical {pa}): {shown}");
                } else if let Some(va) = common::parse_address(what) {
                    match linux.symbols().symbol_at(va) {
                        Some((s, off)) => println!("{va:#x} = {}+{off:#x} ({})", s.name, s.kind),
                        None => println!("{va:#x}: below every symbol"),
                    }
                } else {
                    return Err(format!("{what}: no such symbol").into());
                }
            }
            Ok(())
        })
    })
}
