//! Bench-only crate: `benches/runtime.rs` measures `aether-runtime` against kameo, ractor, actix,
//! cqrs-es and a raw tokio mpsc + oneshot actor in the same run. Run it with
//! `cargo xtask bench -p aether-runtime-bench`. The peers are dev-dependencies, so a plain
//! `cargo build` never compiles them. The binary `bench-report` (`src/bin/bench-report/`) builds
//! the benchmark report from the rows the benches record (`cargo xtask bench --report`).
