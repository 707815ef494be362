//! Linux OS awareness for virtual machine introspection, read from the guest itself.
//!
//! (Being written.)

pub mod error;
pub mod image;
pub mod kallsyms;
pub mod symbols;
pub mod types;

pub use error::{Error, Result};
pub use image::ImageCopy;
pub use symbols::{Symbol, SymbolTable, SymbolTableBuilder};
pub use types::{Field, Types};
