//! The rows the benchmarks handed over: one JSON line each (written by
//! `aether_testkit::bench::record_row`), read and checked field by field.

use std::path::Path;

use serde_json::Value;

/// Which way a row's figures are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    Higher,
    Lower,
}

impl Better {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// A value and its unit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Figure {
    pub(crate) value: f64,
    pub(crate) unit: String,
}

/// The ratio's spread.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spread {
    pub(crate) low: f64,
    pub(crate) high: f64,
    pub(crate) how: String,
}

/// One measured path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) bench: String,
    pub(crate) path: String,
    pub(crate) quick: bool,
    pub(crate) aether: Figure,
    pub(crate) baseline: String,
    pub(crate) baseline_figure: Figure,
    pub(crate) better: Better,
    pub(crate) ratio: f64,
    pub(crate) spread: Option<Spread>,
    pub(crate) cpu_us: Option<(f64, f64)>,
    pub(crate) note: Option<String>,
    /// The ratio of each run, where the bench repeats the measurement for a target that counts
    /// runs; empty for the other rows (and for rows written before the field existed).
    pub(crate) rounds: Vec<f64>,
}

/// The rows of the file at `path` that parsed, and one message per line that did not (or that
/// repeated an id: the later line wins). Fails only when the file cannot be read.
pub(crate) fn read(path: &Path) -> Result<(Vec<Row>, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the benchmark rows at {}: {e} (did the benchmarks run with \
             AETHER_BENCH_ROWS set? `cargo xtask bench --report` sets it)",
            path.display()
        )
    })?;
    let (mut rows, mut problems): (Vec<Row>, Vec<String>) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{} line {}", path.display(), i + 1);
        match parse(line) {
            Ok(row) => {
                if let Some(old) = rows.iter().position(|r| r.id == row.id) {
                    problems.push(format!(
                        "{at}: row `{}` recorded twice; the later one is kept",
                        row.id
                    ));
                    rows.remove(old);
                }
                rows.push(row);
            }
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    Ok((rows, problems))
}

/// One line as a row, or what is wrong with it.
pub(crate) fn parse(line: &str) -> Result<Row, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    match v.get("schema").and_then(Value::as_u64) {
        Some(1) => {}
        other => return Err(format!("schema {other:?}, expected 1")),
    }
    let id = text(&v, &["id"])?;
    let row = |e: String| format!("row `{id}`: {e}");
    let better = match text(&v, &["better"]).map_err(row)?.as_str() {
        "higher" => Better::Higher,
        "lower" => Better::Lower,
        other => return Err(row(format!("`better` is `{other}`, not higher or lower"))),
    };
    let aether = Figure {
        value: positive(&v, &["aether", "value"]).map_err(row)?,
        unit: text(&v, &["aether", "unit"]).map_err(row)?,
    };
    let baseline_figure = Figure {
        value: positive(&v, &["baseline", "value"]).map_err(row)?,
        unit: text(&v, &["baseline", "unit"]).map_err(row)?,
    };
    if aether.unit != baseline_figure.unit {
        return Err(row(format!(
            "Aether's unit `{}` differs from the baseline's `{}`",
            aether.unit, baseline_figure.unit
        )));
    }
    let spread = match v.get("spread") {
        None | Some(Value::Null) => None,
        Some(_) => Some(Spread {
            low: positive(&v, &["spread", "low"]).map_err(row)?,
            high: positive(&v, &["spread", "high"]).map_err(row)?,
            how: text(&v, &["spread", "how"]).map_err(row)?,
        }),
    };
    let cpu_us = match v.get("cpu_us") {
        None | Some(Value::Null) => None,
        Some(_) => Some((
            number(&v, &["cpu_us", "aether"]).map_err(row)?,
            number(&v, &["cpu_us", "baseline"]).map_err(row)?,
        )),
    };
    let rounds = match v.get("rounds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| row(format!("`rounds[{i}]` is not a number above 0")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(row("`rounds` is not an array".to_owned())),
    };
    Ok(Row {
        bench: text(&v, &["bench"]).map_err(row)?,
        path: text(&v, &["row"]).map_err(row)?,
        quick: v.get("quick").and_then(Value::as_bool).unwrap_or(false),
        baseline: text(&v, &["baseline", "name"]).map_err(row)?,
        ratio: positive(&v, &["ratio"]).map_err(row)?,
        note: v.get("note").and_then(Value::as_str).map(str::to_owned),
        id,
        aether,
        baseline_figure,
        better,
        spread,
        cpu_us,
        rounds,
    })
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("`{}` is missing", path.join(".")))
}

fn text(v: &Value, path: &[&str]) -> Result<String, String> {
    field(v, path)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("`{}` is not a string", path.join(".")))
}

fn number(v: &Value, path: &[&str]) -> Result<f64, String> {
    field(v, path)?
        .as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("`{}` is not a finite number", path.join(".")))
}

fn positive(v: &Value, path: &[&str]) -> Result<f64, String> {
    let x = number(v, path)?;
    if x > 0.0 {
        Ok(x)
    } else {
        Err(format!("`{}` is {x}, not above 0", path.join(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"schema":1,"id":"js.append.sequential","bench":"jetstream_store","row":"one actor","quick":true,"aether":{"value":900.0,"unit":"events/s"},"baseline":{"name":"raw","value":1000.0,"unit":"events/s"},"better":"higher","ratio":0.9,"spread":{"low":0.8,"high":1.0,"how":"ci"},"cpu_us":null,"note":null}"#;

    #[test]
    fn a_good_line_parses() {
        let row = parse(GOOD).unwrap();
        assert_eq!(row.id, "js.append.sequential");
        assert_eq!(row.better, Better::Higher);
        assert!(row.quick);
        assert_eq!(row.spread.map(|s| s.high), Some(1.0));
        assert!(row.rounds.is_empty(), "a row without `rounds` has none");
        let runs = GOOD.replace(r#""note":null"#, r#""note":null,"rounds":[0.9,0.7]"#);
        assert_eq!(parse(&runs).unwrap().rounds, [0.9, 0.7]);
    }

    #[test]
    fn a_bad_line_says_what_is_wrong() {
        let missing = GOOD.replace(r#""ratio":0.9,"#, "");
        assert_eq!(
            parse(&missing).unwrap_err(),
            "row `js.append.sequential`: `ratio` is missing"
        );
        let null = GOOD.replace(r#""ratio":0.9"#, r#""ratio":null"#);
        assert!(parse(&null).unwrap_err().contains("`ratio` is missing"));
        let units = GOOD.replacen(r#""unit":"events/s"}"#, r#""unit":"us"}"#, 1);
        assert!(parse(&units).unwrap_err().contains("differs"));
        assert!(parse("{").unwrap_err().starts_with("not JSON"));
        let rounds = GOOD.replace(r#""note":null"#, r#""note":null,"rounds":[0.9,0]"#);
        assert!(parse(&rounds).unwrap_err().contains("`rounds[1]`"));
    }
}
