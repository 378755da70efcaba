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

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Alternatives asked for at each position: the most OpenAI accepts.
pub const TOP_LOGPROBS: u8 = 20;

/// One output token as both protocols report it (Responses: a content part's `logprobs`; Chat
/// Completions: `choices[0].logprobs.content`). The answer's body is mostly these (about 12 KiB
/// for a label with 20 alternatives a token), so only what every token needs is parsed: its
/// text and logprob. `bytes` (what the token really is when its text cannot be: a UTF-8
/// character split over two tokens) and the alternatives are left raw and read only where
/// needed, at the label's positions.
#[derive(Deserialize)]
struct RawToken<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    #[serde(default, borrow)]
    bytes: Option<&'a RawValue>,
    logprob: f64,
    #[serde(default, borrow)]
    top_logprobs: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawAlternative<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    #[serde(default, borrow)]
    bytes: Option<&'a RawValue>,
    logprob: f64,
}

/// A token's bytes: its text, or `bytes` when the text lost some (a replacement character).
fn bytes_of<'t>(token: &Cow<'t, str>, bytes: Option<&RawValue>) -> Cow<'t, [u8]> {
    if token.contains('\u{fffd}')
        && let Some(raw) = bytes.and_then(|b| serde_json::from_str::<Vec<u8>>(b.get()).ok())
    {
        return Cow::Owned(raw);
    }
    match token {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.as_bytes().to_vec()),
    }
}

/// A label as it appears inside the answer's JSON string (quotes and backslashes escaped).
fn in_json(label: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(label).expect("a string always serialises");
    quoted.as_bytes()[1..quoted.len() - 1].to_vec()
}

/// One token laid down: its bytes, logprob, and its alternatives still raw.
struct Token<'a> {
    bytes: Cow<'a, [u8]>,
    logprob: f64,
    top: Option<&'a RawValue>,
}

/// An alternative at a position, read.
struct Alternative {
    bytes: Vec<u8>,
    logprob: f64,
}

impl Token<'_> {
    fn alternatives(&self) -> Vec<Alternative> {
        let Some(raw) = self.top else {
            return Vec::new();
        };
        serde_json::from_str::<Vec<RawAlternative<'_>>>(raw.get())
            .unwrap_or_default()
            .into_iter()
            .map(|a| Alternative {
                bytes: bytes_of(&a.token, a.bytes).into_owned(),
                logprob: a.logprob,
            })
            .collect()
    }
}

/// The answer's tokens laid end to end, with where each starts in the bytes they spell.
pub struct Spelled<'a> {
    tokens: Vec<Token<'a>>,
    starts: Vec<usize>,
    text: Vec<u8>,
}

impl<'a> Spelled<'a> {
    /// The tokens of `logprobs` (the protocol's JSON array), if their bytes spell `text`
    /// exactly (otherwise positions cannot be matched).
    pub fn parse(logprobs: &'a RawValue, text: &str) -> Option<Self> {
        let raw: Vec<RawToken<'a>> = serde_json::from_str(logprobs.get()).ok()?;
        let mut starts = Vec::with_capacity(raw.len());
        let mut spelled = Vec::with_capacity(text.len());
        let mut tokens = Vec::with_capacity(raw.len());
        for token in raw {
            let bytes = bytes_of(&token.token, token.bytes);
            starts.push(spelled.len());
            spelled.extend_from_slice(&bytes);
            tokens.push(Token {
                bytes,
                logprob: token.logprob,
                top: token.top_logprobs,
            });
        }
        (spelled == text.as_bytes()).then_some(Self {
            tokens,
            starts,
            text: spelled,
        })
    }

