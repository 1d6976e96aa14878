//! HTTP API unit tests.
