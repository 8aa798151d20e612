//! `plot RESULTS.json --out DIR`: for each scenario a latency-percentile
//! chart (x: percentile on a "nines" scale, y: ms, log) with one line per
//! run and metric, and a throughput bar chart of the headline metric per
//! run; SVG through plotters' SVG backend (no system libraries).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::{ResultsFile, RunReport};

#[derive(clap::Args, Clone, Debug)]
pub struct PlotArgs {
    /// A file written by --json.
    pub results: PathBuf,
    /// Directory for the SVG files (created if missing).
    #[arg(long, default_value = "bench/plots")]
    pub out: PathBuf,
}

pub fn run(a: &PlotArgs) -> anyhow::Result<()> {
    let file = ResultsFile::read(&a.results)?;
    for p in render(&file, &a.out)? {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes the charts; returns their paths.
pub fn render(file: &ResultsFile, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut scenarios: Vec<&str> = Vec::new();
    for r in &file.runs {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let mut written = Vec::new();
    for s in scenarios {
        let runs: Vec<&RunReport> = file.runs.iter().filter(|r| r.scenario == s).collect();
        let p = out.join(format!("{s}-latency.svg"));
        latency_chart(s, &runs, &p)?;
        written.push(p);
        let p = out.join(format!("{s}-throughput.svg"));
        throughput_chart(s, &runs, &p)?;
        written.push(p);
    }
    Ok(written)
}

/// 0.5 → 0.3, 0.9 → 1, 0.99 → 2, …; the max (q = 1) is drawn at 5 nines.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        5.0
    } else {
        -(1.0 - q).log10()
    }
}

fn run_name(r: &RunReport, i: usize) -> String {
    let round = r
        .notes
        .iter()
        .find_map(|n| n.strip_prefix("round "))
        .map(|n| format!(" r{n}"))
        .unwrap_or_else(|| {
            if i > 0 {
                format!(" #{}", i + 1)
            } else {
                String::new()
            }
        });
    format!("{}{round}", r.label)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

fn latency_chart(scenario: &str, runs: &[&RunReport], path: &Path) -> anyhow::Result<()> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        for m in &r.metrics {
            let pts: Vec<(f64, f64)> = m
                .curve
                .iter()
                .filter(|(q, _)| *q > 0.0)
                .map(|&(q, ms)| (nines(q), ms.max(0.001)))
                .collect();
            if !pts.is_empty() {
                lines.push((format!("{} {}", run_name(r, i), m.name), pts));
            }
        }
    }
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0f64, f64::max);
    let ymin = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(ymax, f64::min)
        .min(ymax / 10.0);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{scenario}: latency by percentile"),
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.2f64..5.2f64, (ymin * 0.8..ymax * 1.5).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_label_formatter(&|x| match (*x * 10.0).round() as i64 {
            3 => "p50".into(),
            10 => "p90".into(),
            20 => "p99".into(),
            30 => "p99.9".into(),
            40 => "p99.99".into(),
            50 => "max".into(),
            _ => String::new(),
        })
        .x_labels(53)
        .y_labels(12)
        .y_label_formatter(&|y| format!("{}", (*y * 1000.0).round() / 1000.0))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn throughput_chart(scenario: &str, runs: &[&RunReport], path: &Path) -> anyhow::Result<()> {
    let bars: Vec<(String, String, f64)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let m = r.headline()?;
            Some((run_name(r, i), m.name.clone(), m.rate))
        })
        .collect();
    let n = bars.len().max(1);
    let ymax = bars.iter().map(|b| b.2).fold(1.0f64, f64::max) * 1.15;
    let unit = bars.first().map(|b| b.1.clone()).unwrap_or_default();
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: throughput"), ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .y_desc(format!("{unit} / s"))
        .x_labels(2 * n + 1)
        .x_label_formatter(&|x| {
            // Labels at bar centres (i + 0.5) only.
            let i = x.floor();
            if (x - i - 0.5).abs() < 0.01 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(err)?;
    for (i, (_, _, rate)) in bars.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *rate)],
                color.filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{rate:.0}"),
                (i as f64 + 0.4, *rate + ymax * 0.03),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_run;

    #[test]
    fn renders_svgs() {
        let file = ResultsFile::new(vec![
            sample_run("hearth", "send", 1.0),
            sample_run("synapse", "send", 5.0),
            sample_run("synapse", "sync-idle", 2.0),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let out = render(&file, dir.path()).unwrap();
        assert_eq!(out.len(), 4);
        for p in &out {
            let svg = std::fs::read_to_string(p).unwrap();
            assert!(svg.starts_with("<svg"), "{}", p.display());
            assert!(svg.contains("hearth") || p.to_string_lossy().contains("sync-idle"));
            assert!(svg.contains("<text"), "labels in {}", p.display());
        }
        assert!((nines(0.99) - 2.0).abs() < 1e-9 && nines(1.0) == 5.0);
    }
}
