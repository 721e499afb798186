//! The providers' callbacks: `POST /webhooks/twilio/inbound` (replies to our
//! SMS: STOP and START keywords), `POST /webhooks/twilio/status` (delivery
//! receipts) and `POST /webhooks/resend` (Resend's events: receipts, bounces
//! and complaints). Each request is verified before anything
//! else happens ([`signature`]); a request that fails is answered 403 (bad
//! signature, stale timestamp, webhooks not configured) or 400 (malformed),
//! counted in `herald_webhooks_total{provider,result}`, and changes nothing.
//!
//! What a verified request changes goes to the suppression list in one
//! store transaction with its audit entry, at most once per provider
//! delivery id (Twilio's `MessageSid`, Svix's `svix-id`): a replay is
//! answered 200 and changes nothing. A receipt moves its message's delivery
//! status forward only ([`twilio_rank`], [`resend_rank`]), so repeated and
//! out-of-order callbacks are harmless; an SMS that comes back undelivered
//! or failed falls back to email once (`Store::receipt`). Phone numbers and
//! email addresses are logged masked.

pub mod signature;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use herald_actors::mask;
use herald_actors::metrics::Metrics;
use herald_actors::model::{suppression_address, Channel};
use serde::Deserialize;
use tracing::{info, warn};

use crate::store::{now_ms, Receipt, ReceiptOutcome, Store, SuppressionAction, SuppressionChange};
use signature::{SvixError, SvixSecret};

/// What the webhook routes need.
#[derive(Clone)]
pub struct WebhookState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// `HERALD_PUBLIC_URL`, without a trailing `/`: Twilio signs the URL it
    /// called, which is this plus the path.
    pub public_url: Option<String>,
    /// `TWILIO_AUTH_TOKEN`, Twilio's signing key.
    pub twilio_token: Option<String>,
    /// `RESEND_WEBHOOK_SECRET`.
    pub svix: Option<SvixSecret>,
}

/// Mounts the webhook routes.
pub fn configure(cfg: &mut web::ServiceConfig, state: WebhookState) {
    cfg.app_data(web::Data::new(state))
        .route("/webhooks/twilio/inbound", web::post().to(twilio_inbound))
        .route("/webhooks/twilio/status", web::post().to(twilio_status))
        .route("/webhooks/resend", web::post().to(resend));
}

/// An inbound SMS that changes consent (Twilio's Advanced Opt-Out words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
}

/// The keyword a whole message body is, in any case, with surrounding space
/// (and a trailing `.` or `!`); `None` for any other text.
pub fn keyword(body: &str) -> Option<Keyword> {
    let word = body.trim().trim_end_matches(['.', '!']).trim_end();
    const OUT: [&str; 8] = [
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "END",
        "QUIT",
        "REVOKE",
        "OPTOUT",
        "CANCEL",
    ];
    const IN: [&str; 3] = ["START", "YES", "UNSTOP"];
    if OUT.iter().any(|k| k.eq_ignore_ascii_case(word)) {
        Some(Keyword::OptOut)
    } else if IN.iter().any(|k| k.eq_ignore_ascii_case(word)) {
        Some(Keyword::OptIn)
    } else {
        None
    }
}

/// How one webhook request ended, for `herald_webhooks_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Verified and applied.
    Applied,
    /// Verified; nothing to do (another keyword, another event type).
    Ignored,
    /// Verified; this delivery was processed before.
    Replayed,
    /// The signature did not match (or was missing).
    BadSignature,
    /// The Svix timestamp is more than five minutes off.
    Stale,
    /// Not the shape the provider sends.
    Malformed,
    /// herald has no key to verify with (public URL, token, secret unset).
    Unconfigured,
    /// The store did not answer; the provider will try again.
    StoreError,
    /// A receipt for a message herald does not know (or not yet).
    UnknownId,
    /// A receipt older than, or the same as, what the message has.
    OutOfOrder,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::Ignored => "ignored",
            Verdict::Replayed => "replayed",
            Verdict::BadSignature => "bad_signature",
            Verdict::Stale => "stale",
            Verdict::Malformed => "malformed",
            Verdict::Unconfigured => "unconfigured",
            Verdict::StoreError => "store_error",
            Verdict::UnknownId => "unknown_id",
            Verdict::OutOfOrder => "out_of_order",
        }
    }

    /// Verified and taken (whether or not it changed anything): 200.
    fn accepted(self) -> bool {
        matches!(
            self,
            Verdict::Applied
                | Verdict::Ignored
                | Verdict::Replayed
                | Verdict::UnknownId
                | Verdict::OutOfOrder
        )
    }

    /// The answer for a refused request (the accepted ones answer in the
    /// provider's own format).
    fn refusal(self) -> HttpResponse {
        let body = serde_json::json!({ "error": self.label() });
        match self {
            Verdict::Malformed => HttpResponse::BadRequest().json(body),
            Verdict::StoreError => HttpResponse::ServiceUnavailable().json(body),
            _ => HttpResponse::Forbidden().json(body),
        }
    }
}

