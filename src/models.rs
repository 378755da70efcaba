//! What OpenAI's models accept, as far as this code knows it: which reason and at what efforts,
//! which give logprobs (and take `temperature`) at which effort, and which are offered the flex
//! tier. The service reads it to send what will be accepted; the simulator reads the same table
//! to refuse as OpenAI does, so the tests meet the refusals. Whatever the table gets wrong, the
//! first 400 naming the parameter corrects for the endpoint (`upstream::endpoint`).
//!
//! Sources (checked 2026-12): OpenAI's reasoning guide and API reference (`reasoning.effort`:
//! "gpt-5.1 defaults to none ... All models before gpt-5.1 default to medium reasoning effort,
//! and do not support none", "xhigh is supported for all models after gpt-5.1-codex-max"), the
//! latest-model guide's "GPT-5.1 parameter compatibility" (logprobs, temperature and top_p only
//! with effort `none`), and the 400 OpenAI answers an unsupported effort with ("Unsupported
//! value: 'minimal' is not supported with the 'gpt-5.1' model. Supported values are: 'none',
//! 'low', 'medium', and 'high'.").

use std::fmt;

/// How much a reasoning model thinks before it answers (`reasoning.effort`, Chat's
/// `reasoning_effort`), lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effort {
    None,
    Minimal,
    Low,
    Medium,
    High,
    Xhigh,
}

impl Effort {
    /// Every effort, lowest first, by its name on the wire.
    pub const ALL: [(&'static str, Self); 6] = [
        ("none", Self::None),
        ("minimal", Self::Minimal),
        ("low", Self::Low),
        ("medium", Self::Medium),
        ("high", Self::High),
        ("xhigh", Self::Xhigh),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, e)| *e == self)
            .map(|(n, _)| *n)
            .expect("every effort is listed")
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, e)| *e)
    }
}

impl fmt::Display for Effort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The families of models this code knows, by what they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// OpenAI's models that do not reason (gpt-4.1, gpt-4o, gpt-3.5): no effort; logprobs.
    Classic,
    /// A model this table does not know (a local model, another provider's): treated as one
    /// that does not reason, but an effort configured by hand is sent.
    Unknown,
    /// gpt-5, gpt-5-mini, gpt-5-nano: `minimal` to `high`, `medium` unless told; never logprobs
    /// nor `temperature`.
    Gpt5,
    /// gpt-5.1 and later (gpt-5.4-nano, gpt-5.4-mini, gpt-5.5, ...): `none` to `high` (and `xhigh`
    /// from 5.2), `none` unless told; logprobs and `temperature` only at `none`.
    Gpt5Point { xhigh: bool },
    /// gpt-5-pro, gpt-5.x-pro: `high` only.
    Pro,
    /// o1, o3, o3-mini, o3-pro, o4-mini: `low` to `high`, `medium` unless told; never logprobs.
    OSeries,
    /// gpt-5-chat-latest and the other chat variants: no effort parameter, and (as reported)
    /// no logprobs.
    Gpt5Chat,
}

/// The family of `model` (which may carry a `provider/` prefix and a snapshot date).
pub fn family(model: &str) -> Family {
    let model = undated(bare(model));
    if ["gpt-4", "gpt-3.5", "chatgpt-4o"]
        .iter()
        .any(|p| model.starts_with(p))
    {
        return Family::Classic;
    }
    if ["o1", "o3", "o4"].iter().any(|f| is_family(model, f)) {
        return Family::OSeries;
    }
    let Some(rest) = model.strip_prefix("gpt-5") else {
        return Family::Unknown;
    };
    // `rest` is "", "-mini", ".4-nano", ".1-chat-latest", ... ; "gpt-50" is no gpt-5.
    let (point, variant) = match rest.strip_prefix('.') {
        Some(after) => {
            let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Family::Unknown;
            }
            let minor: u32 = after[..digits].parse().unwrap_or(u32::MAX);
            (Some(minor), &after[digits..])
        }
        None => (None, rest),
    };
    if !(variant.is_empty() || variant.starts_with('-')) {
        return Family::Unknown;
    }
    if variant.contains("-chat") {
        return Family::Gpt5Chat;
    }
    if variant.ends_with("-pro") {
        return Family::Pro;
    }
    match point {
        None => Family::Gpt5,
        Some(minor) => Family::Gpt5Point { xhigh: minor >= 2 },
    }
}

