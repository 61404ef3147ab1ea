//! What Aether knows about talking to NATS JetStream, in one place, for every layer that talks to
//! it (the JetStream store, the cluster, the test kit):
//!
//! - [`codes`]: JetStream API error codes by name, and what each group of them means to Aether
//!   (a wrong last sequence, a server limit, "still placing peers").
//! - [`classify`]: an async-nats failure classified by its `kind()` and its causes' kinds (never by
//!   message text) as a timeout, "nothing was done", or other; and mapped to
//!   [`aether_core::StoreError`] with context.
//! - [`settle`]: the one policy for "try again while a freshly formed NATS cluster settles"
//!   (timeouts, no responders, no suitable peers), on [`aether_core::Backoff`]; and reads sent
//!   again while no replica serves them yet.
//! - [`publish`]: the fenced publish: header names, the expected last subject sequence (optionally
//!   of another subject), per-message TTLs, and re-sending while nobody answers.
//! - [`permissions`]: the server's permission refusals (`Permissions Violation for Publish to
//!   "<subject>"`), which async-nats reports only to the event callback, heard by a
//!   [`permissions::PermissionWatch`] so that a refused call fails at once naming the subject.
//! - [`server_version`]: the oldest supported nats-server and the version parser.
//!
//! ```
//! use aether_nats::codes::{ErrorCode, is_wrong_last_sequence, server_limit};
//! use aether_core::ServerLimit;
//!
//! assert!(is_wrong_last_sequence(ErrorCode::STREAM_WRONG_LAST_SEQUENCE));
//! assert_eq!(server_limit(ErrorCode::MAXIMUM_CONSUMERS_LIMIT), Some(ServerLimit::Consumers));
//! ```
//!
//! Nothing outside this crate matches a JetStream error code or hand-rolls a retry schedule
//! (`cargo xtask tidy` checks both).

pub mod classify;
pub mod codes;
pub mod direct;
pub mod permissions;
pub mod publish;
pub mod server_version;
pub mod settle;
pub mod token;

pub use async_nats;
