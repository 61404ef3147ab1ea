//! The report: rows judged against their targets, in the targets' order, written as JSON and
//! printed as a markdown table.

use serde_json::{Value, json};

use crate::rows::{Better, Row};
use crate::targets::{TARGETS, Target, target};

/// A row and its verdict.
#[derive(Debug, Clone)]
pub(crate) struct Judged {
    pub(crate) row: Row,
    pub(crate) target: Option<&'static Target>,
    /// `None` when the row has no target.
    pub(crate) met: Option<bool>,
}

/// The whole report.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) generated: String,
    pub(crate) quick: bool,
    pub(crate) machine: String,
    pub(crate) server: String,
    pub(crate) rows: Vec<Judged>,
    /// Targets no row was recorded for.
    pub(crate) missing: Vec<&'static Target>,
    /// Lines that did not parse, repeated ids, rows whose direction contradicts their target.
    pub(crate) problems: Vec<String>,
}

/// What the ratio means, said once in every report.
pub(crate) const RATIO: &str = "ratio = Aether's figure / the baseline's, from the same run; \
    higher is better for rates (events/s, commands/s), lower for times and sizes";

impl Report {
    /// Judges `rows`: targeted rows first, in the targets' order, then the others as recorded.
    pub(crate) fn new(
        rows: Vec<Row>,
        mut problems: Vec<String>,
        quick: bool,
        machine: String,
        server: String,
        generated: String,
    ) -> Self {
        let mut judged: Vec<Judged> = Vec::new();
        let mut missing = Vec::new();
        for t in TARGETS {
            match rows.iter().find(|r| r.id == t.id) {
                Some(row) if row.better != t.better() => {
                    problems.push(format!(
                        "row `{}`: its figures are better {} but its target `{}` wants them \
                         {}; left unjudged",
                        row.id,
                        row.better.as_str(),
                        t.show(),
                        t.better().as_str()
                    ));
                    judged.push(Judged {
                        row: row.clone(),
                        target: None,
                        met: None,
                    });
                }
                Some(row) => match t.judge(row) {
                    Ok(met) => judged.push(Judged {
                        row: row.clone(),
                        target: Some(t),
                        met: Some(met),
                    }),
                    Err(problem) => {
                        problems.push(problem);
                        judged.push(Judged {
                            row: row.clone(),
                            target: None,
                            met: None,
                        });
                    }
                },
                None => missing.push(t),
            }
        }
        for row in rows {
            if target(&row.id).is_none() {
                judged.push(Judged {
                    row,
                    target: None,
                    met: None,
                });
            }
        }
        let quick = quick || judged.iter().any(|j| j.row.quick);
        Self {
            generated,
            quick,
            machine,
            server,
            rows: judged,
            missing,
            problems,
        }
    }

    /// The report as JSON (`report.json`).
    pub(crate) fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|j| {
                let r = &j.row;
                json!({
                    "row": r.path,
                    "id": r.id,
                    "bench": r.bench,
                    "aether": { "value": r.aether.value, "unit": r.aether.unit },
                    "baseline": {
                        "name": r.baseline,
                        "value": r.baseline_figure.value,
                        "unit": r.baseline_figure.unit,
                    },
                    "ratio": r.ratio,
                    "better": r.better.as_str(),
                    "target": j.target.map(Target::show),
                    "target_source": j.target.map(|t| t.source),
                    "met": j.met,
                    "spread": r.spread.as_ref().map(|s| json!({
                        "low": s.low, "high": s.high, "how": s.how,
                    })),
                    "cpu_us_per_op": r.cpu_us.map(|(a, b)| json!({ "aether": a, "baseline": b })),
                    "note": r.note,
                    "rounds": (!r.rounds.is_empty()).then_some(&r.rounds),
                })
            })
            .collect();
        json!({
            "schema": 1,
            "generated": self.generated,
            "quick": self.quick,
            "machine": self.machine,
            "server": self.server,
            "ratio": RATIO,
            "rows": rows,
            "missing": self.missing.iter().map(|t| json!({
                "id": t.id, "target": t.show(), "source": t.source,
            })).collect::<Vec<_>>(),
            "problems": self.problems,
        })
    }

    /// The report as a markdown table, with a heading line (for docs/benchmarks.md).
    pub(crate) fn to_markdown(&self) -> String {
        let mut out = format!(
            "{} run, {}; machine: {}; server: {}\n\n{RATIO}.\n\n",
            if self.quick { "Quick" } else { "Full" },
            self.generated,
            self.machine,
            self.server
        );
        out.push_str(
            "| row | id | Aether | baseline | ratio | better | target | met | spread |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for j in &self.rows {
            let r = &j.row;
            let spread = r
                .spread
                .as_ref()
                .map_or("-".to_owned(), |s| format!("{:.2}-{:.2}", s.low, s.high));
            let met = match j.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let mut aether = figure(r.aether.value, &r.aether.unit);
            let mut baseline = format!(
                "{}: {}",
                r.baseline,
                figure(r.baseline_figure.value, &r.baseline_figure.unit)
            );
            if let Some((a, b)) = r.cpu_us {
                aether.push_str(&format!(" (CPU {a:.1} us/op)"));
                baseline.push_str(&format!(" (CPU {b:.1} us/op)"));
            }
            out.push_str(&format!(
                "| {} | `{}` | {aether} | {} | {:.2} | {} | {} | {met} | {spread} |\n",
                html_safe(&r.path),
                r.id,
                html_safe(&baseline),
                r.ratio,
                r.better.as_str(),
                j.target.map_or("-".to_owned(), Target::show),
            ));
        }
        for t in &self.missing {
            out.push_str(&format!(
                "| (not measured) | `{}` | - | - | - | {} | {} | - | - |\n",
                t.id,
                t.better().as_str(),
                t.show()
            ));
        }
        out
    }
}

