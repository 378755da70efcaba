//! What a call says about thinking: the reasoning effort it sends, the output tokens it leaves
//! for reasoning on top of the answer's own, and which parameter caps the answer in Chat
//! Completions. Chosen per endpoint from the model's family (`crate::models`) and the settings,
//! and corrected by the provider's 400s: a refused effort names the values the model takes.

use crate::models::{Effort, Family};

/// Which effort calls send (`HNC_REASONING_EFFORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EffortSetting {
    /// The lowest the model accepts (`none` on gpt-5.1+, `minimal` on gpt-5, `low` on the
    /// o-series); nothing to a model that does not reason.
    #[default]
    Auto,
    /// Never sent: the model reasons at its own default.
    Off,
    /// This effort, to every model but OpenAI's that take none (gpt-4.x, the gpt-5 chat
    /// variants).
    Fixed(Effort),
}

impl EffortSetting {
    /// Every value by its name in settings (`HNC_REASONING_EFFORT`).
    pub const NAMES: [(&'static str, Self); 8] = [
        ("auto", Self::Auto),
        ("off", Self::Off),
        ("none", Self::Fixed(Effort::None)),
        ("minimal", Self::Fixed(Effort::Minimal)),
        ("low", Self::Fixed(Effort::Low)),
        ("medium", Self::Fixed(Effort::Medium)),
        ("high", Self::Fixed(Effort::High)),
        ("xhigh", Self::Fixed(Effort::Xhigh)),
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
    }

    /// The effort to send to a model of `family`.
    pub fn for_family(self, family: Family) -> Option<Effort> {
        match self {
            Self::Auto => family.lowest_effort(),
            Self::Off => None,
            Self::Fixed(_) if matches!(family, Family::Classic | Family::Gpt5Chat) => None,
            Self::Fixed(effort) => Some(effort),
        }
    }
}

/// The reasoning settings, parsed once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReasoningSettings {
    pub effort: EffortSetting,
    /// Output tokens left for reasoning on a model that reasons (`HNC_REASONING_TOKENS`);
    /// `None`: by effort (`room_for`).
    pub room: Option<u32>,
}

/// How Chat Completions caps the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatCap {
    /// What every compatible server knows.
    MaxTokens,
    /// What OpenAI wants, and what its reasoning models demand (they refuse `max_tokens`).
    MaxCompletionTokens,
}

/// What one call says of reasoning. `Copy`, compared to tell whether a refusal was already
/// learnt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thinking {
    pub family: Family,
    /// Sent as `reasoning.effort` / `reasoning_effort`; `None`: not sent.
    pub effort: Option<Effort>,
    /// Output tokens beyond the answer's, for reasoning.
    pub room: u32,
    pub chat_cap: ChatCap,
}

/// Room to think at `effort`, for a title's label: enough that the answer is not cut short at
/// the simulator's draws and the reasoning reported for such tasks, small enough that a TPM
/// reservation (which counts the cap) does not starve the pacer.
pub fn room_for(effort: Option<Effort>) -> u32 {
    match effort {
        None | Some(Effort::None) => 0,
        Some(Effort::Minimal) => 256,
        Some(Effort::Low) => 1024,
        Some(Effort::Medium) => 4096,
        Some(Effort::High) => 8192,
        Some(Effort::Xhigh) => 16384,
    }
}

/// The least and the most room the retry of an answer cut short while reasoning gets.
const ROOMIER_MIN: u32 = 2048;
const ROOMIER_MAX: u32 = 32768;

impl Thinking {
    /// For `model` under `settings`; `openai` when the endpoint is OpenAI's own API (Chat there
    /// takes `max_completion_tokens` from every model).
    pub fn new(model: &str, openai: bool, settings: ReasoningSettings) -> Self {
        let family = crate::models::family(model);
        let effort = settings.effort.for_family(family);
        let chat_cap = if openai || family.reasons() {
            ChatCap::MaxCompletionTokens
        } else {
            ChatCap::MaxTokens
        };
        let mut thinking = Self {
            family,
            effort,
            room: 0,
            chat_cap,
        };
        thinking.room = thinking.room_with(settings.room);
        thinking
    }

    /// What `model` gets with the default settings, on a server that is not OpenAI's.
    pub fn default_for(model: &str) -> Self {
        Self::new(model, false, ReasoningSettings::default())
    }

    /// The effort the model reasons at: the one sent, or its default.
    pub fn effective_effort(&self) -> Option<Effort> {
        self.effort.or(self.family.default_effort())
    }

    fn room_with(&self, configured: Option<u32>) -> u32 {
        match self.effective_effort() {
            None | Some(Effort::None) => 0,
            effort => configured.unwrap_or_else(|| room_for(effort)),
        }
    }

    /// Whether the model gives logprobs as this call asks.
    pub fn logprobs(&self) -> bool {
        self.family.logprobs_with(self.effort)
    }

    /// The cap Chat sends, if any: none at effort `none` where `max_completion_tokens` would be
    /// sent, since gpt-5.4 is reported to ignore `none` under that cap and spend all of it
    /// thinking. The strict schema bounds the answer (a label from an enum, keyed by fixed ids),
    /// so no cap costs no runaway.
    pub fn chat_cap(&self) -> Option<ChatCap> {
        match (self.chat_cap, self.effective_effort()) {
            (ChatCap::MaxCompletionTokens, Some(Effort::None)) => None,
            (cap, _) => Some(cap),
        }
    }