    /// The share of probability the model gave `chosen`, whose value starts at byte `at` of
    /// the text, against every label of `labels`; rounded to 4 decimals (the digits beyond say
    /// nothing). `None` when the label is not written at `at`, or no probability is left.
    ///
    /// The chosen label's probability is the product of its tokens' along the path written; an
    /// alternative at a position goes to the labels it can lead to. At each position the chosen
    /// token and those alternatives are renormalised among themselves: that is what a grammar
    /// limited to the labels does, so probabilities reported from before the grammar
    /// (llama.cpp) read as those after it. At the first position, labels no listed token leads
    /// to hold the mass the list leaves over, each at most the smallest listed probability (a
    /// token outside the top list is no likelier than the last one in it). When a longer label
    /// begins with the chosen one, the position after it (the closing quote, or more of the
    /// longer label) is weighed too.
    pub fn label_share(&self, at: usize, chosen: &str, labels: &[&str]) -> Option<f64> {
        let chosen_index = labels.iter().position(|l| *l == chosen)?;
        let labels: Vec<Vec<u8>> = labels.iter().map(|l| in_json(l)).collect();
        let chosen = &labels[chosen_index];
        let end = at + chosen.len();
        if self.text.get(at..end) != Some(chosen.as_slice()) {
            return None;
        }
        let longer_exists = labels
            .iter()
            .any(|l| l.len() > chosen.len() && l.starts_with(chosen));
        let first = self.starts.iter().rposition(|start| *start <= at)?;
        let mut mass = vec![0.0; labels.len()];
        let mut along = 1.0; // the probability of the chosen tokens so far, under the grammar
        let mut written: Vec<u8> = Vec::new(); // what the chosen tokens wrote from the label on
        for (i, token) in self.tokens.iter().enumerate().skip(first) {
            let start = self.starts[i];
            let token_end = start + token.bytes.len();
            // The part of the first token before the label (a quote, `":"`) is fixed: an
            // alternative must write it too.
            let fixed = if i == first {
                &self.text[start..at]
            } else {
                &[][..]
            };
            let listed = token.alternatives();
            let alternatives = leading_to_labels(token, &listed, fixed, &written, &labels);
            let chosen_p = token.logprob.exp();
            let mut total = chosen_p + alternatives.iter().map(|(_, p)| p).sum::<f64>();
            let mut unlisted = Vec::new();
            if i == first {
                let chosen_wrote = &self.text[at..token_end.min(end)];
                unlisted = (0..labels.len())
                    .filter(|k| !fits(&labels[*k], chosen_wrote))
                    .filter(|k| !alternatives.iter().any(|(fit, _)| fit.contains(k)))
                    .collect();
                let share = unlisted_share(token, &listed, unlisted.len());
                for k in &unlisted {
                    mass[*k] = share;
                }
                total += share * unlisted.len() as f64;
            }
            if total <= 0.0 || !total.is_finite() {
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
            written.extend_from_slice(&self.text[start.max(at)..token_end]);
            // Done once the label is written and the token after it is weighed when a longer
            // label could have gone on.
            if token_end > end || (token_end == end && !longer_exists) {
                break;
            }
        }
        mass[chosen_index] += along;
        let total: f64 = mass.iter().sum();
        (total > 0.0 && total.is_finite())
            .then(|| (mass[chosen_index] / total * 10_000.0).round() / 10_000.0)
    }
}

/// The alternatives to `token` (`listed`) that lead to a label from what the chosen tokens
/// `written` so far (after the `fixed` part of the first token), with the labels each leads to
/// and its probability.
fn leading_to_labels(
    token: &Token<'_>,
    listed: &[Alternative],
    fixed: &[u8],
    written: &[u8],
    labels: &[Vec<u8>],
) -> Vec<(Vec<usize>, f64)> {
    listed
        .iter()
        .filter(|a| a.bytes != *token.bytes)
        .filter_map(|a| {
            let rest = a.bytes.strip_prefix(fixed)?;
            let would_write = [written, rest].concat();
            let fitting: Vec<usize> = (0..labels.len())
                .filter(|k| fits(&labels[*k], &would_write))
                .collect();
            (!would_write.is_empty() && !fitting.is_empty()).then(|| (fitting, a.logprob.exp()))
        })
        .collect()
}

/// The probability each of `unlisted` labels holds at the first position: the list's leftover
/// split between them, but no more than the smallest listed probability each.
fn unlisted_share(token: &Token<'_>, listed: &[Alternative], unlisted: usize) -> f64 {
    if unlisted == 0 {
        return 0.0;
    }
    let mut mass: f64 = listed.iter().map(|a| a.logprob.exp()).sum();
    if !listed.iter().any(|a| a.bytes == *token.bytes) {
        mass += token.logprob.exp();
    }
    let leftover = (1.0 - mass).max(0.0);
    let smallest = listed
        .iter()
        .map(|a| a.logprob.exp())
        .fold(f64::INFINITY, f64::min);
    (leftover / unlisted as f64).min(smallest)
}

/// Whether a token that writes `would_write` from the label's start can be on the way to
/// `label`: it stops inside the label, or it ends the label and closes its string.
fn fits(label: &[u8], would_write: &[u8]) -> bool {
    label.starts_with(would_write)
        || would_write
            .strip_prefix(label)
            .is_some_and(|after| after.first() == Some(&b'"'))
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

    use serde_json::{Value, json};

    /// A token as the protocols send it.
    fn token(text: &str, p: f64, top: &[(&str, f64)]) -> Value {
        let top: Vec<Value> = top
            .iter()
            .map(|(t, p)| json!({"token": t, "logprob": p.ln()}))
            .collect();
        json!({"token": text, "logprob": p.ln(), "top_logprobs": top})
    }

    /// The raw JSON array of `tokens`, and the text they spell.
    fn raw(tokens: &[Value]) -> (Box<RawValue>, String) {
        let text = tokens
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        let raw = RawValue::from_string(Value::from(tokens.to_vec()).to_string()).unwrap();
        (raw, text)
    }

    fn share(tokens: &[Value]) -> f64 {
        let (raw, text) = raw(tokens);
        let at = topic_values(&text)[0];
        let chosen_end = text[at..].find('"').unwrap() + at;
        Spelled::parse(&raw, &text)
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
    fn a_label_that_begins_a_longer_one_is_weighed_past_its_end() {
        let labels = ["tech", "tech_policy", "other"];
        let tokens = [
            token("{\"topic\":\"", 1.0, &[]),
            token("tech", 0.9, &[("other", 0.1)]),
            token("\"}", 0.5, &[("_policy", 0.5)]),
        ];
        let (raw, text) = raw(&tokens);
        let spelled = Spelled::parse(&raw, &text).unwrap();
        // tech 0.9 x 0.5, tech_policy 0.9 x 0.5, other 0.1.
        assert_eq!(spelled.label_share(10, "tech", &labels), Some(0.45));
    }

    #[test]
    fn labels_are_matched_as_json_writes_them_and_tokens_by_their_bytes() {
        // A label with a quote is escaped in the answer; a label with a character split over
        // two tokens is matched by the tokens' bytes, not their (lossy) text.
        let labels = ["say \"hi\"", "café", "other"];
        let quoted = [
            token("{\"topic\":\"", 1.0, &[]),
            token("say \\\"hi\\\"", 0.8, &[("other", 0.2)]),
            token("\"}", 1.0, &[]),
        ];
        let (raw_quoted, text) = raw(&quoted);
        let spelled = Spelled::parse(&raw_quoted, &text).unwrap();
        assert_eq!(spelled.label_share(10, "say \"hi\"", &labels), Some(0.8));

        let mut split = [
            token("{\"topic\":\"", 1.0, &[]),
            token("caf\u{fffd}", 0.7, &[("other", 0.3)]),
            token("\u{fffd}", 1.0, &[]),
            token("\"}", 1.0, &[]),
        ];
        let e_acute = "é".as_bytes();
        split[1]["bytes"] = json!([b"caf".as_slice(), &e_acute[..1]].concat());
        split[2]["bytes"] = json!(e_acute[1..].to_vec());
        let (raw_split, _) = raw(&split);
        let text = "{\"topic\":\"café\"}";
        let spelled = Spelled::parse(&raw_split, text).expect("spelled by bytes");
        assert_eq!(spelled.label_share(10, "café", &labels), Some(0.7));
    }

    #[test]
    fn packed_answers_have_a_value_per_topic_key_and_tokens_must_spell_the_text() {
        let text = r#"{"items":[{"id":0,"topic":"ai"},{"id":1, "topic" : "other"}]}"#;
        let at = topic_values(text);
        assert_eq!(at.len(), 2);
        assert_eq!(&text[at[0]..at[0] + 2], "ai");
        assert_eq!(&text[at[1]..at[1] + 5], "other");
        let (tokens, _) = raw(&[token("{\"topic\":\"ai\"}", 1.0, &[])]);
        assert!(Spelled::parse(&tokens, "{\"topic\":\"ai\"} ").is_none());
        let spelled = Spelled::parse(&tokens, "{\"topic\":\"ai\"}").unwrap();
        assert_eq!(spelled.label_share(10, "ai", &LABELS), Some(1.0));
        assert_eq!(spelled.label_share(10, "nope", &LABELS), None);
    }
}
