//! `FakeResend`: Resend's `POST /emails`.
//!
//! Checks the bearer API key (401 `missing_api_key`, 403 `invalid_api_key`),
//! requires a JSON body with `from`, `to` (a string or an array) and
//! `subject` (422 `validation_error`), and answers 200 `{"id": "<uuid>"}` or
//! Resend's error body `{"statusCode","name","message"}`. Honours
//! `Idempotency-Key` like Resend: the same key and payload again gets the
//! first answer's id and sends nothing new; the same key with another payload
//! gets 409 `invalid_idempotent_request`; the same key while the first
//! request is still being answered gets 409 `concurrent_idempotent_requests`.
//! Only accepted requests are remembered, so a retry after an error can
//! succeed. 429 carries `retry-after` and the `ratelimit-*` headers.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{fake_common_methods, lock, FakeResponse, SentMessage, ServerThread, Shared};
use crate::providers::sandbox::uuid_v4;

/// Resend's default rate limit, quoted in the 429 headers.
const RATE_LIMIT_PER_SEC: u32 = 2;

/// A fake Resend API on `127.0.0.1:0`.
pub struct FakeResend {
    /// Ledgers and knobs, shared with the server's handler.
    shared: Arc<Shared>,
    /// The key and the idempotency store.
    state: Arc<ResendState>,
    /// The running server; stopped on drop.
    server: ServerThread,
}

struct ResendState {
    /// The API key the fake accepts as `Authorization: Bearer …`.
    api_key: String,
    /// Idempotency keys seen: the payload and, once accepted, the id.
    idempotency: Mutex<HashMap<String, Idempotent>>,
}

struct Idempotent {
    /// The JSON body first sent with the key.
    payload: Value,
    /// The id answered; `None` while the first request is in progress.
    id: Option<String>,
}

impl FakeResend {
    /// Starts a fake that accepts `Authorization: Bearer {api_key}`.
    pub fn start(api_key: &str) -> io::Result<FakeResend> {
        let shared = Arc::new(Shared::new());
        let state = Arc::new(ResendState {
            api_key: api_key.to_owned(),
            idempotency: Mutex::new(HashMap::new()),
        });
        let (s, t) = (shared.clone(), state.clone());
        let server = ServerThread::start("fake-resend", move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::from(s.clone()))
                .app_data(web::Data::from(t.clone()))
                .default_service(web::to(handle));
        })?;
        Ok(FakeResend {
            shared,
            state,
            server,
        })
    }

    /// The API key this fake accepts.
    pub fn api_key(&self) -> &str {
        &self.state.api_key
    }

    fake_common_methods!();
}