impl WebhookState {
    fn count(&self, provider: &str, verdict: Verdict) {
        self.metrics
            .webhooks
            .with_label_values(&[provider, verdict.label()])
            .inc();
    }

    /// Applies a delivery receipt.
    async fn receipt(&self, receipt: Receipt) -> Verdict {
        match self.store.receipt(&receipt).await {
            Ok(ReceiptOutcome::Applied { fallback }) => {
                if let Some(class) = fallback {
                    info!(status = %receipt.status, %class,
                        "an accepted SMS came back undelivered; falling back to email");
                    self.metrics
                        .fallbacks
                        .with_label_values(&["sms", "email", &class])
                        .inc();
                }
                Verdict::Applied
            }
            Ok(ReceiptOutcome::Stale) => Verdict::OutOfOrder,
            Ok(ReceiptOutcome::Unknown) => Verdict::UnknownId,
            Err(e) => {
                warn!(error = %e, "webhook: the store did not take the receipt");
                Verdict::StoreError
            }
        }
    }

    /// Applies `changes` once per delivery `id`.
    async fn apply(&self, id: &str, changes: &[SuppressionChange]) -> Verdict {
        match self.store.change_suppressions_once(id, changes).await {
            Ok(Some(_)) => Verdict::Applied,
            Ok(None) => Verdict::Replayed,
            Err(e) => {
                warn!(error = %e, "webhook: the store did not take the change");
                Verdict::StoreError
            }
        }
    }
}

/// Twilio's empty TwiML answer: no reply SMS from us (Twilio's own opt-out
/// handling answers STOP and START).
fn twiml() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .body("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>")
}

/// Where Twilio's status words stand: a receipt applies only over a lower
/// rank. The finals share a rank, so the first final report wins.
pub fn twilio_rank(status: &str) -> Option<i64> {
    Some(match status {
        "accepted" | "scheduled" | "queued" => 1,
        "sending" => 2,
        "sent" => 3,
        "delivered" | "undelivered" | "failed" | "canceled" => 4,
        "read" => 5,
        _ => return None,
    })
}

/// Where Resend's event types stand, as [`twilio_rank`].
pub fn resend_rank(kind: &str) -> Option<i64> {
    Some(match kind {
        "email.sent" => 1,
        "email.delivery_delayed" => 2,
        "email.delivered" | "email.bounced" | "email.failed" | "email.suppressed" => 4,
        "email.complained" => 5,
        _ => return None,
    })
}

/// Which of Twilio's callbacks a request is.
#[derive(Clone, Copy)]
enum TwilioRoute {
    Inbound,
    Status,
}

async fn twilio_inbound(
    state: web::Data<WebhookState>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    twilio_request(&state, &req, &body, TwilioRoute::Inbound).await
}

async fn twilio_status(
    state: web::Data<WebhookState>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    twilio_request(&state, &req, &body, TwilioRoute::Status).await
}

/// Verifies, handles, counts and answers one Twilio callback.
async fn twilio_request(
    state: &WebhookState,
    req: &HttpRequest,
    body: &[u8],
    route: TwilioRoute,
) -> HttpResponse {
    let verdict = match verified_twilio_params(state, req, body) {
        Ok(params) => match route {
            TwilioRoute::Inbound => twilio_inbound_verdict(state, &params).await,
            TwilioRoute::Status => twilio_status_verdict(state, &params).await,
        },
        Err(refused) => refused,
    };
    state.count("twilio", verdict);
    if verdict.accepted() {
        twiml()
    } else {
        verdict.refusal()
    }
}

