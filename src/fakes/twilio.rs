//! `FakeTwilio`: Twilio's `POST /2010-04-01/Accounts/{sid}/Messages.json`.
//!
//! Checks HTTP basic auth against its SID and token (401, code 20003),
//! requires a form body with `To`, `From` (or `MessagingServiceSid`) and
//! `Body` (or `MediaUrl`), as Twilio does (400, 21604/21603/21602), and
//! answers 201 with a Message resource, or one of Twilio's error bodies
//! `{"code","message","more_info","status"}`. Test-credential magic
//! numbers: `+15005550001` → 21211, `+15005550002` → 21612,
//! `+15005550003` → 21408, `+15005550004` → 21610, `+15005550009` → 21614.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;

use super::{fake_common_methods, parse_form, FakeResponse, SentMessage, ServerThread, Shared};
use crate::providers::sandbox::twilio_message_sid;

/// A fake Twilio Messages API on `127.0.0.1:0`.
pub struct FakeTwilio {
    /// Ledgers and knobs, shared with the server's handler.
    shared: Arc<Shared>,
    /// The credentials the fake accepts.
    state: Arc<TwilioState>,
    /// The running server; stopped on drop.
    server: ServerThread,
}

struct TwilioState {
    /// The account SID the fake accepts (path and basic-auth user).
    account_sid: String,
    /// The basic-auth password it accepts.
    auth_token: String,
    /// `Basic base64(sid:token)`, precomputed.
    expected_auth: String,
}

impl FakeTwilio {
    /// Starts a fake that accepts `account_sid:auth_token`.
    pub fn start(account_sid: &str, auth_token: &str) -> io::Result<FakeTwilio> {
        let shared = Arc::new(Shared::new());
        let state = Arc::new(TwilioState {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            expected_auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{account_sid}:{auth_token}"))
            ),
        });
        let (s, t) = (shared.clone(), state.clone());
        let server = ServerThread::start("fake-twilio", move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::from(s.clone()))
                .app_data(web::Data::from(t.clone()))
                .default_service(web::to(handle));
        })?;
        Ok(FakeTwilio {
            shared,
            state,
            server,
        })
    }

    /// The account SID this fake accepts.
    pub fn account_sid(&self) -> &str {
        &self.state.account_sid
    }

    /// The auth token this fake accepts.
    pub fn auth_token(&self) -> &str {
        &self.state.auth_token
    }

    fake_common_methods!();
}

impl std::fmt::Debug for FakeTwilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTwilio")
            .field("base_url", &self.server.base_url)
            .field("account_sid", &self.state.account_sid)
            .finish_non_exhaustive()
    }
}

/// Twilio's test-credential magic `To` numbers.
fn magic(to: &str) -> Option<FakeResponse> {
    let code = match to {
        "+15005550001" => 21211,
        "+15005550002" => 21612,
        "+15005550003" => 21408,
        "+15005550004" => 21610,
        "+15005550009" => 21614,
        _ => return None,
    };
    Some(FakeResponse::TwilioError { status: 400, code })
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
    state: web::Data<TwilioState>,
) -> HttpResponse {
    let received_at = SystemTime::now();
    shared.record(&req, &body, received_at);

    let auth_ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == state.expected_auth);
    if !auth_ok {
        return error_response(401, 20003, "Authenticate", None);
    }

    let Some(path_sid) = req
        .path()
        .strip_prefix("/2010-04-01/Accounts/")
        .and_then(|rest| rest.strip_suffix("/Messages.json"))
        .filter(|sid| !sid.contains('/'))
    else {
        return not_found(req.path());
    };
    if path_sid != state.account_sid {
        return not_found(req.path());
    }
    if req.method() != actix_web::http::Method::POST {
        return error_response(405, 20004, "Method not allowed", None);
    }
    let is_form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return error_response(400, 21604, "A 'To' phone number is required.", None);
    }

    let form = parse_form(&body);
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(to) = field("To").filter(|v| !v.is_empty()) else {
        return error_response(400, 21604, "A 'To' phone number is required.", None);
    };
    let from = field("From").unwrap_or_default();
    if from.is_empty() && field("MessagingServiceSid").is_none() {
        return error_response(400, 21603, "A 'From' phone number is required.", None);
    }
    let text = field("Body").unwrap_or_default();
    if text.is_empty() && field("MediaUrl").is_none() {
        return error_response(400, 21602, "Message body is required.", None);
    }

    let (mut response, latency) = super::lock(&shared.behaviour).choose(to, magic);
    if !latency.is_zero() {
        actix_rt::time::sleep(latency).await;
    }
    while let FakeResponse::Delayed { delay, then } = response {
        actix_rt::time::sleep(delay).await;
        response = *then;
    }

    match response {
        FakeResponse::Ok => accept(&shared, &state, to, from, text, received_at),
        FakeResponse::Status(s) if (200..300).contains(&s) => {
            accept(&shared, &state, to, from, text, received_at)
        }
        FakeResponse::TwilioError { status, code } => {
            error_response(status, code, &message_for(code, to), None)
        }
        FakeResponse::Status(status) | FakeResponse::ResendError { status, .. } => {
            let code = generic_code(status);
            let retry = (status == 429 || status >= 500).then_some(1);
            error_response(status, code, &message_for(code, to), retry)
        }
        FakeResponse::TooManyRequests { retry_after_secs } => {
            error_response(429, 20429, "Too Many Requests", Some(retry_after_secs))
        }
        FakeResponse::Delayed { .. } => unreachable!("delays are unwrapped above"),
    }
}

