//! `ResendClient`: email through Resend's `POST /emails`, using the official
//! `resend-rs` crate, with the event id as `Idempotency-Key`.
//!
//! # What resend-rs does on its own, and how herald deals with it
//! (read from resend-rs 0.35.1, `src/config.rs` and `src/rate_limit.rs`)
//!
//! - **Rate limiter.** Every request of a `resend_rs::Config` first waits on
//!   a `governor` limiter built in `Config::new`: a burst of
//!   `RESEND_RATE_LIMIT` (env, default 9) refilled one request per 1.1 s —
//!   under 1 request/s sustained, below even Resend's default 2/s. There is
//!   no switch to turn it off, and `Config::new` panics when
//!   `RESEND_RATE_LIMIT` is not a non-zero `u32`. herald limits rates itself
//!   (per class and per provider, in the actors), so this client builds a
//!   fresh `Config` for every send: each starts with a full burst, so the
//!   first (only) request never waits. That costs a few `Arc` clones and one
//!   environment read per send; the reqwest client and its connection pool
//!   are shared. [`ResendClient::new`] checks `RESEND_RATE_LIMIT` up front so
//!   a bad value fails at start-up instead of panicking mid-send.
//! - **Retries.** `emails.send` never retries. The crate offers
//!   `rate_limit::send_with_retry` / `retry!` (opt-in, and they block the
//!   thread with `std::thread::sleep`); herald does not use them: retries go
//!   through the broker. The one exception is a connection dropped after
//!   the request went out: asked again at once, once, with the same
//!   `Idempotency-Key` (Resend answers a repeated key with the first
//!   result). SMS has no such key, so the Twilio client never does this.
//! - **What errors keep.** A 429 becomes `Error::RateLimit` with the
//!   `ratelimit-limit/-remaining/-reset` headers but not `Retry-After`:
//!   `retry_after` is taken from `ratelimit-reset` (seconds). Other 4xx/5xx
//!   become `Error::Resend` with the `statusCode` and `name` of the JSON
//!   body (the HTTP status itself and any `Retry-After` on a 5xx are not
//!   exposed). A 4xx/5xx whose body is not that JSON becomes `Error::Parse`
//!   with the raw body and no status: herald recovers the status when the
//!   body is JSON with `status`/`statusCode` (problem+json from a gateway or
//!   Prism), else (an HTML page from a proxy) classifies it `ProviderError`.
//!   All 429s look alike, so a daily/monthly quota error is `Throttled` too.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use herald_actors::model::{FailureKind, Outbound, ProviderClient, Receipt, SendError};
use resend_rs::types::{CreateEmailBaseOptions, ErrorResponse};
use resend_rs::{ConfigBuilder, Resend};

use super::{http_client, parse_base_url, safe_text, transport_error, SetupError};

/// The environment variable resend-rs reads for its built-in limiter.
const RESEND_RATE_LIMIT_ENV: &str = "RESEND_RATE_LIMIT";

/// What a Resend client needs; plain values, no config types.
#[derive(Clone)]
pub struct ResendParams {
    /// API root: `https://api.resend.com`, a proxy or a fake.
    pub base_url: String,
    /// Bearer token (`re_…`).
    pub api_key: String,
    /// `from` of every email (`Acme <noreply@acme.com>`).
    pub from: String,
    /// The whole request, connect to last body byte.
    pub timeout: Duration,
}

impl fmt::Debug for ResendParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendParams")
            .field("base_url", &self.base_url)
            .field("api_key", &"re_***")
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Resend client. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct ResendClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keeps connections to Resend open between sends; handed to resend-rs.
    http: reqwest::Client,
    /// API root given to resend-rs (it never reads `RESEND_BASE_URL` then).
    base_url: url::Url,
    /// Bearer token; kept out of `Debug` and error details.
    api_key: String,
    /// `from` of every email.
    from: String,
    /// Per-request timeout (the client default), for error details.
    timeout: Duration,
}

impl ResendClient {
    pub fn new(params: ResendParams) -> Result<ResendClient, SetupError> {
        check_rate_limit_env()?;
        Ok(ResendClient {
            inner: Arc::new(Inner {
                http: http_client(params.timeout)?,
                base_url: parse_base_url(&params.base_url)?,
                api_key: params.api_key,
                from: params.from,
                timeout: params.timeout,
            }),
        })
    }

    async fn send_one(inner: Arc<Inner>, msg: Outbound) -> Result<Receipt, SendError> {
        // A fresh Config per send bypasses resend-rs's limiter (module docs).
        let config = ConfigBuilder::new(inner.api_key.clone())
            .base_url(inner.base_url.clone())
            .client(inner.http.clone())
            .build();
        let resend = Resend::with_config(config);

        let email = || {
            let to = recipient(&msg.to, msg.to_name.as_deref());
            CreateEmailBaseOptions::new(inner.from.as_str(), [to], msg.subject.as_str())
                .with_text(&msg.body)
        };
        let result = if msg.idempotency_key.is_empty() {
            resend.emails.send(email()).await
        } else {
            let keyed = || email().with_idempotency_key(&msg.idempotency_key);
            match resend.emails.send(keyed()).await {
                // The connection dropped after the request went out (a
                // pooled connection the server had just closed, a reset):
                // Resend may or may not have it. The same Idempotency-Key
                // makes asking again safe, and spares the email a retry
                // through the broker, a class's base delay later. (Built
                // again only then: no copy of every email on the way.)
                Err(resend_rs::Error::Http(e)) if dropped_mid_request(&e) => {
                    resend.emails.send(keyed()).await
                }
                result => result,
            }
        };
        match result {
            Ok(created) => Ok(Receipt {
                provider_id: String::from(&*created.id),
            }),
            Err(err) => Err(classify(&err, &msg.to, &inner)),
        }
    }
}

