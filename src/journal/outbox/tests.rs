//! Outbox tests.
