//! What an application server links: it decides who may read what, and says so with tokens;
//! it stores and publishes envelopes.

pub mod issuer;
pub mod publisher;

pub use issuer::TokenIssuer;
pub use publisher::{Appended, NewEnvelope, PublishError, Publisher};
