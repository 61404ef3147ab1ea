//! The project's examples live in the top-level `examples/` directory; this package builds them
//! with every feature of the `aether` facade, so each one runs with a plain
//! `cargo run --example NAME` from the repository root. It has no library code.
