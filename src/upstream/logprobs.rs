//! The label's confidence read from the provider's logprobs rather than written by the model: at
//! the position where the label is written, the probabilities of the tokens that begin each
//! label, renormalised over the taxonomy. It costs no extra call, and it is a probability, where
//! a written number is the model's guess about itself.
//!
//! Some servers (llama.cpp) report the distribution from before the JSON grammar, so the top
//! alternatives can be tokens no label begins with: those are left out (each position is
//! renormalised over the tokens that lead to a label, as the grammar would), and the labels whose
//! first tokens are missing from the list hold part of the mass the list leaves over, rather
//! than none.

use serde::Deserialize;

/// Alternatives asked for at each position: the most OpenAI accepts.
pub const TOP_LOGPROBS: u8 = 20;

/// One output token, its log probability, and the likeliest tokens at its position, as both
/// protocols report them (Responses: a content part's `logprobs`; Chat Completions:
/// `choices[0].logprobs.content`).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    #[serde(default)]
    pub top_logprobs: Vec<Alternative>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Alternative {
    pub token: String,
    pub logprob: f64,
}

/// The answer's tokens laid end to end, with where each starts in the text they spell.
pub struct Spelled<'a> {
    tokens: &'a [TokenLogprob],
    starts: Vec<usize>,
    text: String,
}

impl<'a> Spelled<'a> {
    /// The tokens, if they spell `text` exactly (otherwise positions cannot be matched).
    pub fn new(tokens: &'a [TokenLogprob], text: &str) -> Option<Self> {
        let mut starts = Vec::with_capacity(tokens.len());
        let mut spelled = String::with_capacity(text.len());
        for token in tokens {
            starts.push(spelled.len());
            spelled.push_str(&token.token);
        }
        (spelled == text).then_some(Self {
            tokens,
            starts,
            text: spelled,
        })
    }

    /// The share of probability the model gave `chosen`, whose value starts at byte `at` of
    /// the text, against every label of `labels`; rounded to 4 decimals (the digits beyond say
    /// nothing). `None` when `at` is not in the text or `chosen` is not a label.
    ///
    /// At each position the chosen token and the alternatives that can lead to a label are
    /// renormalised among themselves: that is what a grammar limited to the labels does, so
    /// probabilities reported from before the grammar (llama.cpp) read as those after it. At the
    /// first position, labels no listed token leads to hold the mass the list leaves over, each
    /// at most the smallest listed probability (a token outside the top list is no likelier
    /// than the last one in it).
    pub fn label_share(&self, at: usize, chosen: &str, labels: &[&str]) -> Option<f64> {
        let chosen_index = labels.iter().position(|l| *l == chosen)?;
        let end = at + chosen.len();
        if end > self.text.len() || self.text.get(at..end) != Some(chosen) {
            return None;
        }
        let first = self.starts.iter().rposition(|start| *start <= at)?;
        let mut mass = vec![0.0; labels.len()];
        let mut along = 1.0; // the probability of the chosen tokens so far, under the grammar
        let mut written = String::new(); // the label's text the chosen tokens wrote so far
        for (i, token) in self.tokens.iter().enumerate().skip(first) {
            let start = self.starts[i];
            let token_end = start + token.token.len();
            // The part of the first token before the label (a quote, `":"`) is fixed: an
            // alternative must write it too.
            let fixed = if i == first {
                &self.text[start..at]
            } else {
                ""
            };
            let alternatives = self.leading_to_labels(token, fixed, &written, labels);
            let chosen_p = token.logprob.exp();
            let mut total = chosen_p + alternatives.iter().map(|(_, p)| p).sum::<f64>();
            let mut unlisted = Vec::new();
            if i == first {
                let chosen_text = &self.text[at..token_end.min(end)];
                unlisted = (0..labels.len())
                    .filter(|k| !fits(labels[*k], chosen_text))
                    .filter(|k| !alternatives.iter().any(|(fit, _)| fit.contains(k)))
                    .collect();
                let share = unlisted_share(token, unlisted.len());
                for k in &unlisted {
                    mass[*k] = share;
                }
                total += share * unlisted.len() as f64;
            }
            if total <= 0.0 {
                return None;
            }
            for k in &unlisted {
                mass[*k] /= total;
            }
            for (fitting, p) in &alternatives {
                for k in fitting {
                    mass[*k] += along * p / total / fitting.len() as f64;
                }
            }
            along *= chosen_p / total;
            written.push_str(&self.text[start.max(at)..token_end.min(end)]);
            if token_end >= end {
                break;
            }
        }
        mass[chosen_index] += along;
        let total: f64 = mass.iter().sum();
        (total > 0.0).then(|| (mass[chosen_index] / total * 10_000.0).round() / 10_000.0)
    }

