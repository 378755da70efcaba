//! The pictures of an eval: a confusion-matrix heatmap per setting and one reliability diagram
//! for all of them, each as PNG and SVG (plotters, with the font of `plot`).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics::{Confusion, ERROR_COLUMN};
use super::report::Report;
use crate::plot::FONT;

/// Writes `confusion_k{K}.png/.svg` per setting (`confusion_k{K}_self` for a written
/// confidence's run) and `reliability.png/.svg` in `dir`.
pub fn draw(dir: &Path, reports: &[Report]) -> Result<(), String> {
    crate::plot::register();
    for report in reports {
        // The default source keeps the plain name; a written confidence's run is told apart.
        let suffix = match report.setting.confidence() {
            "self" => "_self",
            _ => "",
        };
        let source = report.confidence_used;
        let name = format!("confusion_k{}{suffix}", report.setting);
        let title = format!(
            "Confusion, pack size {}, confidence from {} (rows: gold, columns: answer)",
            report.setting, source
        );
        let confusion = &report.scores.confusion;
        let size = heatmap_size(confusion);
        let png = dir.join(format!("{name}.png"));
        let svg = dir.join(format!("{name}.svg"));
        heatmap(
            BitMapBackend::new(&png, size).into_drawing_area(),
            confusion,
            &title,
            Glyphs::OneByOne,
        )?;
        heatmap(
            SVGBackend::new(&svg, size).into_drawing_area(),
            confusion,
            &title,
            Glyphs::Whole,
        )?;
    }
    let png = dir.join("reliability.png");
    let svg = dir.join("reliability.svg");
    reliability(
        BitMapBackend::new(&png, (720, 640)).into_drawing_area(),
        reports,
    )?;
    reliability(
        SVGBackend::new(&svg, (720, 640)).into_drawing_area(),
        reports,
    )?;
    Ok(())
}

const CELL: i32 = 44;
const ROW_LABELS: i32 = 230;
const TOP: i32 = 80;

fn heatmap_size(confusion: &Confusion) -> (u32, u32) {
    let n = confusion.labels.len() as i32;
    (
        (ROW_LABELS + (n + 1) * CELL + 24) as u32,
        (TOP + n * CELL + 60) as u32,
    )
}

/// How words are drawn: a bitmap needs them glyph by glyph (`crate::plot::glyphs`).
#[derive(Clone, Copy)]
enum Glyphs {
    OneByOne,
    Whole,
}

/// Draws `words` with its left edge at `at`, vertically centred on it.
fn words<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    words: &str,
    at: (i32, i32),
    size: i32,
    glyphs: Glyphs,
) -> Result<(), String> {
    let style = TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    match glyphs {
        Glyphs::Whole => root
            .draw(&Text::new(words.to_owned(), at, style))
            .map_err(|e| fail(&e)),
        Glyphs::OneByOne => {
            for (c, x) in crate::plot::glyphs(words, f64::from(size)) {
                root.draw(&Text::new(c.to_string(), (at.0 + x, at.1), style.clone()))
                    .map_err(|e| fail(&e))?;
            }
            Ok(())
        }
    }
}

/// Cells shaded by the row's share (how a gold label's items were answered), with counts; the
/// columns are numbered like the rows, the last is errors.
fn heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    confusion: &Confusion,
    title: &str,
    glyphs: Glyphs,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let text = |size: i32| TextStyle::from((FONT, size).into_font());
    let centred = |size: i32| text(size).pos(Pos::new(HPos::Center, VPos::Center));
    words(&root, title, (16, 26), 20, glyphs)?;
    let n = confusion.labels.len();
    for column in 0..n {
        let x = ROW_LABELS + column as i32 * CELL + CELL / 2;
        root.draw(&Text::new(
            (column + 1).to_string(),
            (x, TOP - 14),
            centred(14),
        ))
        .map_err(|e| fail(&e))?;
    }
    words(
        &root,
        ERROR_COLUMN,
        (ROW_LABELS + n as i32 * CELL + 2, TOP - 14),
        14,
        glyphs,
    )?;
    for (row, label) in confusion.labels.iter().enumerate() {
        let y = TOP + row as i32 * CELL;
        let name = format!("{} {label}", row + 1);
        words(&root, &name, (8, y + CELL / 2), 14, glyphs)?;
        let total: usize = confusion.counts[row].iter().sum();
        for (column, count) in confusion.counts[row].iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                *count as f64 / total as f64
            };
            let shade = (255.0 - 200.0 * share) as u8;
            let colour = if column == row {
                RGBColor(shade, 255, shade)
            } else {
                RGBColor(255, shade, shade.saturating_add(40))
            };
            let x = ROW_LABELS + column as i32 * CELL;
            root.draw(&Rectangle::new(
                [(x, y), (x + CELL - 2, y + CELL - 2)],
                colour.filled(),
            ))
            .map_err(|e| fail(&e))?;
            if *count > 0 {
                root.draw(&Text::new(
                    count.to_string(),
                    (x + CELL / 2, y + CELL / 2),
                    centred(14),
                ))
                .map_err(|e| fail(&e))?;
            }
        }
    }
    root.present().map_err(|e| fail(&e))
}

/// Accuracy against confidence per bin, one line per setting, over the diagonal of perfect
/// calibration.
fn reliability<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    reports: &[Report],
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Reliability: accuracy per confidence bin", (FONT, 22))
        .margin(20)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("stated confidence")
        .y_desc("strict accuracy")
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(|e| fail(&e))?;
    for (i, report) in reports.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = report
            .scores
            .calibration
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.mean_confidence, b.accuracy))
            .collect();
        let label = format!(
            "pack size {}, {} (ECE {:.3})",
            report.setting, report.confidence_used, report.scores.ece
        );
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.filled())),
            )
            .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 14))
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}