    /// The same, with more room: for the retry of an answer the cap cut short while the model
    /// reasoned, and what the endpoint asks with after it.
    pub fn roomier(self) -> Self {
        Self {
            room: self.room.saturating_mul(4).clamp(ROOMIER_MIN, ROOMIER_MAX),
            ..self
        }
    }

    /// What to send after the provider refused this call's effort: one of the values its 400
    /// lists (the lowest at or above the one sent, else the highest), or none at all when it
    /// refused the parameter itself or listed nothing usable.
    pub fn after_effort_refused(self, message: &str, settings: ReasoningSettings) -> Self {
        let supported = supported_values(message);
        let wanted = self.effort.unwrap_or(Effort::None);
        let effort = supported
            .iter()
            .copied()
            .filter(|e| *e >= wanted)
            .min()
            .or_else(|| supported.iter().copied().max());
        let mut next = Self { effort, ..self };
        next.room = next.room_with(settings.room);
        next
    }

    /// What to send after Chat refused `max_tokens` (a reasoning model on OpenAI or Azure).
    pub fn after_max_tokens_refused(self) -> Self {
        Self {
            chat_cap: ChatCap::MaxCompletionTokens,
            ..self
        }
    }
}

/// The efforts a 400 lists: "Supported values are: 'none', 'low', 'medium', and 'high'."
fn supported_values(message: &str) -> Vec<Effort> {
    let Some((_, list)) = message.split_once("Supported values are") else {
        return Vec::new();
    };
    list.split('\'')
        .skip(1)
        .step_by(2)
        .filter_map(Effort::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_effort_is_sent_with_room_to_think_only_where_the_model_reasons() {
        let nano = Thinking::default_for("gpt-5.4-nano");
        assert_eq!((nano.effort, nano.room), (Some(Effort::None), 0));
        assert_eq!(nano.chat_cap(), None, "no cap at none, as reported");
        assert!(nano.logprobs());
        let mini = Thinking::default_for("gpt-5-mini");
        assert_eq!((mini.effort, mini.room), (Some(Effort::Minimal), 256));
        assert_eq!(mini.chat_cap(), Some(ChatCap::MaxCompletionTokens));
        assert!(!mini.logprobs());
        let o4 = Thinking::default_for("o4-mini");
        assert_eq!((o4.effort, o4.room), (Some(Effort::Low), 1024));
        let classic = Thinking::default_for("gpt-4.1-mini");
        assert_eq!((classic.effort, classic.room), (None, 0));
        assert_eq!(classic.chat_cap(), Some(ChatCap::MaxTokens));
        let on_openai = Thinking::new("gpt-4.1-mini", true, ReasoningSettings::default());
        assert_eq!(on_openai.chat_cap(), Some(ChatCap::MaxCompletionTokens));
        let off = ReasoningSettings {
            effort: EffortSetting::Off,
            room: None,
        };
        let unsent = Thinking::new("gpt-5.4", true, off);
        assert_eq!(unsent.effort, None);
        assert_eq!(
            unsent.chat_cap(),
            None,
            "it reasons at none, its default: no cap either"
        );
    }

    #[test]
    fn settings_fix_the_effort_and_the_room() {
        let off = ReasoningSettings {
            effort: EffortSetting::Off,
            room: None,
        };
        let mini = Thinking::new("gpt-5-mini", false, off);
        assert_eq!(mini.effort, None);
        assert_eq!(
            mini.room, 4096,
            "the model's default, medium, gets medium's room"
        );
        let high = ReasoningSettings {
            effort: EffortSetting::Fixed(Effort::High),
            room: Some(100),
        };
        assert_eq!(Thinking::new("gpt-4.1", false, high).effort, None);
        assert_eq!(
            Thinking::new("qwen3-8b", false, high).effort,
            Some(Effort::High)
        );
        assert_eq!(Thinking::new("o3", false, high).room, 100);
        assert_eq!(
            EffortSetting::parse("xhigh"),
            Some(EffortSetting::Fixed(Effort::Xhigh))
        );
        assert_eq!(EffortSetting::parse("max"), None);
    }

    #[test]
    fn a_refused_effort_is_replaced_by_one_the_provider_lists() {
        let settings = ReasoningSettings::default();
        let sent = Thinking {
            effort: Some(Effort::Minimal),
            ..Thinking::default_for("gpt-5.1")
        };
        let message = "Unsupported value: 'minimal' is not supported with the 'gpt-5.1' model. \
                       Supported values are: 'none', 'low', 'medium', and 'high'.";
        let next = sent.after_effort_refused(message, settings);
        assert_eq!((next.effort, next.room), (Some(Effort::Low), 1024));
        let pro = Thinking::default_for("gpt-5.9-codex").after_effort_refused(
            "Unsupported value: 'none' is not supported with this model. Supported values are: 'high'.",
            settings,
        );
        assert_eq!(pro.effort, Some(Effort::High));
        let none = sent.after_effort_refused(
            "Unsupported parameter: 'reasoning.effort' is not supported with this model.",
            settings,
        );
        assert_eq!(none.effort, None);
        assert_eq!(none.room, 0, "gpt-5.1 reasons at none by default");
        assert_eq!(sent.roomier().room, 2048);
    }
}
