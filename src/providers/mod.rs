//! Provider clients: the edge between the `Provider` actors and the outside
//! world. Each implements [`herald_actors::model::ProviderClient`]: one
//! message in, a [`Receipt`] or a classified [`SendError`] out.
//!
//! - [`twilio`]: [`TwilioClient`], herald's own small Twilio Messages client
//!   on reqwest (see `docs/adr/0001-own-twilio-client.md`).
//! - [`resend`]: [`ResendClient`], Resend through the `resend-rs` crate, with
//!   its built-in rate limiter bypassed (herald limits rates itself).
//! - [`sandbox`]: [`SandboxClient`], a simulated provider that records what
//!   it would have sent (`HERALD_PROVIDER_MODE=sandbox`).
//!
//! Every client builds `SendError::detail` from statuses and codes and passes
//! provider text through [`herald_actors::mask::scrub`]: a detail never holds
//! a phone number, an email address or a secret.

pub mod resend;
pub mod sandbox;
pub mod twilio;

use std::time::Duration;

use herald_actors::mask;
use herald_actors::model::{FailureKind, SendError};
use reqwest::header::{HeaderMap, RETRY_AFTER};

pub use resend::{ResendClient, ResendParams};
pub use sandbox::SandboxClient;
pub use twilio::{TwilioClient, TwilioParams};

// Re-exported so callers need not depend on herald-actors for the trait.
pub use herald_actors::model::{Outbound, ProviderClient, Receipt};

/// Why a client could not be built. Raised at start-up, never per message.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The base URL does not parse or is not http(s).
    #[error("invalid base url {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build http client: {0}")]
    Http(#[from] reqwest::Error),
    /// An environment variable a provider library reads is unusable.
    #[error("invalid environment variable {name}: {reason}")]
    Env { name: &'static str, reason: String },
    /// The sandbox ledger file cannot be opened.
    #[error("cannot open sandbox ledger {path}: {source}")]
    Ledger {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The `User-Agent` every client sends.
pub(crate) const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// The longest provider message kept in a `SendError::detail`.
const MAX_PROVIDER_TEXT: usize = 200;

/// Parses a base URL (`https://api.twilio.com`, `http://127.0.0.1:4010/`)
/// and drops a trailing slash from its path.
pub(crate) fn parse_base_url(raw: &str) -> Result<url::Url, SetupError> {
    let url = url::Url::parse(raw.trim()).map_err(|e| SetupError::BaseUrl {
        url: raw.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SetupError::BaseUrl {
            url: raw.to_owned(),
            reason: "scheme must be http or https".to_owned(),
        });
    }
    if url.cannot_be_a_base() {
        return Err(SetupError::BaseUrl {
            url: raw.to_owned(),
            reason: "not a base url".to_owned(),
        });
    }
    Ok(url)
}

/// The HTTP client shared by every request of one provider client: one
/// connection pool, the per-request timeout as the default.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, SetupError> {
    Ok(reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?)
}

/// `Retry-After` as delta-seconds (`"3"`) or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value)
}

pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = chrono::Utc::now();
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Classifies a reqwest error that came before (or instead of) a response.
/// The detail names the failure, never the URL (it holds the account SID).
pub(crate) fn transport_error(
    provider: &str,
    err: &reqwest::Error,
    timeout: Duration,
) -> SendError {
    // A connect error is Transport even when it timed out: nothing was sent.
    if err.is_connect() {
        return SendError::new(
            FailureKind::Transport,
            format!("{provider}: cannot connect: {}", root_cause(err)),
        );
    }
    if err.is_timeout() {
        return SendError::new(
            FailureKind::Timeout,
            format!("{provider}: no response within {} ms", timeout.as_millis()),
        );
    }
    SendError::new(
        FailureKind::Transport,
        format!("{provider}: request failed: {}", root_cause(err)),
    )
}

/// The innermost error's text (`Connection refused (os error 111)`),
/// scrubbed: it is OS or protocol text, but be safe.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    truncate(&mask::scrub(&cur.to_string()), MAX_PROVIDER_TEXT)
}

/// Makes provider text safe for a `SendError::detail`: masks anything that
/// looks like a phone number or email, the recipient itself however it is
/// written, and any secret; then caps the length.
pub(crate) fn safe_text(text: &str, recipient: &str, secrets: &[&str]) -> String {
    let mut out = mask::scrub(text);
    let masked_recipient = if recipient.contains('@') {
        mask::email(recipient)
    } else {
        mask::phone(recipient)
    };
    if !recipient.is_empty() && out.contains(recipient) {
        out = out.replace(recipient, &masked_recipient);
    }
    // The recipient's bare address or digits, in case the provider quotes
    // it differently (`15551234567`, `jane@example.com` out of `Jane <...>`).
    let digits: String = recipient.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 7 && out.contains(&digits) {
        out = out.replace(&digits, &mask::phone(&digits));
    }
    for secret in secrets {
        if secret.len() >= 4 && out.contains(secret) {
            out = out.replace(secret, "***");
        }
    }
    truncate(&out, MAX_PROVIDER_TEXT)
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max_chars).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn safe_text_masks_recipient_and_secrets() {
        let s = safe_text(
            "The 'To' number 1 555 123 4567 (15551234567) is bad; key re_secret_1",
            "+15551234567",
            &["re_secret_1"],
        );
        assert!(!s.contains("15551234567"), "{s}");
        assert!(!s.contains("re_secret_1"), "{s}");
        let s = safe_text(
            "Invalid `to` field: jane@example.com.",
            "Jane <jane@example.com>",
            &[],
        );
        assert!(!s.contains("jane@"), "{s}");
    }

    #[test]
    fn base_urls_must_be_http() {
        assert!(parse_base_url("https://api.twilio.com").is_ok());
        assert!(parse_base_url("http://127.0.0.1:4010/").is_ok());
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("not a url").is_err());
    }
}