/// `Name <addr>` when there is a display name, quoted when it holds
/// specials; line breaks dropped so nothing can smuggle in a header.
fn recipient(addr: &str, name: Option<&str>) -> String {
    let addr: String = addr.chars().filter(|c| !c.is_control()).collect();
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return addr;
    };
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    if name.chars().any(|c| "()<>[]:;@\\,.\"".contains(c)) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\" <{addr}>")
    } else {
        format!("{name} <{addr}>")
    }
}

/// Refuses a `RESEND_RATE_LIMIT` that would make resend-rs panic.
fn check_rate_limit_env() -> Result<(), SetupError> {
    match std::env::var(RESEND_RATE_LIMIT_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(e) => Err(SetupError::Env {
            name: RESEND_RATE_LIMIT_ENV,
            reason: e.to_string(),
        }),
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(SetupError::Env {
                name: RESEND_RATE_LIMIT_ENV,
                reason: "must be a positive integer".to_owned(),
            }),
        },
    }
}

/// A request that failed on its connection after it was sent: not a
/// refused connection, a timeout or an unreadable answer.
fn dropped_mid_request(e: &reqwest::Error) -> bool {
    e.is_request() && !e.is_connect() && !e.is_timeout()
}

/// Maps a resend-rs error to herald's failure kinds.
fn classify(err: &resend_rs::Error, to: &str, inner: &Inner) -> SendError {
    match err {
        resend_rs::Error::Http(e) => {
            if e.is_decode() {
                // A 2xx whose body is not `{"id"}`: Resend may have accepted
                // it; a retry with the same Idempotency-Key is safe.
                let mut out = SendError::new(
                    FailureKind::ProviderError,
                    "resend: unreadable success response",
                );
                out.status = e.status().map(|s| s.as_u16());
                out
            } else {
                transport_error("resend", e, inner.timeout)
            }
        }
        resend_rs::Error::RateLimit {
            ratelimit_limit,
            ratelimit_reset,
            ..
        } => SendError {
            kind: FailureKind::Throttled,
            status: Some(429),
            code: None,
            detail: match ratelimit_limit {
                Some(limit) => format!("resend http 429: rate limit {limit} exceeded"),
                None => "resend http 429: rate limit exceeded".to_owned(),
            },
            retry_after: ratelimit_reset.map(Duration::from_secs),
        },
        resend_rs::Error::Resend(resp) => from_error_response(resp, to, inner),
        resend_rs::Error::Parse { message, .. } => from_unparsed_body(message),
        resend_rs::Error::Other(text) => SendError::new(
            FailureKind::ProviderError,
            format!("resend: {}", safe_text(text, to, &[&inner.api_key])),
        ),
    }
}

fn from_error_response(resp: &ErrorResponse, to: &str, inner: &Inner) -> SendError {
    let status = resp.status_code;
    let message = safe_text(&resp.message, to, &[&inner.api_key]);
    let kind = match resp.name.as_str() {
        "concurrent_idempotent_requests"
        | "rate_limit_exceeded"
        | "daily_quota_exceeded"
        | "monthly_quota_exceeded"
        | "resource_locked" => FailureKind::Throttled,
        "invalid_idempotent_request" | "invalid_idempotency_key" => FailureKind::Rejected,
        "missing_api_key" | "invalid_api_key" | "restricted_api_key" | "suspended_api_key"
        | "invalid_permission" => FailureKind::Unauthorized,
        "validation_error"
        | "invalid_parameter"
        | "missing_required_field"
        | "invalid_to_address"
            if names_the_recipient(&resp.message) =>
        {
            FailureKind::InvalidRecipient
        }
        "application_error" | "internal_server_error" | "service_unavailable" => {
            FailureKind::ProviderError
        }
        _ => FailureKind::from_http_status(status),
    };
    SendError {
        kind,
        status: Some(status),
        code: None,
        detail: format!("resend http {status} {}: {message}", safe_name(&resp.name)),
        retry_after: None,
    }
}

