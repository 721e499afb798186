//! `TwilioClient`: herald's own client for Twilio's Messages API.
//!
//! One call: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form
//! encoded (`To`, `From`, `Body`, `StatusCallback`), HTTP basic auth
//! `sid:token`. The base URL is a parameter so herald can reach a regional
//! edge, a proxy, Prism or [`crate::fakes::FakeTwilio`]; why this is not the
//! `twilio-async` crate is in `docs/adr/0001-own-twilio-client.md`.
//!
//! Twilio has no idempotency key for message create, so a timeout is
//! reported as [`FailureKind::Timeout`] (the outcome is unknown) and never
//! papered over here: retries are the class sender's decision.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use herald_actors::model::{FailureKind, Outbound, ProviderClient, Receipt, SendError};
use serde::Deserialize;

use super::{http_client, parse_base_url, retry_after, safe_text, transport_error, SetupError};

/// What a Twilio client needs; plain values, no config types.
#[derive(Clone)]
pub struct TwilioParams {
    /// API root: `https://api.twilio.com`, a regional edge, a proxy or a fake.
    pub base_url: String,
    /// `AC…`; in the path and the basic-auth user.
    pub account_sid: String,
    /// The basic-auth password.
    pub auth_token: String,
    /// The sending number (`From`).
    pub from: String,
    /// Where Twilio posts delivery status (`StatusCallback`), if anywhere.
    pub status_callback: Option<String>,
    /// The whole request, connect to last body byte.
    pub timeout: Duration,
}

