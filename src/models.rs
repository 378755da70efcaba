//! What OpenAI's models accept, as far as this code knows it: which refuse `logprobs`, and which
//! are offered the flex tier. The service reads it to avoid what would be refused; the simulator
//! reads the same table to refuse as OpenAI does, so the tests meet the refusals.

/// Models reported to refuse `logprobs`/`top_logprobs` with a 400 (OpenAI's reasoning models).
/// `model` may carry a `provider/` prefix.
pub fn refuses_logprobs(model: &str) -> bool {
    let model = bare(model);
    ["gpt-5", "o1", "o3", "o4"].iter().any(|family| {
        model
            .strip_prefix(family)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.']))
    })
}

/// The models OpenAI offers flex processing for (its pricing and flex guides, 2026), as the
/// start-up refusal names them.
pub const FLEX_MODELS: &str =
    "o3, o4-mini and the gpt-5 models (gpt-5, gpt-5-mini, gpt-5-nano, gpt-5.x)";

/// `model` is one of `FLEX_MODELS` (`gpt-5.1`, `gpt-5.1-mini`, ...), or a dated snapshot of one
/// (`o3-2025-04-16`); not the gpt-5 variants outside the list (`gpt-5-chat-latest`).
pub fn offers_flex(model: &str) -> bool {
    let family = undated(bare(model));
    let point_release = family.strip_prefix("gpt-5.").is_some_and(|rest| {
        let size = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        size.len() < rest.len() && ["", "-mini", "-nano"].contains(&size)
    });
    point_release || ["o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"].contains(&family)
}

/// `model` without a `provider/` prefix.
fn bare(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// `model` without a snapshot date (`-2025-04-16`).
fn undated(model: &str) -> &str {
    let Some((family, date)) = model.len().checked_sub(11).map(|at| model.split_at(at)) else {
        return model;
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = date.split('-').collect();
    match parts[..] {
        ["", y, m, d] if y.len() == 4 && digits(y) && digits(m) && digits(d) => family,
        _ => model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_is_offered_on_o3_o4_mini_and_the_gpt_5_models_only() {
        for model in [
            "o3",
            "o3-2025-04-16",
            "o4-mini",
            "o4-mini-2025-04-16",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano-2025-08-07",
            "gpt-5.1",
            "gpt-5.2-mini",
            "openai/gpt-5-mini",
        ] {
            assert!(offers_flex(model), "{model}");
        }
        for model in [
            "gpt-4.1-mini",
            "gpt-4o",
            "o3-mini",
            "o3-pro",
            "o1",
            "o4",
            "gpt-50",
            "gpt-5-chat-latest",
            "gpt-5-search-api",
            "gpt-5.",
            "gpt-5.1-chat",
            "gemma-3-270m",
        ] {
            assert!(!offers_flex(model), "{model}");
        }
    }

    #[test]
    fn reasoning_models_are_known_to_refuse_logprobs() {
        for model in [
            "gpt-5",
            "gpt-5-mini",
            "gpt-5.1",
            "o1",
            "o3-mini",
            "o4-mini",
            "openai/o3",
        ] {
            assert!(refuses_logprobs(model), "{model}");
        }
        for model in ["gpt-4.1-mini", "gpt-4o", "gpt-50", "o10", "gemma-3-270m"] {
            assert!(!refuses_logprobs(model), "{model}");
        }
    }
}
