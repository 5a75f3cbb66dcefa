//! `wsgate bench --svg FILE`: the run as a picture, wsgate beside the baseline.
//!
//! Two panels: the publish→receive latency CDF of the sampled clients, and deliveries per
//! second over the publish phase. plotters' SVG backend writes `<text>` elements and sizes
//! them with its built-in estimate, so no system font (fontconfig, freetype) is needed.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// What a fan-out run leaves for the picture (not part of the JSON report).
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Publish→receive latencies of the sampled clients in µs, sorted.
    pub latencies_us: Vec<u64>,
    /// Cumulative deliveries, sampled: (seconds since the publish phase began, count).
    pub deliveries: Vec<(f64, u64)>,
}

const SIZE: (u32, u32) = (1100, 440);
/// Most points one CDF line gets; more add bytes, not information.
const MAX_CDF_POINTS: usize = 400;
const COLORS: [RGBColor; 3] = [
    RGBColor(47, 111, 223),
    RGBColor(217, 130, 43),
    RGBColor(31, 138, 76),
];

/// Writes the picture of `runs` (name, trace) to `path`.
pub fn write(path: &Path, runs: &[(&str, &Trace)]) -> anyhow::Result<()> {
    std::fs::write(path, render(runs)?)?;
    Ok(())
}

/// The SVG document for `runs`.
pub fn render(runs: &[(&str, &Trace)]) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot)?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        for (area, panel) in [left, right].iter().zip(&PANELS) {
            draw(area, runs, panel)?;
        }
        root.present().map_err(plot)?;
    }
    Ok(out)
}

fn plot(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the SVG: {e}")
}

/// (latency in ms, fraction of messages at or below it), at most `MAX_CDF_POINTS` points.
pub fn cdf(sorted_us: &[u64]) -> Vec<(f64, f64)> {
    let n = sorted_us.len();
    let step = n.div_ceil(MAX_CDF_POINTS).max(1);
    let mut points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (sorted_us[i] as f64 / 1000.0, (i + 1) as f64 / n as f64))
        .collect();
    if let Some(&last) = sorted_us.last()
        && points.last().is_none_or(|p| p.1 < 1.0)
    {
        points.push((last as f64 / 1000.0, 1.0));
    }
    points
}

/// Deliveries per second between consecutive samples of the cumulative count.
pub fn rates(samples: &[(f64, u64)]) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| {
            (
                w[1].0,
                w[1].1.saturating_sub(w[0].1) as f64 / (w[1].0 - w[0].0),
            )
        })
        .collect()
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// One panel: a line per run, on axes that fit every line.
struct Panel {
    caption: &'static str,
    /// The x and y axes' descriptions.
    axes: (&'static str, &'static str),
    /// A run's line.
    line: fn(&Trace) -> Vec<(f64, f64)>,
    /// The y axis' top, when fixed (a CDF ends at 1).
    y_max: Option<f64>,
}

/// The panels, left to right.
const PANELS: [Panel; 2] = [
    Panel {
        caption: "Latency CDF (publish → receive)",
        axes: ("latency (ms)", "fraction of messages"),
        line: |t| cdf(&t.latencies_us),
        y_max: Some(1.0),
    },
    Panel {
        caption: "Deliveries per second",
        axes: ("seconds since publishing began", "deliveries / s"),
        line: |t| rates(&t.deliveries),
        y_max: None,
    },
];

fn draw(area: &Area, runs: &[(&str, &Trace)], panel: &Panel) -> anyhow::Result<()> {
    let lines: Vec<Vec<(f64, f64)>> = runs.iter().map(|(_, t)| (panel.line)(t)).collect();
    let points = || lines.iter().flatten();
    let x_max = points().map(|p| p.0).fold(0.0, f64::max);
    let y_max = panel
        .y_max
        .unwrap_or_else(|| points().map(|p| p.1).fold(0.0, f64::max) * 1.1);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..(x_max * 1.02).max(0.1), 0.0..y_max.max(1.0))
        .map_err(plot)?;
    chart
        .configure_mesh()
        .x_desc(panel.axes.0)
        .y_desc(panel.axes.1)
        .draw()
        .map_err(plot)?;
    for (i, ((name, _), points)) in runs.iter().zip(lines).enumerate() {
        series(&mut chart, name, i, points)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn series<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    name: &str,
    i: usize,
    points: Vec<(f64, f64)>,
) -> anyhow::Result<()> {
    let color = COLORS[i % COLORS.len()];
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(plot)?
        .label(name.to_string())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(plot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(latency_scale: u64, rate: u64) -> Trace {
        Trace {
            latencies_us: (1..=1000).map(|i| i * latency_scale).collect(),
            deliveries: (0..=20).map(|i| (i as f64 * 0.25, i * rate / 4)).collect(),
        }
    }

    #[test]
    fn cdf_is_bounded_monotone_and_ends_at_one() {
        let us: Vec<u64> = (1..=10_000).collect();
        let c = cdf(&us);
        assert!(c.len() <= MAX_CDF_POINTS + 1, "{}", c.len());
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(c.last(), Some(&(10.0, 1.0)));
        assert_eq!(cdf(&[]), vec![]);
    }

    #[test]
    fn rates_are_per_second_between_samples() {
        let r = rates(&[(0.0, 0), (0.5, 100), (1.0, 300), (1.0, 300)]);
        assert_eq!(r, vec![(0.5, 200.0), (1.0, 400.0)]);
    }

    #[test]
    fn a_small_synthetic_run_draws_both_panels_and_both_servers() {
        let wsgate = synthetic(10, 4000);
        let baseline = synthetic(8, 4200);
        let svg = render(&[
            ("wsgate", &wsgate),
            ("baseline (axum + tungstenite)", &baseline),
        ])
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "Latency CDF (publish → receive)",
            "Deliveries per second",
            "latency (ms)",
            "wsgate",
            "baseline (axum + tungstenite)",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // Per server and panel: its line (many points) and its legend sample, in its colour.
        for RGBColor(r, g, b) in &COLORS[..2] {
            let stroke = format!(r##"stroke="#{r:02X}{g:02X}{b:02X}" stroke-width="2" points=""##);
            let lines: Vec<&str> = svg.split(stroke.as_str()).skip(1).collect();
            assert_eq!(lines.len(), 4, "{stroke}");
            let points = |l: &str| l.split('"').next().unwrap().split_whitespace().count();
            assert_eq!(
                lines.iter().filter(|l| points(l) > 15).count(),
                2,
                "{stroke}"
            );
        }
        let path = std::env::temp_dir().join(format!("wsgate-bench-{}.svg", std::process::id()));
        write(&path, &[("wsgate", &wsgate)]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("wsgate"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_empty_run_still_draws() {
        let svg = render(&[("wsgate", &Trace::default())]).unwrap();
        assert!(svg.contains("Deliveries per second"));
    }
}