/// `text` with `<` and `>` escaped (a markdown renderer would take `Mutex<HashMap<..>>` for
/// HTML).
fn html_safe(text: &str) -> String {
    text.replace('<', "&lt;").replace('>', "&gt;")
}

/// A figure with a sensible number of digits.
pub(crate) fn figure(value: f64, unit: &str) -> String {
    let v = if value >= 10_000_000.0 {
        format!("{:.0}M", value / 1e6)
    } else if value >= 1_000_000.0 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 100_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    format!("{v} {unit}")
}

/// A one-line verdict for a row, as the chart writes it beside the row.
pub(crate) fn verdict(j: &Judged) -> String {
    match (j.target, j.met) {
        (Some(t), Some(true)) => format!("{:.2}x  target {}  met", j.row.ratio, t.show()),
        (Some(t), _) => format!("{:.2}x  target {}  NOT MET", j.row.ratio, t.show()),
        _ => format!(
            "{:.2}x  no target ({} is better)",
            j.row.ratio,
            match j.row.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::Figure;

    fn row(id: &str, better: Better, ratio: f64) -> Row {
        Row {
            id: id.to_owned(),
            bench: "b".to_owned(),
            path: "p".to_owned(),
            quick: true,
            aether: Figure {
                value: ratio,
                unit: "u".to_owned(),
            },
            baseline: "base".to_owned(),
            baseline_figure: Figure {
                value: 1.0,
                unit: "u".to_owned(),
            },
            better,
            ratio,
            spread: None,
            cpu_us: None,
            note: None,
            rounds: Vec::new(),
        }
    }

    #[test]
    fn rows_are_judged_missing_ones_listed_and_contradictions_flagged() {
        let report = Report::new(
            vec![
                row("extra.row", Better::Higher, 2.0),
                row("peer.a.raw", Better::Higher, 0.9),
                row("cluster.local", Better::Higher, 1.0),
                row("js.append.sequential", Better::Higher, 0.95),
            ],
            Vec::new(),
            false,
            "m".to_owned(),
            "s".to_owned(),
            "now".to_owned(),
        );
        let ids: Vec<&str> = report.rows.iter().map(|j| j.row.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "peer.a.raw",
                "cluster.local",
                "js.append.sequential",
                "extra.row"
            ]
        );
        let met: Vec<Option<bool>> = report.rows.iter().map(|j| j.met).collect();
        assert_eq!(met, [Some(false), None, Some(true), None]);
        assert!(report.quick, "a quick row makes a quick report");
        assert!(report.problems[0].contains("cluster.local"));
        assert!(report.missing.iter().all(|t| t.id != "peer.a.raw"));
        assert!(report.missing.iter().any(|t| t.id == "js.replay.long"));
        let json = report.to_json();
        assert_eq!(json["rows"][0]["target"], ">= 0.95");
        assert_eq!(json["rows"][0]["met"], false);
        assert!(json["rows"][1]["met"].is_null());
        assert!(report.to_markdown().contains("| **no** |"));
    }

    #[test]
    fn a_target_counting_runs_is_judged_on_the_runs() {
        let mut bus = row("bus.nats.node_to_node", Better::Higher, 0.82);
        bus.rounds = vec![0.82, 0.79, 0.85, 0.78, 0.83];
        let report = Report::new(
            vec![bus.clone()],
            Vec::new(),
            false,
            "m".to_owned(),
            "s".to_owned(),
            "now".to_owned(),
        );
        assert_eq!(report.rows[0].met, Some(false), "3 of 5 runs");
        let json = report.to_json();
        assert_eq!(json["rows"][0]["target"], ">= 0.8 in 4 of 5 runs");
        assert_eq!(json["rows"][0]["rounds"][1], 0.79);
        bus.rounds[1] = 0.8;
        let report = Report::new(
            vec![bus.clone()],
            Vec::new(),
            false,
            "m".to_owned(),
            "s".to_owned(),
            "now".to_owned(),
        );
        assert_eq!(report.rows[0].met, Some(true), "4 of 5 runs");
        bus.rounds.clear();
        let report = Report::new(
            vec![bus],
            Vec::new(),
            false,
            "m".to_owned(),
            "s".to_owned(),
            "now".to_owned(),
        );
        assert_eq!(report.rows[0].met, None, "no runs: not judged");
        assert!(report.problems[0].contains("bus.nats.node_to_node"));
    }
}