impl fmt::Debug for TwilioParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioParams")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"***")
            .field("from", &self.from)
            .field("status_callback", &self.status_callback)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Twilio Messages client. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct TwilioClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keeps connections to Twilio open between sends.
    http: reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}/Messages.json`, built once.
    messages_url: url::Url,
    /// Basic-auth user.
    account_sid: String,
    /// Basic-auth password; kept out of `Debug` and error details.
    auth_token: String,
    /// `From` of every message.
    from: String,
    /// `StatusCallback` of every message, when set.
    status_callback: Option<String>,
    /// Per-request timeout (also the client default), for error details.
    timeout: Duration,
}

/// Twilio's error body: `{"code","message","more_info","status"}`.
#[derive(Debug, Default, Deserialize)]
struct TwilioErrorBody {
    code: Option<i64>,
    message: Option<String>,
}

/// The part of Twilio's Message resource herald reads.
#[derive(Debug, Deserialize)]
struct MessageResource {
    sid: Option<String>,
}

impl TwilioClient {
    pub fn new(params: TwilioParams) -> Result<TwilioClient, SetupError> {
        let mut messages_url = parse_base_url(&params.base_url)?;
        messages_url
            .path_segments_mut()
            .map_err(|()| SetupError::BaseUrl {
                url: params.base_url.clone(),
                reason: "not a base url".to_owned(),
            })?
            .pop_if_empty()
            .extend([
                "2010-04-01",
                "Accounts",
                &params.account_sid,
                "Messages.json",
            ]);
        Ok(TwilioClient {
            inner: Arc::new(Inner {
                http: http_client(params.timeout)?,
                messages_url,
                account_sid: params.account_sid,
                auth_token: params.auth_token,
                from: params.from,
                status_callback: params.status_callback,
                timeout: params.timeout,
            }),
        })
    }

    /// The Messages endpoint this client posts to.
    pub fn messages_url(&self) -> &str {
        self.inner.messages_url.as_str()
    }

    async fn send_one(inner: Arc<Inner>, msg: Outbound) -> Result<Receipt, SendError> {
        let mut form: Vec<(&str, &str)> =
            vec![("To", &msg.to), ("From", &inner.from), ("Body", &msg.body)];
        if let Some(callback) = &inner.status_callback {
            form.push(("StatusCallback", callback));
        }
        let response = inner
            .http
            .post(inner.messages_url.clone())
            .basic_auth(&inner.account_sid, Some(&inner.auth_token))
            .timeout(inner.timeout)
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error("twilio", &e, inner.timeout))?;

        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await;

        if status.is_success() {
            // Twilio accepted the message: never turn this into an error that
            // a retry would answer with a second SMS.
            let sid = body
                .ok()
                .and_then(|b| serde_json::from_slice::<MessageResource>(&b).ok())
                .and_then(|m| m.sid);
            return Ok(Receipt {
                provider_id: sid.unwrap_or_else(|| {
                    tracing::warn!(
                        status = status.as_u16(),
                        "twilio accepted a message without a readable sid"
                    );
                    String::new()
                }),
            });
        }

        let body = body.map_err(|e| {
            let mut err = transport_error("twilio", &e, inner.timeout);
            err.status = Some(status.as_u16());
            err
        })?;
        let parsed: TwilioErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        let kind = classify(status.as_u16(), parsed.code);
        let message = parsed
            .message
            .map(|m| safe_text(&m, &msg.to, &[&inner.auth_token]))
            .unwrap_or_else(|| "no error body".to_owned());
        let detail = match parsed.code {
            Some(code) => format!("twilio http {} code {code}: {message}", status.as_u16()),
            None => format!("twilio http {}: {message}", status.as_u16()),
        };
        Err(SendError {
            kind,
            status: Some(status.as_u16()),
            code: parsed.code,
            detail,
            retry_after,
        })
    }
}

/// Maps Twilio's HTTP status and error code to herald's failure kinds.
/// Codes first (they are precise), then the status class.
pub(crate) fn classify(status: u16, code: Option<i64>) -> FailureKind {
    match code {
        // 21211 invalid 'To'; 21401 invalid phone number; 21265 'To' is a
        // short code; 21612 'To' not reachable by SMS; 21614 not a mobile.
        Some(21211 | 21265 | 21401 | 21612 | 21614) => return FailureKind::InvalidRecipient,
        // The recipient sent STOP: blocked until they send START.
        Some(21610) => return FailureKind::Unsubscribed,
        // "Too many requests": never processed, always safe to retry.
        Some(20429) => return FailureKind::Throttled,
        // 20003 authenticate; 20005 account not active.
        Some(20003 | 20005) => return FailureKind::Unauthorized,
        _ => {}
    }
    FailureKind::from_http_status(status)
}

impl ProviderClient for TwilioClient {
    fn send(&self, msg: Outbound) -> BoxFuture<'static, Result<Receipt, SendError>> {
        TwilioClient::send_one(self.inner.clone(), msg).boxed()
    }
}

impl fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioClient")
            .field("messages_url", &self.inner.messages_url.as_str())
            .field("from", &self.inner.from)
            .field("status_callback", &self.inner.status_callback)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_twilio_codes() {
        assert_eq!(classify(400, Some(21211)), FailureKind::InvalidRecipient);
        assert_eq!(classify(400, Some(21614)), FailureKind::InvalidRecipient);
        assert_eq!(classify(400, Some(21610)), FailureKind::Unsubscribed);
        assert_eq!(classify(400, Some(21608)), FailureKind::Rejected);
        assert_eq!(classify(400, Some(21635)), FailureKind::Rejected);
        assert_eq!(classify(401, Some(20003)), FailureKind::Unauthorized);
        assert_eq!(classify(403, None), FailureKind::Unauthorized);
        assert_eq!(classify(429, Some(20429)), FailureKind::Throttled);
        assert_eq!(classify(400, Some(20429)), FailureKind::Throttled);
        assert_eq!(classify(500, Some(20500)), FailureKind::ProviderError);
        assert_eq!(classify(503, None), FailureKind::ProviderError);
        assert_eq!(classify(404, Some(20404)), FailureKind::Rejected);
    }

    #[test]
    fn builds_the_messages_url() {
        let client = TwilioClient::new(TwilioParams {
            base_url: "http://127.0.0.1:4010/".into(),
            account_sid: "AC0123".into(),
            auth_token: "t".into(),
            from: "+15550000000".into(),
            status_callback: None,
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(
            client.messages_url(),
            "http://127.0.0.1:4010/2010-04-01/Accounts/AC0123/Messages.json"
        );
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("\"t\""), "{dbg}");
    }
}
