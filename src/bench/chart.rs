//! The reference study's picture: best items/s per approach as bars, written as PNG and SVG
//! (plotters, with the font of `plot`).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::error::BenchError;
use super::result::RunResult;
use super::target::Approach;
use crate::plot::FONT;

const SIZE: (u32, u32) = (960, 540);

/// Writes `chart.png` and `chart.svg` in `dir` for the best run of each approach.
pub fn draw(dir: &Path, best: &[&RunResult]) -> Result<(), BenchError> {
    crate::plot::register();
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let png = dir.join("chart.png");
    let svg = dir.join("chart.svg");
    bars(BitMapBackend::new(&png, SIZE).into_drawing_area(), best)?;
    bars(SVGBackend::new(&svg, SIZE).into_drawing_area(), best)?;
    Ok(())
}

fn bars<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    best: &[&RunResult],
) -> Result<(), BenchError> {
    let fail = |e: &dyn std::fmt::Display| BenchError::Chart(e.to_string());
    let top = best.iter().map(|r| r.items_per_s).fold(1.0, f64::max) * 1.18;
    let first = best.first().copied();
    let caption = match first {
        Some(r) => format!(
            "Best items/s per approach: {} items, upstream median {} ms",
            r.items, r.sim_latency_ms
        ),
        None => "No runs".to_owned(),
    };
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 24))
        .margin(24)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d((0..best.len().saturating_sub(1)).into_segmented(), 0.0..top)
        .map_err(|e| fail(&e))?;
    let label = |x: &SegmentValue<usize>| match x {
        SegmentValue::CenterOf(i) => best.get(*i).map_or(String::new(), |r| match r.approach {
            Approach::Service => format!("service ({} x {})", r.concurrency, r.batch_size),
            other => format!("{} (c={})", other.name(), r.concurrency),
        }),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(best.len().max(1))
        .x_label_formatter(&label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("items per second")
        .label_style((FONT, 16))
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(RGBColor(255, 102, 0).filled())
                .margin(40)
                .data(best.iter().enumerate().map(|(i, r)| (i, r.items_per_s))),
        )
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(best.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!("{:.0}", r.items_per_s),
                (SegmentValue::CenterOf(i), r.items_per_s + top * 0.02),
                TextStyle::from((FONT, 18).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}
