//! `switchboard-bench plot`: SVG charts from the scenarios' JSON files.
//!
//! Per file: the latency CDF (if it has one) and the timeline (deliveries/s over time, or
//! for the storm clients subscribed and receiving over time with the kill at t = 0). Across files: every
//! latency CDF on one chart (`latency-cdf-paced.svg`, runs with a `--rate` only), so the local
//! bus and RabbitMQ runs sit side by side. SVG only: plotters' bitmap backend needs a font library (system fontconfig
//! and freetype through font-kit) to draw any text.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

type Pts = Vec<(f64, f64)>;

/// Line colours that read on white (matplotlib's tab10 without its yellow and grey).
const TAB10: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// CDF points (latency us, fraction) of a result, if it has a non-empty latency.
fn cdf_points(r: &serde_json::Value) -> Option<Pts> {
    let cdf = r["latency"]["cdf"].as_array().filter(|c| !c.is_empty() && r["latency"]["count"].as_u64() > Some(0))?;
    // Quantiles 0 and 1 are min and max.
    Some(cdf.iter().filter_map(|p| Some((p[1].as_f64()?.max(1.0), p[0].as_f64()?))).collect())
}

fn draw_cdfs(path: &Path, title: &str, series: &[(String, Pts)]) -> anyhow::Result<()> {
    let all = series.iter().flat_map(|s| s.1.iter());
    let xmax = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.2;
    let xmin = all.map(|p| p.0).fold(f64::MAX, f64::min).max(1.0) / 1.2;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..1.0)?;
    ch.configure_mesh().x_desc("latency (us, log)").y_desc("fraction of deliveries").draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = TAB10[i % TAB10.len()].to_rgba();
        ch.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        ch.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    if series.len() > 1 {
        legend(&mut ch)?;
    }
    finish(&root, path)
}

fn draw_timeline(path: &Path, stem: &str, storm: bool, pts: Pts, sub: Option<Pts>) -> anyhow::Result<()> {
    let xmin = pts.iter().map(|p| p.0).fold(0.0, f64::min);
    let xmax = pts.iter().map(|p| p.0).fold(0.1, f64::max);
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let ylabel = if storm { "clients" } else { "deliveries/s" };
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = if storm {
        format!("{stem}: clients subscribed and receiving, worker killed at t = 0")
    } else {
        format!("{stem}: {ylabel} over time")
    };
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(xmin..xmax, 0.0..ymax)?;
    ch.configure_mesh().x_desc("seconds").y_desc(ylabel).draw()?;
    if storm {
        ch.draw_series(LineSeries::new(vec![(0.0, 0.0), (0.0, ymax)], BLACK.mix(0.5)))?;
    }
    let label = if storm { "receiving (an envelope since the last subscribe)" } else { ylabel };
    ch.draw_series(LineSeries::new(pts, RED.stroke_width(2)))?
        .label(label)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    if let Some(sub) = sub {
        ch.draw_series(LineSeries::new(sub, BLUE.stroke_width(1)))?
            .label("subscribed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(1)));
        legend(&mut ch)?;
    }
    finish(&root, path)
}

/// The series labels, bottom right, on a light box (both charts plot rising curves).
fn legend<'a, X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
    ch: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> anyhow::Result<()> {
    ch.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn finish(root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, path: &Path) -> anyhow::Result<()> {
    root.present()?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

pub fn plot(out: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut all_cdfs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", f.display()))?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string();
        let r = &v["result"];
        if let Some(pts) = cdf_points(r) {
            draw_cdfs(
                &out.join(format!("{stem}-latency-cdf.svg")),
                &format!("{stem}: end-to-end latency CDF"),
                &[(stem.clone(), pts.clone())],
            )?;
            // Unpaced runs publish in a burst: their latency is the burst's queueing, not a
            // figure to compare (bench/RESULTS.md).
            if r["rate"].as_u64() > Some(0) {
                all_cdfs.push((stem.clone(), pts));
            }
        }
        let series = |key: &str| -> Option<Pts> {
            let tl = r[key].as_array().filter(|t| !t.is_empty())?;
            Some(tl.iter().filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?))).collect())
        };
        if let Some(pts) = series("timeline") {
            let storm = v["scenario"] == "storm";
            draw_timeline(&out.join(format!("{stem}-timeline.svg")), &stem, storm, pts, series("timeline_subscribed"))?;
        }
    }
    if all_cdfs.len() > 1 {
        draw_cdfs(&out.join("latency-cdf-paced.svg"), "end-to-end latency CDF, paced runs", &all_cdfs)?;
    }
    Ok(())
}
