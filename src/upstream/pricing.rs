//! What tokens cost. Built-in list prices for common OpenAI models (USD per million tokens, as
//! OpenAI published them: check before relying on them), replaceable or extended by a TOML file
//! (`HNC_PRICES_FILE`). Cached input tokens are priced as cached, never twice; reasoning tokens
//! are output tokens and priced as such. A dated snapshot (`gpt-5.4-nano-2026-03-17`) has its
//! family's price unless the file names it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use super::usage::Price;

/// The date of the newest built-in prices.
pub const BUILT_IN_PRICES_AS_OF: &str = "2026-06";

const BUILT_IN: &[(&str, Price)] = &[
    // The current family: openai.com/api/pricing, standard tier, short context, as listed in
    // June 2026 (GPT-5 and GPT-4o no longer listed there).
    ("gpt-5.5", Price::list(5.00, 0.50, 30.00)),
    ("gpt-5.4", Price::list(2.50, 0.25, 15.00)),
    ("gpt-5.4-mini", Price::list(0.75, 0.075, 4.50)),
    ("gpt-5.4-nano", Price::list(0.20, 0.02, 1.25)),
    // Still served: OpenAI's GPT-5.2 launch page (December 2025) for 5.2 and 5.1.
    ("gpt-5.2", Price::list(1.75, 0.175, 14.00)),
    ("gpt-5.1", Price::list(1.25, 0.125, 10.00)),
    // The o-series after June 2025's cut: openai.com/api/pricing, August 2025.
    ("o3", Price::list(2.00, 0.50, 8.00)),
    ("o4-mini", Price::list(1.10, 0.275, 4.40)),
    // openai.com/api/pricing, August 2025.
    ("gpt-4.1", Price::list(2.00, 0.50, 8.00)),
    ("gpt-4.1-mini", Price::list(0.40, 0.10, 1.60)),
    ("gpt-4.1-nano", Price::list(0.10, 0.025, 0.40)),
    ("gpt-4o", Price::list(2.50, 1.25, 10.00)),
    ("gpt-4o-mini", Price::list(0.15, 0.075, 0.60)),
    ("gpt-5", Price::list(1.25, 0.125, 10.00)),
    ("gpt-5-mini", Price::list(0.25, 0.025, 2.00)),
    ("gpt-5-nano", Price::list(0.05, 0.005, 0.40)),
];

#[derive(Debug, thiserror::Error)]
pub enum PriceFileError {
    #[error("HNC_PRICES_FILE {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HNC_PRICES_FILE {path}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("HNC_PRICES_FILE {path}: the price of {model} must be finite and not negative")]
    Invalid { path: PathBuf, model: String },
}

/// Prices by model: the file's (read once, at start-up), then the built-in ones.
///
/// The file maps model names (quoted: TOML splits bare keys at dots) to prices, e.g.
/// ```toml
/// ["gpt-4.1-mini"]
/// input = 0.40
/// cached_input = 0.10
/// output = 1.60
/// ```
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    from_file: HashMap<String, Price>,
}

impl PriceTable {
    /// The built-in prices, with those of `file` (HNC_PRICES_FILE) over them.
    pub fn load(file: Option<&Path>) -> Result<Self, PriceFileError> {
        let Some(path) = file else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| PriceFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let from_file: HashMap<String, Price> =
            toml::from_str(&text).map_err(|source| PriceFileError::Parse {
                path: path.to_owned(),
                source,
            })?;
        for (name, price) in &from_file {
            let multiples = [price.batch, price.flex, price.priority];
            let valid = [price.input, price.cached_input, price.output]
                .into_iter()
                .chain(multiples.into_iter().flatten())
                .all(|p| p.is_finite() && p >= 0.0);
            if !valid {
                return Err(PriceFileError::Invalid {
                    path: path.to_owned(),
                    model: name.clone(),
                });
            }
        }
        Ok(Self { from_file })
    }

    /// The price of `model`: from the file when it lists it, else built in (a dated snapshot at
    /// its family's), else unknown.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        let built_in = |name: &str| {
            BUILT_IN
                .iter()
                .find(|(listed, _)| *listed == name)
                .map(|(_, price)| *price)
        };
        self.from_file
            .get(model)
            .copied()
            .or_else(|| built_in(model))
            .or_else(|| built_in(crate::models::undated(model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::usage::Usage;

    #[test]
    fn cached_input_is_priced_as_cached_and_never_twice() {
        let price = PriceTable::default().price_of("gpt-4.1-mini").unwrap();
        let usage = Usage::billed(1_000_000, 400_000, 100_000);
        let expected = 0.6 * 0.40 + 0.4 * 0.10 + 0.1 * 1.60;
        assert!(
            (price.cost(&usage) - expected).abs() < 1e-12,
            "{}",
            price.cost(&usage)
        );
    }

    #[test]
    fn a_file_overrides_and_extends_the_built_in_prices() {
        let path = std::env::temp_dir().join(format!("hnc-prices-{}.toml", std::process::id()));
        std::fs::write(&path, "[\"gpt-4.1-mini\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n\n[my-local-model]\ninput = 0\ncached_input = 0\noutput = 0\n").unwrap();
        let table = PriceTable::load(Some(&path)).unwrap();
        assert_eq!(table.price_of("gpt-4.1-mini").unwrap().input, 1.0);
        assert_eq!(table.price_of("my-local-model").unwrap().output, 0.0);
        assert_eq!(table.price_of("gpt-4o").unwrap().input, 2.50);
        assert_eq!(table.price_of("unknown-model"), None);
        assert_eq!(
            table.price_of("gpt-5.4-nano-2026-03-17").unwrap().output,
            1.25
        );
        std::fs::write(&path, "[m]\ninput = -1.0\ncached_input = 0\noutput = 0\n").unwrap();
        assert!(matches!(
            PriceTable::load(Some(&path)),
            Err(PriceFileError::Invalid { .. })
        ));
        std::fs::remove_file(path).unwrap();
    }
}
