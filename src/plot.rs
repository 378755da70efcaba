//! What every chart shares: the font, compiled in (Ubuntu Light, from `epaint_default_fonts`),
//! so PNGs draw text with no system fonts or C libraries.

use std::sync::{LazyLock, Once};

use ab_glyph::{Font, FontRef, ScaleFont};
use plotters::style::{FontStyle, register_font};

/// The family name every chart draws text with.
pub const FONT: &str = "sans-serif";

/// Registers the bundled font under `FONT`, once per process; call before drawing.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
            .unwrap_or_else(|_| panic!("the bundled font is a valid TTF"));
    });
}

/// Where each character of `text` goes, in pixels from the text's start, for drawing it glyph
/// by glyph in a bitmap. plotters 0.3.7 draws a glyph's pixels at the pen position truncated to
/// a whole pixel and leaves out its left side bearing, which at 14 px splits words
/// ("2 b usiness_startups_career"); drawn one by one at these offsets they come out whole.
/// SVG writes whole strings and needs none of this.
pub fn glyphs(text: &str, size: f64) -> Vec<(char, i32)> {
    static GLYPHS: LazyLock<FontRef<'static>> = LazyLock::new(|| {
        FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT)
            .expect("the bundled font is a valid TTF")
    });
    let font = GLYPHS.as_scaled(size as f32);
    let mut pen = 0f32;
    let mut previous = None;
    let mut placed = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(before) = previous {
            pen += font.kern(before, id);
        }
        let bearing = font
            .outline_glyph(font.scaled_glyph(c))
            .map_or(0.0, |outline| outline.px_bounds().min.x);
        placed.push((c, (pen + bearing).round() as i32));
        pen += font.h_advance(id);
        previous = Some(id);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_advance_by_the_fonts_metrics_and_keep_their_bearing() {
        let placed = glyphs("2 business", 14.0);
        let xs: Vec<i32> = placed.iter().map(|(_, x)| *x).collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "left to right: {xs:?}");
        // The gap from `b` to `u` is one ordinary letter's width, not a word break.
        let b = xs[2];
        let u = xs[3];
        assert!((5..=10).contains(&(u - b)), "b at {b}, u at {u}");
    }
}