    /// The alternatives to `token` that lead to a label from what the label's chosen tokens
    /// `written` so far (after the `fixed` part of the first token), with the labels each
    /// leads to and its probability.
    fn leading_to_labels(
        &self,
        token: &TokenLogprob,
        fixed: &str,
        written: &str,
        labels: &[&str],
    ) -> Vec<(Vec<usize>, f64)> {
        token
            .top_logprobs
            .iter()
            .filter(|a| a.token != token.token)
            .filter_map(|a| {
                let would_write = format!("{written}{}", a.token.strip_prefix(fixed)?);
                let fitting: Vec<usize> = (0..labels.len())
                    .filter(|k| fits(labels[*k], &would_write))
                    .collect();
                (!would_write.is_empty() && !fitting.is_empty()).then(|| (fitting, a.logprob.exp()))
            })
            .collect()
    }
}

/// The probability each of `unlisted` labels holds at the first position: the list's leftover
/// split between them, but no more than the smallest listed probability each.
fn unlisted_share(token: &TokenLogprob, unlisted: usize) -> f64 {
    if unlisted == 0 {
        return 0.0;
    }
    let leftover = (1.0 - listed_mass(token)).max(0.0);
    let smallest = token
        .top_logprobs
        .iter()
        .map(|a| a.logprob.exp())
        .fold(f64::INFINITY, f64::min);
    (leftover / unlisted as f64).min(smallest)
}

/// The probability the top list holds at a position, the chosen token counted once.
fn listed_mass(token: &TokenLogprob) -> f64 {
    let listed: f64 = token.top_logprobs.iter().map(|a| a.logprob.exp()).sum();
    if token.top_logprobs.iter().any(|a| a.token == token.token) {
        listed
    } else {
        listed + token.logprob.exp()
    }
}

/// Whether a token that writes `would_write` from the label's start can be on the way to
/// `label`: it stops inside the label, or it ends the label and closes its string.
fn fits(label: &str, would_write: &str) -> bool {
    label.starts_with(would_write)
        || would_write
            .strip_prefix(label)
            .is_some_and(|after| after.starts_with('"'))
}