/// 201 and the Message resource, as Twilio answers a create.
fn accept(
    shared: &Shared,
    state: &TwilioState,
    to: &str,
    from: &str,
    text: &str,
    received_at: SystemTime,
) -> HttpResponse {
    let sid = twilio_message_sid();
    let now = chrono::Utc::now().to_rfc2822();
    let account = &state.account_sid;
    let segments = herald_actors::segments::segments(text);
    let body = json!({
        "account_sid": account,
        "api_version": "2010-04-01",
        "body": text,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": segments.to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"),
        },
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
    });
    shared.push_sent(SentMessage {
        to: to.to_owned(),
        subject: None,
        body: text.to_owned(),
        id: sid,
        received_at,
    });
    HttpResponse::Created().json(body)
}

/// A Twilio error: `{"code","message","more_info","status"}`.
fn error_response(
    status: u16,
    code: i64,
    message: &str,
    retry_after_secs: Option<u64>,
) -> HttpResponse {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status_code);
    if let Some(secs) = retry_after_secs {
        builder.insert_header(("Retry-After", secs.to_string()));
    }
    if status == 401 {
        builder.insert_header(("WWW-Authenticate", "Basic realm=\"Twilio API\""));
    }
    builder.json(json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status_code.as_u16(),
    }))
}

fn not_found(path: &str) -> HttpResponse {
    error_response(
        404,
        20404,
        &format!("The requested resource {path} was not found"),
        None,
    )
}

/// The code Twilio gives a bare HTTP status.
fn generic_code(status: u16) -> i64 {
    match status {
        401 | 403 => 20003,
        404 => 20404,
        429 => 20429,
        500..=599 => 20500,
        _ => 21601,
    }
}

/// Twilio's message text for the codes the fake produces. Like Twilio, some
/// quote the number.
fn message_for(code: i64, to: &str) -> String {
    match code {
        21211 => format!("The 'To' number {to} is not a valid phone number."),
        21408 => format!("Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."),
        21608 => "The number is unverified. Trial accounts cannot send messages to unverified numbers.".to_owned(),
        21610 => "Attempt to send to unsubscribed recipient".to_owned(),
        21612 => format!("The 'To' phone number: {to}, is not currently reachable using the 'From' phone number via SMS."),
        21614 => format!("'To' number {to} is not a valid mobile number"),
        21635 => "The 'To' number cannot be reached: it is a landline.".to_owned(),
        20003 => "Authenticate".to_owned(),
        20404 => "The requested resource was not found".to_owned(),
        20429 => "Too Many Requests".to_owned(),
        20500 => "An internal server error has occurred".to_owned(),
        _ => format!("Error {code}"),
    }
}
