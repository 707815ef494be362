//! Synthetic kallsyms tables for the unit tests.