/// Where each `"topic"` value starts in a JSON answer (byte offsets, in the order written).
pub fn topic_values(text: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("\"topic\"").map(|a| from + a) {
        from = at + "\"topic\"".len();
        let rest = &text[from..];
        let after_colon = rest
            .trim_start()
            .strip_prefix(':')
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('"'));
        if let Some(value) = after_colon {
            found.push(text.len() - value.len());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: [&str; 4] = ["security_privacy", "science_math_research", "other", "ai"];

    fn token(text: &str, p: f64, top: &[(&str, f64)]) -> TokenLogprob {
        TokenLogprob {
            token: text.to_owned(),
            logprob: p.ln(),
            top_logprobs: top
                .iter()
                .map(|(t, p)| Alternative {
                    token: (*t).to_owned(),
                    logprob: p.ln(),
                })
                .collect(),
        }
    }

    fn share(tokens: &[TokenLogprob]) -> f64 {
        let text: String = tokens.iter().map(|t| t.token.as_str()).collect();
        let at = topic_values(&text)[0];
        let chosen_end = text[at..].find('"').unwrap() + at;
        Spelled::new(tokens, &text)
            .unwrap()
            .label_share(at, &text[at..chosen_end], &LABELS)
            .unwrap()
    }

    #[test]
    fn whole_label_tokens_give_the_renormalised_probability() {
        let tokens = [
            token("{\"topic\":\"", 1.0, &[]),
            token(
                "security_privacy",
                0.6,
                &[
                    ("security_privacy", 0.6),
                    ("other", 0.2),
                    ("ai", 0.1),
                    ("science_math_research", 0.05),
                ],
            ),
            token("\"}", 1.0, &[]),
        ];
        // 0.6 of the 0.95 the labels hold; the 0.05 left over goes to no label: all are listed.
        assert_eq!(share(&tokens), (0.6_f64 / 0.95 * 1e4).round() / 1e4);
    }

    #[test]
    fn labels_that_share_a_first_token_are_told_apart_further_along() {
        // `s` begins security and science: the second token decides between them.
        let tokens = [
            token("{\"topic\":\"", 1.0, &[]),
            token("s", 0.8, &[("s", 0.8), ("other", 0.2)]),
            token("ecurity_privacy", 0.75, &[("cience_math_research", 0.25)]),
            token("\"}", 1.0, &[]),
        ];
        // security 0.8 * 0.75 = 0.6, science 0.8 * 0.25 = 0.2, other 0.2.
        assert_eq!(share(&tokens), 0.6);
    }

    #[test]
    fn tokens_the_grammar_forbids_are_left_out_and_unlisted_labels_share_the_rest() {
        // llama.cpp under a schema: alternatives from before the grammar (`Open`, `AI`), the
        // chosen label far down the list, and labels missing from it altogether.
        let tokens = [
            token("{\"topic\": \"", 1.0, &[]),
            token(
                "security",
                0.014,
                &[
                    ("Open", 0.3),
                    ("AI", 0.2),
                    ("other", 0.1),
                    ("security", 0.014),
                ],
            ),
            token("_privacy", 1.0, &[]),
            token("\"}", 1.0, &[]),
        ];
        // Listed: 0.614, so 0.386 is left for science and ai, which no listed token begins, but
        // each is at most 0.014 (the smallest listed): security 0.014 of 0.014 + 0.1 + 2 x 0.014.
        assert_eq!(share(&tokens), (0.014_f64 / 0.142 * 1e4).round() / 1e4);
        // Had the unlisted labels counted as zero, security would read 0.014 / 0.114 = 0.123;
        // had they split the whole leftover, 0.014 / 0.5 = 0.028.
    }

    #[test]
    fn a_quote_inside_the_first_token_is_part_of_what_an_alternative_must_write() {
        let tokens = [
            token("{\"topic\":", 1.0, &[]),
            token(
                "\"other",
                0.5,
                &[("\"ai", 0.25), ("\"science", 0.25), ("'x", 0.1)],
            ),
            token("\"}", 1.0, &[]),
        ];
        assert_eq!(share(&tokens), 0.5);
    }

    #[test]
    fn packed_answers_have_a_value_per_topic_key_and_tokens_must_spell_the_text() {
        let text = r#"{"items":[{"id":0,"topic":"ai"},{"id":1, "topic" : "other"}]}"#;
        let at = topic_values(text);
        assert_eq!(at.len(), 2);
        assert_eq!(&text[at[0]..at[0] + 2], "ai");
        assert_eq!(&text[at[1]..at[1] + 5], "other");
        let tokens = [token("{\"topic\":\"ai\"}", 1.0, &[])];
        assert!(Spelled::new(&tokens, "{\"topic\":\"ai\"} ").is_none());
        let spelled = Spelled::new(&tokens, "{\"topic\":\"ai\"}").unwrap();
        assert_eq!(spelled.label_share(10, "ai", &LABELS), Some(1.0));
        assert_eq!(spelled.label_share(10, "nope", &LABELS), None);
    }
}
