//! Hard limits of the wire contract (SPEC.md, "Limits").
//!
//! These bound what any decoder accepts before it allocates; configurable limits (frame size,
//! subscriptions per connection) live in the config and may only be tighter.

/// Longest topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 200;
/// Most topics one token may grant.
pub const MAX_TOKEN_TOPICS: usize = 64;
/// Longest token in its base64url text form, in bytes.
pub const MAX_TOKEN_TEXT_BYTES: usize = 16 * 1024;
/// Longest `sub` (subject) claim, in bytes.
pub const MAX_SUB_BYTES: usize = 256;
/// Longest key id, in bytes.
pub const MAX_KID_BYTES: usize = 64;
/// Longest envelope `kind`, in bytes.
pub const MAX_KIND_BYTES: usize = 128;
/// Longest envelope `id`, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Largest encoded envelope frame, payload included, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// Longest `code` in an `error` or `unsubscribed` frame, in bytes.
pub const MAX_ERROR_CODE_BYTES: usize = 64;
/// Longest `message` in an `error` frame, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;
/// Most topics in one `resync` frame (a longer list is sent as several frames).
pub const MAX_RESYNC_TOPICS: usize = 256;
