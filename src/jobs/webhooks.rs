//! Signed webhooks, as the Standard Webhooks specification says: when a job ends, its
//! `callback_url` receives `{"type": "job.completed", "timestamp", "data": <the job>}` with
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` and the base64 HMAC-SHA256
//! of `id.timestamp.body` under `HNC_WEBHOOK_SECRET`, `whsec_` and base64). A delivery is kept
//! on disk until a 2xx answers it and retried on the specification's schedule (5 s, 5 min,
//! 30 min, 2 h, 5 h, 10 h, 10 h: a little over a day), so it arrives at least once.
//!
//! A callback to a loopback, private, link-local or otherwise internal address is refused
//! unless `HNC_WEBHOOK_ALLOW_PRIVATE` is set: a caller must not make the service probe its own
//! network. The host is resolved and checked again at each delivery, the connection goes to the
//! address checked (so a DNS answer that changes in between cannot redirect it), and redirects
//! are not followed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// When a failed delivery is tried again, after each failure in turn; after the last, it is
/// given up.
pub const SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How long one delivery may take, and the name lookup before it.
const TIMEOUT: Duration = Duration::from_secs(15);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WebhookSecretError {
    #[error("HNC_WEBHOOK_SECRET must be `whsec_` followed by base64 (24 to 64 bytes once decoded)")]
    Invalid,
}

/// The signing key and the address policy, from the settings.
#[derive(Clone)]
pub struct Webhooks {
    key: Vec<u8>,
    pub allow_private: bool,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("key", &"[redacted]")
            .field("allow_private", &self.allow_private)
            .finish()
    }
}

impl Webhooks {
    /// From `HNC_WEBHOOK_SECRET` (`whsec_` and base64, as the specification's libraries take it).
    pub fn new(secret: &Secret, allow_private: bool) -> Result<Self, WebhookSecretError> {
        let text = secret.expose();
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookSecretError::Invalid)?;
        if !(24..=64).contains(&key.len()) {
            return Err(WebhookSecretError::Invalid);
        }
        Ok(Self { key, allow_private })
    }

    /// `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Why `url` may not be called back, if it may not: checked when a job is submitted. A host
    /// that does not resolve now is not refused (DNS may be down for a moment; each delivery
    /// resolves and checks again).
    pub async fn refusal(&self, url: &str) -> Option<String> {
        match self.resolve(url).await {
            Err(Refused::Policy(why)) => Some(why),
            Err(Refused::Unresolved(_)) | Ok(_) => None,
        }
    }

    /// The address to call `url` at: every address its host resolves to must be public
    /// (unless private ones are allowed), and the first is used.
    async fn resolve(&self, url: &str) -> Result<(reqwest::Url, SocketAddr), Refused> {
        let policy = |why: String| Refused::Policy(why);
        let parsed = reqwest::Url::parse(url).map_err(|e| policy(format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(policy("the scheme must be http or https".to_owned()));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| policy("the URL has no host".to_owned()))?
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // hickory's resolver, as the upstream connector's: the image's static binary has no
        // getaddrinfo to call.
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, crate::upstream::lookup_host(host));
        let addrs: Vec<SocketAddr> = lookup
            .await
            .map_err(|_| Refused::Unresolved(format!("{host} did not resolve in time")))?
            .map_err(|e| Refused::Unresolved(format!("{host} does not resolve: {e}")))?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        let first = *addrs
            .first()
            .ok_or_else(|| Refused::Unresolved(format!("{host} has no address")))?;
        if !self.allow_private
            && let Some(inner) = addrs.iter().find(|a| is_internal(a.ip()))
        {
            return Err(policy(format!(
                "{host} is an internal address ({}); set HNC_WEBHOOK_ALLOW_PRIVATE to call it back",
                inner.ip()
            )));
        }
        Ok((parsed, first))
    }

    /// Sends one attempt of delivery `id`: `Ok` on a 2xx, else why not. The id is the event's
    /// on every attempt (a receiver's key for not acting twice); the timestamp and signature
    /// are the attempt's, since verifiers refuse timestamps more than a few minutes old.
    pub async fn deliver(&self, url: &str, id: &str, body: &str) -> Result<(), String> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (parsed, addr) = self.resolve(url).await.map_err(Refused::into_message)?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        // No proxy: a proxy would resolve the host itself, past the address checked here.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .resolve(&host, addr)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", self.sign(id, timestamp, body))
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

/// Why a callback URL cannot be called now.
enum Refused {
    /// Never: not http(s), or an internal address.
    Policy(String),
    /// Not now: its host does not resolve.
    Unresolved(String),
}

impl Refused {
    fn into_message(self) -> String {
        match self {
            Self::Policy(why) | Self::Unresolved(why) => why,
        }
    }
}

/// Addresses a caller must not make the service call: loopback, private, link-local, shared
/// (CGNAT), benchmarking, reserved, unspecified, multicast, documentation; in IPv6 also
/// unique-local, site-local, documentation, and every form that carries an IPv4 address
/// (mapped, compatible, NAT64, 6to4), judged by the address it carries.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || a == 0
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let carried = |hi: u16, lo: u16| {
                let [h1, h2] = hi.to_be_bytes();
                let [l1, l2] = lo.to_be_bytes();
                is_internal(IpAddr::V4(std::net::Ipv4Addr::new(h1, h2, l1, l2)))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16).
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return carried(s[6], s[7]);
            }
            if (s[0] == 0x64 && s[1] == 0xff9b) || s[0] == 0x2002 {
                let (hi, lo) = if s[0] == 0x2002 {
                    (s[1], s[2])
                } else {
                    (s[6], s[7])
                };
                return carried(hi, lo);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_specification_s_example_does() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let hooks = Webhooks::new(
            &Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            false,
        )
        .unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            hooks.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(Webhooks::new(&Secret::new("whsec_short"), false).is_err());
    }

    #[test]
    fn internal_addresses_are_told_apart_from_public_ones() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fec0::1",
            "2001:db8::1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