impl Family {
    /// The efforts the family accepts, lowest first; empty when it takes no effort parameter.
    pub fn efforts(self) -> &'static [Effort] {
        use Effort::*;
        match self {
            Self::Classic | Self::Unknown | Self::Gpt5Chat => &[],
            Self::Gpt5 => &[Minimal, Low, Medium, High],
            Self::Gpt5Point { xhigh: false } => &[None, Low, Medium, High],
            Self::Gpt5Point { xhigh: true } => &[None, Low, Medium, High, Xhigh],
            Self::Pro => &[High],
            Self::OSeries => &[Low, Medium, High],
        }
    }

    /// Whether the model thinks before it answers: its reasoning tokens count against the
    /// output cap, and Chat Completions takes `max_completion_tokens` from it, not `max_tokens`.
    pub fn reasons(self) -> bool {
        !self.efforts().is_empty()
    }

    /// The effort the model reasons at when none is sent.
    pub fn default_effort(self) -> Option<Effort> {
        match self {
            Self::Classic | Self::Unknown | Self::Gpt5Chat => None,
            Self::Gpt5 | Self::OSeries => Some(Effort::Medium),
            Self::Gpt5Point { .. } => Some(Effort::None),
            Self::Pro => Some(Effort::High),
        }
    }

    /// The cheapest effort the family accepts: what is sent unless `HNC_REASONING_EFFORT` says
    /// otherwise (a classifier gains nothing from thinking longer about a title).
    pub fn lowest_effort(self) -> Option<Effort> {
        self.efforts().first().copied()
    }

    /// Whether the model returns logprobs when asked with `sent` (or, with `None`, with no
    /// effort sent: its default). `temperature` and `top_p` follow the same rule.
    pub fn logprobs_with(self, sent: Option<Effort>) -> bool {
        match self {
            Self::Classic | Self::Unknown => true,
            Self::Gpt5 | Self::Pro | Self::OSeries | Self::Gpt5Chat => false,
            Self::Gpt5Point { .. } => sent.or(self.default_effort()) == Some(Effort::None),
        }
    }
}

/// The models OpenAI offers flex processing for (its pricing and flex guides, 2026), as the
/// start-up refusal names them.
pub const FLEX_MODELS: &str =
    "o3, o4-mini and the gpt-5 models (gpt-5, gpt-5-mini, gpt-5-nano, gpt-5.x)";

/// `model` is one of `FLEX_MODELS` (`gpt-5.1`, `gpt-5.4-mini`, ...), or a dated snapshot of one
/// (`o3-2025-04-16`); not the gpt-5 variants outside the list (`gpt-5-chat-latest`).
pub fn offers_flex(model: &str) -> bool {
    let family = undated(bare(model));
    let point_release = family.strip_prefix("gpt-5.").is_some_and(|rest| {
        let size = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        size.len() < rest.len() && ["", "-mini", "-nano"].contains(&size)
    });
    point_release || ["o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"].contains(&family)
}

/// `model` is `family` or a variant of it (`o3`, `o3-mini`), not another name (`o30`).
fn is_family(model: &str, family: &str) -> bool {
    model
        .strip_prefix(family)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.']))
}

/// `model` without a `provider/` prefix.
fn bare(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// `model` without a snapshot date (`-2025-04-16`).
pub fn undated(model: &str) -> &str {
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
            "gpt-5.4-nano",
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
    fn each_family_is_told_by_its_name_and_accepts_its_own_efforts() {
        use Effort as E;
        let cases = [
            ("gpt-4.1-mini", Family::Classic, None, true),
            ("gpt-4o-2024-08-06", Family::Classic, None, true),
            ("gemma-3-270m", Family::Unknown, None, true),
            ("gpt-50", Family::Unknown, None, true),
            ("gpt-5-mini", Family::Gpt5, Some(E::Minimal), false),
            (
                "gpt-5-nano-2025-08-07",
                Family::Gpt5,
                Some(E::Minimal),
                false,
            ),
            ("openai/gpt-5", Family::Gpt5, Some(E::Minimal), false),
            (
                "gpt-5.1",
                Family::Gpt5Point { xhigh: false },
                Some(E::None),
                true,
            ),
            (
                "gpt-5.4-nano",
                Family::Gpt5Point { xhigh: true },
                Some(E::None),
                true,
            ),
            (
                "gpt-5.4-mini-2026-03-17",
                Family::Gpt5Point { xhigh: true },
                Some(E::None),
                true,
            ),
            (
                "gpt-5.5",
                Family::Gpt5Point { xhigh: true },
                Some(E::None),
                true,
            ),
            ("gpt-5.2-pro", Family::Pro, Some(E::High), false),
            ("gpt-5-chat-latest", Family::Gpt5Chat, None, false),
            ("o3", Family::OSeries, Some(E::Low), false),
            ("o4-mini", Family::OSeries, Some(E::Low), false),
            ("o1", Family::OSeries, Some(E::Low), false),
        ];
        for (model, expected, lowest, logprobs_at_lowest) in cases {
            let family = family(model);
            assert_eq!(family, expected, "{model}");
            assert_eq!(family.lowest_effort(), lowest, "{model}");
            assert_eq!(family.logprobs_with(lowest), logprobs_at_lowest, "{model}");
        }
        let point = family("gpt-5.4-nano");
        assert!(!point.logprobs_with(Some(E::Low)), "logprobs only at none");
        assert!(point.logprobs_with(None), "none is the default");
        assert!(!point.efforts().contains(&E::Minimal));
        assert!(!family("gpt-5.1").efforts().contains(&E::Xhigh));
        assert_eq!(family("gpt-5-mini").default_effort(), Some(E::Medium));
        assert!(family("o4-mini").reasons() && !family("gpt-4.1").reasons());
    }

    #[test]
    fn efforts_are_ordered_and_named_as_on_the_wire() {
        assert!(Effort::None < Effort::Minimal && Effort::High < Effort::Xhigh);
        for (name, effort) in Effort::ALL {
            assert_eq!(Effort::parse(name), Some(effort));
            assert_eq!(effort.to_string(), name);
        }
        assert_eq!(Effort::parse("max"), None);
    }
}
