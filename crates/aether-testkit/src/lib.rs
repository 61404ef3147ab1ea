//! # aether-testkit
//!
//! Test support for Aether and for stores built on it (dev-dependency only):
//!
//! - [`conformance`]: the event store conformance suite every [`aether_core::EventStore`] runs,
//!   through [`event_store_conformance!`];
//! - [`nats`]: throwaway nats-server processes and clusters (real servers, never a mock), with
//!   stop, kill, restart and pause for fault injection;
//! - [`bench`](mod@bench): reading criterion's estimates for the ratio tables the benchmarks print;
//! - [`python`]: Python (nats-py, msgpack, xxhash) as a client in another language;
//! - [`tenancy`]: tenants on one nats-server with docs/security.md's permission blocks as
//!   written, connections as their users, the violations the server logs, markers.

pub mod bench;
pub mod conformance;
pub mod nats;
pub mod proxy;
pub mod python;
pub mod tenancy;

pub use conformance::{ConformanceStore, StoreHarness};
