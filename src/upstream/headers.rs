//! What a provider's response headers say about its limits and about retrying:
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, `retry-after-ms`, `retry-after` and
//! `x-should-retry`.

use std::time::Duration;

use http::HeaderMap;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    /// Requests per minute the provider allows (`x-ratelimit-limit-requests`).
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// Tokens per minute the provider allows (`x-ratelimit-limit-tokens`).
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// `retry-after-ms`, else `retry-after` in seconds.
    pub retry_after: Option<Duration>,
    /// `x-should-retry`: the provider's own verdict, which overrides ours.
    pub should_retry: Option<bool>,
}

impl RateHeaders {
    pub fn parse(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let retry_after_ms = text("retry-after-ms")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0));
        let retry_after_s = text("retry-after")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        Self {
            limit_requests: number("x-ratelimit-limit-requests"),
            remaining_requests: number("x-ratelimit-remaining-requests"),
            limit_tokens: number("x-ratelimit-limit-tokens"),
            remaining_tokens: number("x-ratelimit-remaining-tokens"),
            retry_after: retry_after_ms.or(retry_after_s),
            should_retry: match text("x-should-retry") {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn reads_limits_and_prefers_retry_after_ms() {
        let h = RateHeaders::parse(&headers(&[
            ("x-ratelimit-limit-requests", "30000"),
            ("x-ratelimit-remaining-requests", "29990"),
            ("x-ratelimit-limit-tokens", "150000000"),
            ("retry-after-ms", "300"),
            ("retry-after", "1"),
            ("x-should-retry", "false"),
        ]));
        assert_eq!(h.limit_requests, Some(30000));
        assert_eq!(h.remaining_requests, Some(29990));
        assert_eq!(h.limit_tokens, Some(150_000_000));
        assert_eq!(h.retry_after, Some(Duration::from_millis(300)));
        assert_eq!(h.should_retry, Some(false));
    }

    #[test]
    fn falls_back_to_retry_after_seconds_and_ignores_garbage() {
        let h = RateHeaders::parse(&headers(&[
            ("retry-after", "2"),
            ("x-ratelimit-limit-requests", "lots"),
        ]));
        assert_eq!(h.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(h.limit_requests, None);
        assert_eq!(
            RateHeaders::parse(&headers(&[("retry-after-ms", "-5")])).retry_after,
            None
        );
    }
}
