//! Why one upstream call failed. Each variant maps to a stable `error_code` that reaches the caller
//! in the per-item error, with a message that says what happened but never echoes request headers
//! or keys.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

/// The failure of a single call to the provider.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream did not answer within {}s", .0.as_secs_f64())]
    Timeout(Duration),

    /// The whole chain is in the message: "error sending request" alone would hide the cause
    /// (a refused connection, a certificate the roots do not trust, a proxy's refusal).
    #[error("could not reach the upstream: {}", causes(.0))]
    Transport(#[source] TransportError),

    #[error("the upstream answered HTTP {status}{}: {message}", code_suffix(.code))]
    Http {
        status: u16,
        /// OpenAI's `error.code` (e.g. `rate_limit_exceeded`, `insufficient_quota`), if any.
        code: Option<String>,
        message: String,
        /// `retry-after-ms` / `retry-after`, when sent.
        retry_after: Option<Duration>,
        /// `x-should-retry`, when sent.
        should_retry: Option<bool>,
    },

    #[error("the model refused to classify the title: {0}")]
    Refusal(String),

    #[error("the response ended with status `{status}`{}", reason_suffix(.reason))]
    NotCompleted {
        status: String,
        reason: Option<String>,
    },

    #[error("the upstream response is not a valid Responses API body: {0}")]
    MalformedResponse(String),

    #[error("the model output is not valid JSON for the answer schema: {0}")]
    InvalidOutput(String),

    #[error("the model answered topic {0:?}, which is not in the taxonomy")]
    OffTaxonomy(String),

    #[error("the model answered confidence {0}, which is outside 0..1")]
    ConfidenceOutOfRange(f64),

    /// The provider refused the logprobs parameters for this model (a 400 naming them): the
    /// endpoint asks for a written confidence from then on, and the call goes again at once.
    #[error("the model does not return logprobs: {0}")]
    LogprobsRefused(String),

    /// A 2xx answer without logprobs (a provider that ignored the parameters this once): this
    /// call goes again at once with a written confidence; only a refusal (400) switches the
    /// endpoint.
    #[error("the answer came without logprobs: {0}")]
    NoLogprobs(&'static str),

    /// The provider refused the reasoning effort sent (a 400 naming it): the endpoint sends one
    /// its message lists, or none, from then on, and the call goes again at once.
    #[error("the model does not take this reasoning effort: {0}")]
    EffortRefused(String),

    /// Chat Completions refused `max_tokens` (a reasoning model): the endpoint sends
    /// `max_completion_tokens` from then on, and the call goes again at once.
    #[error("the model does not take max_tokens: {0}")]
    MaxTokensRefused(String),

    /// Logprobs came, but the label's probability cannot be read from them (tokens that do not
    /// spell the answer, no probability left): this call goes again at once with a written
    /// confidence; the endpoint keeps asking for logprobs.
    #[error("the label's probability cannot be read from the logprobs: {0}")]
    LogprobsUnreadable(&'static str),
}

/// Why the upstream client could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the API key contains characters not allowed in an HTTP header")]
    InvalidApiKey,
    #[error("no upstream endpoint is configured")]
    NoEndpoints,
    #[error("an upstream URL has no host")]
    InvalidUrl,
    /// TLS to the proxy (and SOCKS) is not wired in, and a plaintext CONNECT to an `https://`
    /// proxy would put its credentials on the wire in the clear: refused rather than half-done.
    #[error(
        "the proxy for {origin} is a {scheme}:// URL (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY); only \
         http:// proxies are supported: name it as http://HOST:PORT (calls to an https:// \
         upstream are still encrypted end to end through its CONNECT tunnel)"
    )]
    UnsupportedProxy { origin: String, scheme: String },
}

