//! The wire contract: envelopes, frames, tokens, topics and the bus record.
//!
//! Pure code: no I/O, no tokio, no clock reads (`now` is always a parameter), so that every
//! rule here is tested byte for byte and mirrored by SPEC.md for application servers written
//! in any language. Every decoder of untrusted bytes returns a typed error and has a fuzz
//! target under `fuzz/`.

pub mod envelope;
pub mod frame;
pub mod keys;
pub mod limits;
pub mod msgpack;
pub mod routed;
pub mod token;
pub mod topic;

pub use envelope::{Envelope, EnvelopeRef};
pub use frame::{ClientFrame, CloseCode, ErrorCode, ServerFrame};
pub use keys::{KeySet, SigningKeyFile};
pub use routed::Routed;
pub use token::{Claims, TokenError, TokenPolicy};
pub use topic::{Topic, TopicError};
