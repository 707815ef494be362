//! Fixtures for the integration tests.