/// Why a call got no HTTP answer: the upstream was not reached, or the exchange broke off.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("could not connect")]
    Connect(#[source] Box<dyn Error + Send + Sync>),
    #[error("the proxy did not open a tunnel")]
    Proxy(#[source] Box<dyn Error + Send + Sync>),
    /// The proxy answered 407 to the tunnel's CONNECT: no wait will change that.
    #[error("{PROXY_CREDENTIALS}")]
    ProxyCredentials,
    #[error("the TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("the HTTP handshake failed")]
    Handshake(#[source] Box<dyn Error + Send + Sync>),
    #[error("error sending the request")]
    Send(#[source] Box<dyn Error + Send + Sync>),
    #[error("error reading the response")]
    Body(#[source] Box<dyn Error + Send + Sync>),
    /// Opening a connection (TCP, proxy, TLS, handshake) took longer than its one timeout.
    #[error("opening a connection took more than {}s", .0.as_secs_f64())]
    OpenTimeout(Duration),
    /// The connection the call was on stopped answering PINGs and was closed.
    #[error("the connection stopped answering PINGs within {}s and was replaced", .0.as_secs_f64())]
    Unresponsive(Duration),
    #[error("the response is larger than HNC_UPSTREAM_MAX_RESPONSE_BYTES ({0} bytes)")]
    TooLarge(usize),
    /// The failure of the connection this call waited for, opened for several calls.
    #[error(transparent)]
    Shared(Arc<TransportError>),
}

impl TransportError {
    /// A response over the size cap: asking again would get the same.
    pub fn is_too_large(&self) -> bool {
        match self {
            Self::TooLarge(_) => true,
            Self::Shared(inner) => inner.is_too_large(),
            _ => false,
        }
    }

    /// The proxy refused our credentials: asking again would get the same.
    pub fn is_proxy_credentials(&self) -> bool {
        match self {
            Self::ProxyCredentials => true,
            Self::Shared(inner) => inner.is_proxy_credentials(),
            _ => false,
        }
    }

    /// Nothing was sent: the connection could not be opened (TCP, DNS, the proxy, TLS, the
    /// handshake, their timeout). Unlike a broken exchange, no token can have been spent.
    pub fn is_before_sending(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Proxy(_) | Self::Tls(_) | Self::Handshake(_) => true,
            Self::OpenTimeout(_) => true,
            Self::Shared(inner) => inner.is_before_sending(),
            _ => false,
        }
    }

    /// Final whatever the wait: a response over the cap, credentials the proxy refuses.
    pub fn is_final(&self) -> bool {
        self.is_too_large() || self.is_proxy_credentials()
    }

    /// The call was lost with a connection our PING check found dead: that connection's
    /// failure, not the endpoint's (see `Endpoint::track_health`).
    pub fn is_connection_replaced(&self) -> bool {
        matches!(self, Self::Unresponsive(_))
    }
}

impl UpstreamError {
    /// The stable machine-readable code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "upstream_timeout",
            Self::Transport(e) if e.is_too_large() => "upstream_response_too_large",
            Self::Transport(e) if e.is_proxy_credentials() => "upstream_proxy_refused",
            Self::Transport(_) => "upstream_unreachable",
            Self::Http {
                code: Some(code), ..
            } if code == "insufficient_quota" => "upstream_quota_exhausted",
            Self::Http { status: 429, .. } => "upstream_rate_limited",
            Self::Http { status: 407, .. } => "upstream_proxy_refused",
            Self::Http { status, .. } if *status >= 500 => "upstream_server_error",
            Self::Http { .. } => "upstream_rejected",
            Self::Refusal(_) => "model_refused",
            Self::NotCompleted { .. } => "response_incomplete",
            Self::MalformedResponse(_) => "upstream_malformed",
            Self::InvalidOutput(_) => "invalid_output",
            Self::OffTaxonomy(_) => "off_taxonomy",
            Self::ConfidenceOutOfRange(_) => "confidence_out_of_range",
            Self::LogprobsRefused(_) => "logprobs_refused",
            Self::NoLogprobs(_) => "logprobs_missing",
            Self::EffortRefused(_) => "reasoning_effort_refused",
            Self::MaxTokensRefused(_) => "max_tokens_refused",
            Self::LogprobsUnreadable(_) => "logprobs_unreadable",
        }
    }
}

/// What a proxy's 407 means, and the settings to check: said the same whether the proxy
/// refused a tunnel (CONNECT) or a forwarded request.
pub const PROXY_CREDENTIALS: &str = "the proxy refused the credentials (HTTP 407 Proxy \
    Authentication Required): check the user and password in HTTPS_PROXY, HTTP_PROXY or ALL_PROXY";

/// `error` and every cause under it, joined by ": ", repeats left out.
fn causes(error: &TransportError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = inner.source();
    }
    text
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default()
}

fn reason_suffix(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

/// Removes anything that looks like an API key from provider text before it reaches a caller or a
/// log: OpenAI's 401 message quotes a masked prefix and suffix of the key it was given.
pub(crate) fn scrub_secrets(text: &str, key: &str) -> String {
    let cleaned = if key.is_empty() {
        text.to_owned()
    } else {
        text.replace(key, "[redacted]")
    };
    cleaned
        .split(' ')
        .map(|word| {
            if word.starts_with("sk-") || word.starts_with("\"sk-") {
                "[redacted]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_masked_openai_keys_and_our_own_key() {
        let msg =
            "Incorrect API key provided: sk-proj-abc*****xyz. You can find your API key at...";
        let out = scrub_secrets(msg, "");
        assert!(!out.contains("sk-"), "{out}");
        assert!(out.starts_with("Incorrect API key provided: [redacted]"));
        assert_eq!(
            scrub_secrets("key=mysecret here", "mysecret"),
            "key=[redacted] here"
        );
    }

    #[test]
    fn codes_follow_the_http_status() {
        let http = |status| UpstreamError::Http {
            status,
            code: None,
            message: String::new(),
            retry_after: None,
            should_retry: None,
        };
        assert_eq!(http(429).code(), "upstream_rate_limited");
        assert_eq!(http(503).code(), "upstream_server_error");
        assert_eq!(http(400).code(), "upstream_rejected");
        assert_eq!(http(407).code(), "upstream_proxy_refused");
        let tunnel = UpstreamError::Transport(TransportError::ProxyCredentials);
        assert_eq!(tunnel.code(), "upstream_proxy_refused");
        assert!(
            !tunnel.is_retryable(),
            "no wait changes refused credentials"
        );
    }
}
