//! Linux OS awareness for virtual machine introspection, read from the guest itself.
//!
//! (Being written.)

pub mod dmesg;
pub mod error;
pub mod image;
pub mod kallsyms;
pub mod kernel_map;
pub mod layout;
pub mod linux;
pub mod modules;
pub mod object;
pub mod reader;
pub mod symbols;
pub mod tasks;
pub mod types;
pub mod vma;

pub use error::{Error, Result};
pub use image::ImageCopy;
pub use symbols::{Symbol, SymbolTable, SymbolTableBuilder};
pub use types::{Field, Types};