impl std::fmt::Debug for FakeResend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeResend")
            .field("base_url", &self.server.base_url)
            .finish_non_exhaustive()
    }
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
    state: web::Data<ResendState>,
) -> HttpResponse {
    let received_at = SystemTime::now();
    shared.record(&req, &body, received_at);

    if req.path().trim_end_matches('/') != "/emails" {
        return error_response(404, "not_found", "The requested endpoint does not exist.");
    }
    if req.method() != actix_web::http::Method::POST {
        return error_response(
            405,
            "method_not_allowed",
            "Method is not allowed for the requested path.",
        );
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let Some(auth) = auth.filter(|a| !a.trim().is_empty()) else {
        return error_response(
            401,
            "missing_api_key",
            "Missing API key in the authorization header. Include the following header Authorization: Bearer YOUR_API_KEY in the request.",
        );
    };
    if auth.strip_prefix("Bearer ").map(str::trim) != Some(state.api_key.as_str()) {
        return error_response(403, "invalid_api_key", "API key is invalid");
    }

    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error_response(
                400,
                "validation_error",
                "The request body is not valid JSON.",
            )
        }
    };
    let email = match Email::parse(&payload) {
        Ok(email) => email,
        Err(message) => return error_response(422, "validation_error", &message),
    };

    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(key) = &key {
        if key.is_empty() || key.len() > 256 {
            return error_response(
                400,
                "invalid_idempotency_key",
                "The key must be between 1-256 chars.",
            );
        }
        let mut store = lock(&state.idempotency);
        match store.get(key) {
            Some(seen) if seen.payload != payload => {
                return error_response(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload. Change your idempotency key or payload.",
                )
            }
            Some(Idempotent { id: Some(id), .. }) => return HttpResponse::Ok().json(json!({ "id": id })),
            Some(Idempotent { id: None, .. }) => {
                return error_response(
                    409,
                    "concurrent_idempotent_requests",
                    "Same idempotency key used while original request is still in progress. Try the request again later.",
                )
            }
            None => {
                store.insert(
                    key.clone(),
                    Idempotent {
                        payload: payload.clone(),
                        id: None,
                    },
                );
            }
        }
    }
    // Forgets the key unless the send is accepted, also when the client goes
    // away mid-answer (the handler is dropped): a retry may then succeed.
    let _pending = key.clone().map(|key| PendingKey {
        state: state.clone(),
        key,
    });

    let (mut response, latency) = lock(&shared.behaviour).choose(&email.first_bare, |_| None);
    if !latency.is_zero() {
        actix_rt::time::sleep(latency).await;
    }
    while let FakeResponse::Delayed { delay, then } = response {
        actix_rt::time::sleep(delay).await;
        response = *then;
    }

    let answer = match response {
        FakeResponse::Ok => Ok(()),
        FakeResponse::Status(s) if (200..300).contains(&s) => Ok(()),
        FakeResponse::ResendError { status, name } => {
            Err(error_response(status, &name, &message_for(&name)))
        }
        FakeResponse::Status(status) | FakeResponse::TwilioError { status, .. } => {
            if status == 429 {
                Err(too_many_requests(1))
            } else {
                let name = generic_name(status);
                Err(error_response(status, name, &message_for(name)))
            }
        }
        FakeResponse::TooManyRequests { retry_after_secs } => {
            Err(too_many_requests(retry_after_secs))
        }
        FakeResponse::Delayed { .. } => unreachable!("delays are unwrapped above"),
    };

    match answer {
        Ok(()) => {
            let id = uuid_v4();
            if let Some(key) = &key {
                if let Some(entry) = lock(&state.idempotency).get_mut(key) {
                    entry.id = Some(id.clone());
                }
            }
            shared.push_sent(SentMessage {
                to: email.to.join(", "),
                subject: Some(email.subject),
                body: email.body,
                id: id.clone(),
                received_at,
            });
            HttpResponse::Ok().json(json!({ "id": id }))
        }
        Err(response) => response,
    }
}

/// An idempotency key whose first request is being answered.
struct PendingKey {
    state: web::Data<ResendState>,
    key: String,
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        let mut store = lock(&self.state.idempotency);
        if store.get(&self.key).is_some_and(|e| e.id.is_none()) {
            store.remove(&self.key);
        }
    }
}

/// The fields of a send the fake checks and keeps.
struct Email {
    /// `to` as given (`Jane <jane@example.com>` stays so).
    to: Vec<String>,
    /// The first recipient's bare address: what scripts are keyed by.
    first_bare: String,
    subject: String,
    /// `text`, else `html`, else empty.
    body: String,
}

