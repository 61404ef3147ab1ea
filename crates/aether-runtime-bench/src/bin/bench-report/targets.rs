//! The targets the report holds rows to: design.md section 6 and issue 25's table, keyed by the
//! row ids the benchmarks record. Every row of this table is expected in a full report; a row
//! the benchmarks record without a target here is reported, not judged.

use crate::rows::Better;

/// How a ratio is compared with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    AtLeast,
    Above,
    AtMost,
    Below,
}

/// One target: the row it judges, the comparison, and where it was set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Target {
    pub(crate) id: &'static str,
    pub(crate) op: Op,
    pub(crate) value: f64,
    pub(crate) source: &'static str,
}

impl Target {
    /// `>= 0.9` and the like.
    pub(crate) fn show(&self) -> String {
        let op = match self.op {
            Op::AtLeast => ">=",
            Op::Above => ">",
            Op::AtMost => "<=",
            Op::Below => "<",
        };
        format!("{op} {}", self.value)
    }

    /// Whether `ratio` meets the target.
    pub(crate) fn met(&self, ratio: f64) -> bool {
        match self.op {
            Op::AtLeast => ratio >= self.value,
            Op::Above => ratio > self.value,
            Op::AtMost => ratio <= self.value,
            Op::Below => ratio < self.value,
        }
    }

    /// Which way the target wants the ratio to go (must agree with the row's figures).
    pub(crate) fn better(&self) -> Better {
        match self.op {
            Op::AtLeast | Op::Above => Better::Higher,
            Op::AtMost | Op::Below => Better::Lower,
        }
    }
}

const DESIGN: &str = "design.md section 6";
const ISSUE: &str = "issue 25";

const fn t(id: &'static str, op: Op, value: f64, source: &'static str) -> Target {
    Target {
        id,
        op,
        value,
        source,
    }
}

/// Every target, in the order the report lists its rows. Ratios are Aether / baseline: rates
/// (higher is better) for throughput, times or sizes (lower is better) otherwise.
pub(crate) const TARGETS: &[Target] = &[
    // issue 25: the runtime on JetStream against eventsourced-nats and raw async-nats.
    t("peer.a.eventsourced", Op::AtLeast, 1.05, ISSUE),
    t("peer.a.raw", Op::AtLeast, 0.95, ISSUE),
    t("peer.b.eventsourced", Op::AtLeast, 1.05, ISSUE),
    t("peer.b.raw", Op::AtLeast, 0.9, ISSUE),
    t("peer.c.eventsourced", Op::AtLeast, 1.05, ISSUE),
    t("peer.c.raw", Op::AtLeast, 0.9, ISSUE),
    t("peer.d.eventsourced", Op::AtLeast, 1.1, ISSUE),
    t("peer.d.raw", Op::AtLeast, 0.9, ISSUE),
    t("bus.nats.node_to_node", Op::AtLeast, 0.8, ISSUE),
    t("cluster.local", Op::AtMost, 1.1, ISSUE),
    t("cluster.remote.jetstream", Op::AtMost, 1.2, ISSUE),
    // design.md section 6.
    t("js.append.sequential", Op::AtLeast, 0.9, DESIGN),
    t("js.append.concurrent", Op::AtLeast, 0.8, DESIGN),
    t("js.replay.long", Op::AtLeast, 0.8, DESIGN),
    t("memory.append.1", Op::AtLeast, 1.0, DESIGN),
    t("memory.replay.1", Op::AtLeast, 1.0, DESIGN),
    t("memory.append.scaling", Op::Above, 1.0, DESIGN),
    t("memory.replay.scaling", Op::Above, 1.0, DESIGN),
    t("runtime.ask.multi.raw", Op::AtMost, 1.5, DESIGN),
    t("runtime.ask.multi.peers", Op::Below, 1.0, DESIGN),
    t("runtime.tell.raw", Op::AtLeast, 0.6, DESIGN),
    t("runtime.tell.peers", Op::Above, 1.0, DESIGN),
    t("runtime.memory.idle", Op::Below, 1.0, DESIGN),
    t("cluster.remote.memory", Op::AtMost, 1.3, DESIGN),
    t("runtime.activation.snapshot", Op::AtLeast, 20.0, DESIGN),
];

/// The target of row `id`, if it has one.
pub(crate) fn target(id: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_has_at_most_one_target() {
        for (i, a) in TARGETS.iter().enumerate() {
            assert!(
                TARGETS[i + 1..].iter().all(|b| b.id != a.id),
                "{} twice",
                a.id
            );
        }
    }

    #[test]
    fn comparisons_read_as_written() {
        let t = target("peer.a.raw").unwrap();
        assert_eq!(t.show(), ">= 0.95");
        assert!(t.met(0.95) && !t.met(0.94));
        let t = target("runtime.memory.idle").unwrap();
        assert!(t.met(0.99) && !t.met(1.0));
        assert_eq!(t.better(), Better::Lower);
    }
}
