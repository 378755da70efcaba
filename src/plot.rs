//! What every chart shares: the font, compiled in (Ubuntu Light, from `epaint_default_fonts`),
//! so PNGs draw text with no system fonts or C libraries.

use std::sync::Once;

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