impl Email {
    /// Validates like Resend: the message names the offending field.
    fn parse(payload: &Value) -> Result<Email, String> {
        let from = payload.get("from").ok_or("Missing `from` field.")?;
        let from = from.as_str().ok_or("Invalid `from` field.")?;
        if bare_address(from).is_none() {
            return Err(
                "Invalid `from` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format."
                    .to_owned(),
            );
        }
        let to = match payload.get("to") {
            None => return Err("Missing `to` field.".to_owned()),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("Invalid `to` field.")?,
            Some(_) => return Err("Invalid `to` field.".to_owned()),
        };
        if to.is_empty() || to.len() > 50 {
            return Err("Invalid `to` field. Between 1 and 50 recipients are allowed.".to_owned());
        }
        let mut bare = Vec::with_capacity(to.len());
        for recipient in &to {
            match bare_address(recipient) {
                Some(addr) => bare.push(addr),
                None => {
                    return Err(
                        "Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format."
                            .to_owned(),
                    )
                }
            }
        }
        let subject = match payload.get("subject") {
            None => return Err("Missing `subject` field.".to_owned()),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("Invalid `subject` field.".to_owned()),
        };
        let body = payload
            .get("text")
            .or_else(|| payload.get("html"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Email {
            first_bare: bare.swap_remove(0),
            to,
            subject,
            body,
        })
    }
}

/// `jane@example.com` out of `jane@example.com` or `Jane <jane@example.com>`;
/// `None` when it does not look like an address.
fn bare_address(s: &str) -> Option<String> {
    let s = s.trim();
    let addr = match (s.rfind('<'), s.ends_with('>')) {
        (Some(open), true) => &s[open + 1..s.len() - 1],
        _ => s,
    };
    let (local, domain) = addr.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !addr
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>');
    ok.then(|| addr.to_owned())
}

fn error_response(status: u16, name: &str, message: &str) -> HttpResponse {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status_code).json(json!({
        "statusCode": status_code.as_u16(),
        "name": name,
        "message": message,
    }))
}

fn too_many_requests(retry_after_secs: u64) -> HttpResponse {
    HttpResponse::TooManyRequests()
        .insert_header(("retry-after", retry_after_secs.to_string()))
        .insert_header(("ratelimit-limit", RATE_LIMIT_PER_SEC.to_string()))
        .insert_header(("ratelimit-remaining", "0"))
        .insert_header(("ratelimit-reset", retry_after_secs.to_string()))
        .insert_header(("ratelimit-policy", format!("{RATE_LIMIT_PER_SEC};w=1")))
        .json(json!({
            "statusCode": 429,
            "name": "rate_limit_exceeded",
            "message": message_for("rate_limit_exceeded"),
        }))
}

/// The error `name` Resend gives a bare HTTP status.
fn generic_name(status: u16) -> &'static str {
    match status {
        400 | 422 => "validation_error",
        401 => "missing_api_key",
        403 => "invalid_api_key",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "invalid_idempotent_request",
        429 => "rate_limit_exceeded",
        503 => "service_unavailable",
        500..=599 => "internal_server_error",
        _ => "application_error",
    }
}

fn message_for(name: &str) -> String {
    match name {
        "validation_error" => "We found an error with one or more fields in the request.",
        "missing_api_key" => "Missing API key in the authorization header.",
        "invalid_api_key" => "API key is invalid",
        "not_found" => "The requested endpoint does not exist.",
        "method_not_allowed" => "Method is not allowed for the requested path.",
        "invalid_idempotent_request" => "Same idempotency key used with a different request payload.",
        "concurrent_idempotent_requests" => "Same idempotency key used while original request is still in progress.",
        "rate_limit_exceeded" => "Too many requests. You can only make 2 requests per second. See rate limit response headers for more information. Or contact support to increase rate limit.",
        "daily_quota_exceeded" => "You have reached your daily email sending quota.",
        "service_unavailable" => "We are experiencing an unusual amount of traffic. Please try again later.",
        "internal_server_error" | "application_error" => "An unexpected error occurred.",
        _ => "An error occurred.",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses() {
        assert_eq!(
            bare_address("jane@example.com").as_deref(),
            Some("jane@example.com")
        );
        assert_eq!(
            bare_address("Jane <jane@example.com>").as_deref(),
            Some("jane@example.com")
        );
        assert_eq!(
            bare_address("\"Doe, J\" <j@x.io>").as_deref(),
            Some("j@x.io")
        );
        assert_eq!(bare_address("not-an-email"), None);
        assert_eq!(bare_address("a@b"), None);
    }
}