/// A 4xx/5xx whose body is not Resend's `{"statusCode","name","message"}`
/// (resend-rs keeps only the raw body). The status is recovered when the
/// body is JSON carrying one (`application/problem+json` from a gateway or
/// Prism has `status`); otherwise it is unknown and the answer is treated as
/// a provider failure. The body itself is never copied into the detail.
fn from_unparsed_body(body: &str) -> SendError {
    let status = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["statusCode", "status"]
                .iter()
                .find_map(|k| v.get(*k).and_then(serde_json::Value::as_u64))
        })
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (400..600).contains(s));
    match status {
        Some(status) => SendError {
            kind: FailureKind::from_http_status(status),
            status: Some(status),
            code: None,
            detail: format!("resend http {status}: error body not in resend's format"),
            retry_after: None,
        },
        None => SendError::new(
            FailureKind::ProviderError,
            "resend: error response without a readable status",
        ),
    }
}

/// The failure kind of a bare HTTP error status.
/// Whether a Resend validation message is about the `to` field
/// (``Invalid `to` field. The email address needs to follow…``).
fn names_the_recipient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "`to`",
        "'to'",
        "\"to\"",
        "to field",
        "to address",
        "recipient",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Resend's error `name` is an identifier; keep it that way.
fn safe_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

impl ProviderClient for ResendClient {
    fn send(&self, msg: Outbound) -> BoxFuture<'static, Result<Receipt, SendError>> {
        ResendClient::send_one(self.inner.clone(), msg).boxed()
    }
}

impl fmt::Debug for ResendClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendClient")
            .field("base_url", &self.inner.base_url.as_str())
            .field("from", &self.inner.from)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Inner {
        Inner {
            http: reqwest::Client::new(),
            base_url: url::Url::parse("http://127.0.0.1:1").unwrap(),
            api_key: "re_secret".into(),
            from: "a@b.c".into(),
            timeout: Duration::from_secs(1),
        }
    }

    fn response(status: u16, name: &str, message: &str) -> resend_rs::Error {
        resend_rs::Error::Resend(ErrorResponse {
            status_code: status,
            name: name.into(),
            message: message.into(),
        })
    }

    #[test]
    fn classifies_resend_errors() {
        let i = inner();
        let kind = |e: resend_rs::Error| classify(&e, "jane@example.com", &i).kind;
        assert_eq!(
            kind(response(
                422,
                "validation_error",
                "Invalid `to` field. The email address needs to follow the `email@example.com` format."
            )),
            FailureKind::InvalidRecipient
        );
        assert_eq!(
            kind(response(422, "validation_error", "Invalid `from` field.")),
            FailureKind::Rejected
        );
        assert_eq!(
            kind(response(409, "concurrent_idempotent_requests", "")),
            FailureKind::Throttled
        );
        assert_eq!(
            kind(response(409, "invalid_idempotent_request", "")),
            FailureKind::Rejected
        );
        assert_eq!(
            kind(response(401, "missing_api_key", "")),
            FailureKind::Unauthorized
        );
        assert_eq!(
            kind(response(403, "invalid_api_key", "")),
            FailureKind::Unauthorized
        );
        assert_eq!(
            kind(response(500, "application_error", "")),
            FailureKind::ProviderError
        );
        assert_eq!(
            kind(response(502, "whatever", "")),
            FailureKind::ProviderError
        );
        assert_eq!(kind(response(404, "not_found", "")), FailureKind::Rejected);
        let e = classify(
            &resend_rs::Error::RateLimit {
                ratelimit_limit: Some(2),
                ratelimit_remaining: Some(0),
                ratelimit_reset: Some(3),
            },
            "x@y.z",
            &i,
        );
        assert_eq!(e.kind, FailureKind::Throttled);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn recovers_the_status_of_foreign_error_bodies() {
        let i = inner();
        let parse = |body: &str| resend_rs::Error::Parse {
            message: body.to_owned(),
            source: None,
        };
        let e = classify(
            &parse(
                r#"{"type":"https://stoplight.io/prism/errors#UNPROCESSABLE_ENTITY","status":422}"#,
            ),
            "x@y.z",
            &i,
        );
        assert_eq!((e.kind, e.status), (FailureKind::Rejected, Some(422)));
        let e = classify(
            &parse("<html>502 Bad Gateway jane@example.com</html>"),
            "jane@example.com",
            &i,
        );
        assert_eq!((e.kind, e.status), (FailureKind::ProviderError, None));
        assert!(!e.detail.contains("jane"));
    }

    #[test]
    fn details_hold_no_address_or_key() {
        let i = inner();
        let e = classify(
            &response(
                422,
                "validation_error",
                "Invalid `to` field: jane@example.com (key re_secret)",
            ),
            "jane@example.com",
            &i,
        );
        assert!(!e.detail.contains("jane@"), "{}", e.detail);
        assert!(!e.detail.contains("re_secret"), "{}", e.detail);
    }

    #[test]
    fn formats_display_names() {
        assert_eq!(recipient("jane@example.com", None), "jane@example.com");
        assert_eq!(
            recipient("jane@example.com", Some("Jane")),
            "Jane <jane@example.com>"
        );
        assert_eq!(
            recipient("jane@example.com", Some("Doe, Jane \"JD\"")),
            "\"Doe, Jane \\\"JD\\\"\" <jane@example.com>"
        );
        assert_eq!(
            recipient("jane@example.com", Some("A\r\nBcc: x")),
            "\"ABcc: x\" <jane@example.com>"
        );
    }
}