/// A Twilio request's form parameters, once its signature is checked.
fn verified_twilio_params(
    state: &WebhookState,
    req: &HttpRequest,
    body: &[u8],
) -> Result<Vec<(String, String)>, Verdict> {
    let (Some(base), Some(token)) = (&state.public_url, &state.twilio_token) else {
        return Err(Verdict::Unconfigured);
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or(req.path(), |p| p.as_str());
    let url = format!("{base}{path}");
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let given = req
        .headers()
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !signature::twilio_verify(token, &url, &params, given) {
        warn!("twilio webhook: bad signature; ignored");
        return Err(Verdict::BadSignature);
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

async fn twilio_status_verdict(state: &WebhookState, params: &[(String, String)]) -> Verdict {
    let (Some(sid), Some(status)) = (param(params, "MessageSid"), param(params, "MessageStatus"))
    else {
        return Verdict::Malformed;
    };
    let Some(rank) = twilio_rank(status) else {
        return Verdict::Ignored;
    };
    state
        .receipt(Receipt {
            provider_id: sid.to_owned(),
            status: status.to_owned(),
            rank,
            error: param(params, "ErrorCode").map(str::to_owned),
            failed: matches!(status, "undelivered" | "failed"),
            now_ms: now_ms(),
        })
        .await
}

async fn twilio_inbound_verdict(state: &WebhookState, params: &[(String, String)]) -> Verdict {
    let (Some(from), Some(sid)) = (param(params, "From"), param(params, "MessageSid")) else {
        return Verdict::Malformed;
    };
    // A picture message has an empty body: no keyword.
    let text = params
        .iter()
        .find(|(k, _)| k == "Body")
        .map_or("", |(_, v)| v.as_str());
    let Some(word) = keyword(text) else {
        return Verdict::Ignored;
    };
    let (action, source) = match word {
        Keyword::OptOut => (SuppressionAction::Suppress, "inbound_stop"),
        Keyword::OptIn => (SuppressionAction::Allow, "inbound_start"),
    };
    let change = SuppressionChange {
        address: suppression_address(Channel::Sms, from),
        channel: Channel::Sms.as_str(),
        action,
        actor: "twilio".to_owned(),
        source: source.to_owned(),
        reason: Some(text.trim().to_uppercase()),
        now_ms: now_ms(),
    };
    let verdict = state.apply(&format!("twilio:{sid}"), &[change]).await;
    if verdict == Verdict::Applied {
        info!(from = %mask::phone(from), ?action, "sms consent changed by an inbound reply");
    }
    verdict
}

/// The parts of a Resend event herald reads.
#[derive(Deserialize)]
struct ResendEvent {
    #[serde(rename = "type")]
    kind: String,
    data: ResendData,
}

#[derive(Deserialize)]
struct ResendData {
    #[serde(default)]
    to: Recipients,
    /// The id Resend answered the send with.
    email_id: Option<String>,
}

/// `to` is a list in Resend's events; a single string is taken too.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Recipients {
    Many(Vec<String>),
    One(String),
    #[default]
    None,
}

impl Recipients {
    fn into_vec(self) -> Vec<String> {
        match self {
            Recipients::Many(v) => v,
            Recipients::One(s) => vec![s],
            Recipients::None => Vec::new(),
        }
    }
}

async fn resend(state: web::Data<WebhookState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let verdict = resend_verdict(&state, &req, &body).await;
    state.count("resend", verdict);
    if verdict.accepted() {
        HttpResponse::Ok().json(serde_json::json!({ "result": verdict.label() }))
    } else {
        verdict.refusal()
    }
}

async fn resend_verdict(state: &WebhookState, req: &HttpRequest, body: &[u8]) -> Verdict {
    let Some(secret) = &state.svix else {
        return Verdict::Unconfigured;
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = header("svix-id");
    let now = chrono::Utc::now().timestamp();
    let checked = secret.verify(
        id,
        header("svix-timestamp"),
        header("svix-signature"),
        body,
        now,
    );
    match checked {
        Ok(()) => {}
        Err(SvixError::Malformed) => return Verdict::Malformed,
        Err(SvixError::Stale) => return Verdict::Stale,
        Err(SvixError::Mismatch) => {
            warn!("resend webhook: bad signature; ignored");
            return Verdict::BadSignature;
        }
    }
    let Ok(event) = serde_json::from_slice::<ResendEvent>(body) else {
        return Verdict::Malformed;
    };
    let receipt = match (&event.data.email_id, resend_rank(&event.kind)) {
        (Some(id), Some(rank)) => Some(
            state
                .receipt(Receipt {
                    provider_id: id.clone(),
                    status: event.kind.trim_start_matches("email.").to_owned(),
                    rank,
                    error: None,
                    failed: false,
                    now_ms: now_ms(),
                })
                .await,
        ),
        _ => None,
    };
    // A receipt the store did not take: answer so before a bounce's
    // suppression marks this delivery processed, so Svix's retry brings
    // both (receipts apply idempotently).
    if receipt == Some(Verdict::StoreError)
        || !matches!(event.kind.as_str(), "email.bounced" | "email.complained")
    {
        return receipt.unwrap_or(Verdict::Ignored);
    }
    let now = now_ms();
    let changes: Vec<SuppressionChange> = event
        .data
        .to
        .into_vec()
        .iter()
        .filter(|a| a.contains('@'))
        .map(|address| SuppressionChange {
            address: suppression_address(Channel::Email, address),
            channel: Channel::Email.as_str(),
            action: SuppressionAction::Suppress,
            actor: "resend".to_owned(),
            source: event.kind.clone(),
            reason: None,
            now_ms: now,
        })
        .collect();
    if changes.is_empty() {
        return Verdict::Malformed;
    }
    let verdict = state.apply(&format!("svix:{id}"), &changes).await;
    if verdict == Verdict::Applied {
        for c in &changes {
            info!(to = %mask::email(&c.address), source = %c.source, "email suppressed by a provider event");
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_in_any_case_with_space_around() {
        for body in [
            "STOP",
            "stop",
            " Stop ",
            "STOPALL",
            "unsubscribe",
            "End",
            "QUIT",
            "revoke",
            "OPTOUT",
            "cancel",
            "stop.",
            "\tSTOP!\n",
        ] {
            assert_eq!(keyword(body), Some(Keyword::OptOut), "{body:?}");
        }
        for body in ["START", "yes", " Unstop "] {
            assert_eq!(keyword(body), Some(Keyword::OptIn), "{body:?}");
        }
        for body in ["", "please stop", "STOP IT", "stopp", "hello", "NO"] {
            assert_eq!(keyword(body), None, "{body:?}");
        }
    }
}
