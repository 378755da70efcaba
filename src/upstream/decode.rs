//! The step both protocols share when reading a 2xx body.

use super::error::UpstreamError;
use super::logprobs::TokenLogprob;
use super::usage::Usage;

/// What the model wrote, and the logprobs of its tokens when they were asked for and sent.
#[derive(Debug, Default)]
pub struct Output {
    pub text: String,
    pub logprobs: Option<Vec<TokenLogprob>>,
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
