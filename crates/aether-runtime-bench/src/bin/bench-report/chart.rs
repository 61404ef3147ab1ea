//! The chart (`report.svg`): one line per row, the ratio as a bar from parity (1.0) on a log
//! scale, its spread as a whisker, its target as a black tick with the side that meets it shaded,
//! and the verdict written beside it.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{Judged, Report, verdict};
use crate::rows::Better;

const WIDTH: u32 = 1400;
const ROW_HEIGHT: u32 = 26;
const HEADER: u32 = 84;
const AXIS: u32 = 46;
const LABELS: u32 = 470;
const VERDICTS: u32 = 290;

const MET: RGBColor = RGBColor(46, 139, 87);
const NOT_MET: RGBColor = RGBColor(204, 41, 41);
const NO_TARGET: RGBColor = RGBColor(150, 150, 150);
/// Drawn see-through (`mix`), so the grid stays visible behind the rows.
const GOOD_SIDE: RGBColor = RGBColor(46, 160, 67);
const STRIPE: RGBColor = RGBColor(0, 0, 0);

/// Draws `report` into an SVG file at `path`.
pub(crate) fn draw(report: &Report, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let n = report.rows.len().max(1);
    let height = HEADER + AXIS + ROW_HEIGHT * n as u32 + 10;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;

    let title = format!(
        "Aether benchmarks: Aether / baseline, same run{}",
        if report.quick {
            " (QUICK run: smaller sizes, fewer rounds)"
        } else {
            ""
        }
    );
    let lines = [
        (title, 20, 8),
        (
            format!(
                "{}  |  {}  |  {}",
                report.generated, report.machine, report.server
            ),
            13,
            36,
        ),
        (
            "bar: the ratio, from parity (1.0); green: target met, red: not met, grey: no target; \
             black tick: the target, shaded: the side that meets it; whisker: the spread"
                .to_owned(),
            12,
            58,
        ),
    ];
    for (text, size, y) in lines {
        root.draw(&Text::new(text, (10, y), ("sans-serif", size).into_font()))
            .map_err(|e| err(&e))?;
    }

    let (lo, hi) = x_range(&report.rows);
    let (_, body) = root.split_vertically(HEADER);
    let mut chart = ChartBuilder::on(&body)
        .margin_right(VERDICTS)
        .margin_bottom(4)
        .x_label_area_size(AXIS)
        .y_label_area_size(LABELS)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..n as f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("ratio Aether / baseline (log scale)")
        .x_label_formatter(&|x| tick(*x))
        .draw()
        .map_err(|e| err(&e))?;

    let n = n as f64;
    for (i, row) in report.rows.iter().enumerate() {
        let c = n - i as f64 - 0.5;
        if i % 2 == 0 {
            chart
                .draw_series([Rectangle::new(
                    [(lo, c - 0.5), (hi, c + 0.5)],
                    STRIPE.mix(0.035).filled(),
                )])
                .map_err(|e| err(&e))?;
        }
        if let Some(t) = row.target {
            let zone = match t.better() {
                Better::Higher => [(t.value, c - 0.38), (hi, c + 0.38)],
                Better::Lower => [(lo, c - 0.38), (t.value, c + 0.38)],
            };
            chart
                .draw_series([Rectangle::new(zone, GOOD_SIDE.mix(0.16).filled())])
                .map_err(|e| err(&e))?;
        }
        let colour = match row.met {
            Some(true) => MET,
            Some(false) => NOT_MET,
            None => NO_TARGET,
        };
        chart
            .draw_series([Rectangle::new(
                [(1.0, c - 0.22), (row.row.ratio, c + 0.22)],
                colour.filled(),
            )])
            .map_err(|e| err(&e))?;
        if let Some(s) = &row.row.spread {
            let whisker = [
                vec![(s.low, c), (s.high, c)],
                vec![(s.low, c - 0.14), (s.low, c + 0.14)],
                vec![(s.high, c - 0.14), (s.high, c + 0.14)],
            ];
            chart
                .draw_series(whisker.map(|p| PathElement::new(p, BLACK.stroke_width(1))))
                .map_err(|e| err(&e))?;
        }
        if let Some(t) = row.target {
            chart
                .draw_series([PathElement::new(
                    vec![(t.value, c - 0.42), (t.value, c + 0.42)],
                    BLACK.stroke_width(3),
                )])
                .map_err(|e| err(&e))?;
        }
        draw_texts(&root, &chart, row, c, lo, hi).map_err(|e| err(&e))?;
    }
    chart
        .draw_series([PathElement::new(
            vec![(1.0, 0.0), (1.0, n)],
            NO_TARGET.stroke_width(1),
        )])
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

type Chart<'a> = ChartContext<
    'a,
    SVGBackend<'a>,
    Cartesian2d<LogCoord<f64>, plotters::coord::types::RangedCoordf64>,
>;

/// The row's label left of the plot and its verdict right of it.
fn draw_texts<'a>(
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    chart: &Chart<'a>,
    row: &Judged,
    c: f64,
    lo: f64,
    hi: f64,
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>> {
    let (left, y) = chart.backend_coord(&(lo, c));
    let (right, _) = chart.backend_coord(&(hi, c));
    let label = shorten(&format!("{}  vs {}", row.row.path, row.row.baseline), 80);
    root.draw(&Text::new(
        label,
        (left - 8, y),
        ("sans-serif", 12)
            .into_font()
            .into_text_style(root)
            .pos(Pos::new(HPos::Right, VPos::Center)),
    ))?;
    let colour = match row.met {
        Some(false) => NOT_MET,
        _ => BLACK,
    };
    root.draw(&Text::new(
        verdict(row),
        (right + 10, y),
        ("sans-serif", 12)
            .into_font()
            .into_text_style(root)
            .color(&colour)
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))
}

/// The x range: every ratio, spread, target and parity, with room on both sides.
fn x_range(rows: &[Judged]) -> (f64, f64) {
    let values = rows.iter().flat_map(|j| {
        let mut v = vec![j.row.ratio];
        if let Some(s) = &j.row.spread {
            v.extend([s.low, s.high]);
        }
        if let Some(t) = j.target {
            v.push(t.value);
        }
        v
    });
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((1.0_f64, 1.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo / 1.5, hi * 1.5)
}

/// An axis tick: `0.5`, `1`, `20`.
fn tick(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{shorten, tick};

    #[test]
    fn ticks_lose_trailing_zeros() {
        assert_eq!(
            (tick(1.0), tick(0.5), tick(20.0), tick(0.25)),
            ("1".into(), "0.5".into(), "20".into(), "0.25".into())
        );
    }

    #[test]
    fn long_labels_are_cut() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
    }
}
