//! Unit tests of the kallsyms decoder.
