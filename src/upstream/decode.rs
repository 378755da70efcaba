//! The step both protocols share when reading a 2xx body.

use serde_json::value::RawValue;

use super::error::UpstreamError;
use super::usage::Usage;

/// What the model wrote, and the logprobs of its tokens when they were asked for and sent.
#[derive(Debug, Default)]
pub struct Output {
    pub text: String,
    /// The protocol's array of token logprobs, kept raw: it is read only where the label is.
    pub logprobs: Option<Box<RawValue>>,
}

/// Parses a 2xx body as a protocol's response `R`: the model's text, and the tokens it reports,
/// which count even when the answer is unusable (they were billed all the same).
pub(super) fn decode_with<R: serde::de::DeserializeOwned>(
    body: &[u8],
    usage: impl Fn(&R) -> Usage,
    text: impl FnOnce(R) -> Result<Output, UpstreamError>,
) -> (Result<Output, UpstreamError>, Usage) {
    match serde_json::from_slice::<R>(body) {
        Ok(response) => {
            let usage = usage(&response);
            (text(response), usage)
        }
        Err(e) => (
            Err(UpstreamError::MalformedResponse(e.to_string())),
            Usage::default(),
        ),
    }
}

/// Whether raw logprobs hold any token: an empty list (or a `null`) is what a provider sends when
/// it was not asked.
pub(super) fn is_nonempty_array(raw: &RawValue) -> bool {
    let text = raw.get().trim_start();
    text.starts_with('[') && !text[1..].trim_start().starts_with(']')
}
