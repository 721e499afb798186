//! The admin API under `/api`, behind `Authorization: Bearer
//! $HERALD_ADMIN_TOKEN` (compared in constant time). Without a configured
//! token every route answers 401; a client that keeps presenting a wrong
//! token is refused (429) for a while. `/api/openapi.json` describes it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use futures_util::future::Either;
use herald_actors::metrics::Metrics;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use herald_actors::mask;
use herald_actors::model::{suppression_address, Channel};

use crate::amqp::link::BrokerLink;
use crate::amqp::publisher::Publisher;
use crate::controls::{ControlError, Controls};
use crate::dlq::{self, Which};
use crate::store::{Store, SuppressionAction, SuppressionChange};

/// The API's OpenAPI 3.1 document.
pub const OPENAPI: &str = include_str!("../docs/specs/admin-api.openapi.json");

/// Wrong tokens one client may present per [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered at most; the oldest windows are forgotten first.
const MAX_CLIENTS: usize = 10_000;

/// Counts refused requests per client address, so a token cannot be
/// guessed at line speed.
#[derive(Default)]
pub struct AuthGuard {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthGuard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `ip` must wait, if it is over its failures.
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.lock();
        let (since, n) = map.get(&ip)?;
        let ends = *since + FAILURE_WINDOW;
        (*n >= MAX_FAILURES && ends > now).then(|| ends - now)
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_CLIENTS {
            map.retain(|_, (since, _)| *since + FAILURE_WINDOW > now);
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if entry.0 + FAILURE_WINDOW <= now {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// What the API routes need.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// `None`: the API is refused.
    pub token: Option<String>,
    pub controls: Arc<Controls>,
    /// The broker connection, for the dead-letter routes.
    pub link: Arc<BrokerLink>,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub guard: Arc<AuthGuard>,
}

/// What a request's `Authorization` header says.
enum Credentials {
    Right,
    /// No bearer token at all: refused, not counted as a guess.
    Missing,
    /// A token that is not the configured one (or none is configured).
    Wrong,
}

fn credentials(req: &ServiceRequest, token: Option<&str>) -> Credentials {
    let Some(given) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Credentials::Missing;
    };
    match token {
        Some(token) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Credentials::Right,
        _ => Credentials::Wrong,
    }
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("www-authenticate", "Bearer"))
        .json(serde_json::json!({"error": "unauthorized"}))
}

fn error(status: actix_web::http::StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"error": message.to_string()}))
}

fn control_error(e: ControlError) -> HttpResponse {
    use actix_web::http::StatusCode;
    let status = match e {
        ControlError::UnknownClass(_) | ControlError::UnknownChannel { .. } => {
            StatusCode::NOT_FOUND
        }
        ControlError::NoConfigFile => StatusCode::CONFLICT,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    error(status, e)
}

fn broker_unavailable() -> HttpResponse {
    error(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        "broker disconnected",
    )
}

fn store_error(e: crate::store::StoreError) -> HttpResponse {
    tracing::warn!(error = %e, "admin API: store error");
    HttpResponse::ServiceUnavailable()
        .json(serde_json::json!({"error": "delivery store unavailable"}))
}

async fn message(state: web::Data<ApiState>, id: web::Path<String>) -> HttpResponse {
    match state.store.event(&id).await {
        Ok(Some(view)) => HttpResponse::Ok().json(view),
        Ok(None) => HttpResponse::NotFound().json(serde_json::json!({"error": "no such event"})),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct CostQuery {
    /// `YYYY-MM-DD` (UTC); today when absent.
    date: Option<String>,
}

async fn user_cost(
    state: web::Data<ApiState>,
    user: web::Path<String>,
    q: web::Query<CostQuery>,
) -> HttpResponse {
    let Some((_, start, end)) = utc_day(q.date.as_deref()) else {
        return bad_date();
    };
    match state.store.user_cost(&user, start, end).await {
        Ok(cost) => HttpResponse::Ok().json(cost),
        Err(e) => store_error(e),
    }
}

/// `date=YYYY-MM-DD` as its UTC day in ms, `[start, end)`; today by
/// default; `None` if it is not a date.
fn utc_day(date: Option<&str>) -> Option<(NaiveDate, i64, i64)> {
    let day = match date {
        None => chrono::Utc::now().date_naive(),
        Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?,
    };
    let start = day
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_millis();
    Some((day, start, start + 24 * 3600 * 1000))
}

fn bad_date() -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({"error": "date must be YYYY-MM-DD"}))
}

/// `GET /api/costs?date=`: what every class spent on a UTC day (today by
/// default), from the store, so across every instance sharing it.
async fn costs(state: web::Data<ApiState>, q: web::Query<CostQuery>) -> HttpResponse {
    let Some((day, start, end)) = utc_day(q.date.as_deref()) else {
        return bad_date();
    };
    match state.store.class_cost(start, end).await {
        Ok(classes) => HttpResponse::Ok().json(serde_json::json!({
            "date": day.to_string(),
            "from_ms": start,
            "to_ms": end,
            "cost_usd": classes.iter().map(|c| c.cost.cost_usd).sum::<f64>(),
            "messages": classes.iter().map(|c| c.cost.messages).sum::<u64>(),
            "classes": classes,
        })),
        Err(e) => store_error(e),
    }
}

/// `DELETE /api/users/{id}`: GDPR erasure.
async fn erase_user(state: web::Data<ApiState>, user: web::Path<String>) -> HttpResponse {
    match state.store.erase_user(&user).await {
        Ok((messages, scheduled)) => {
            tracing::info!(messages, scheduled, "erased a user's personal data");
            HttpResponse::Ok().json(serde_json::json!({
                "messages_anonymised": messages,
                "scheduled_deleted": scheduled,
            }))
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    /// At most this many entries (default 1,000).
    limit: Option<u32>,
}

/// An address as the API shows it: masked, as everywhere outside the store
/// (the store's channel column is `sms` or `email`).
fn masked(channel: &str, address: &str) -> String {
    mask::address(Channel::parse(channel).unwrap_or(Channel::Email), address)
}

async fn suppressions(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> HttpResponse {
    match state.store.suppressions(q.limit.unwrap_or(1000)).await {
        Ok(mut list) => {
            for s in &mut list {
                s.address = masked(&s.channel, &s.address);
            }
            HttpResponse::Ok().json(list)
        }
        Err(e) => store_error(e),
    }
}

/// `POST /api/suppressions` and `DELETE /api/suppressions` body.
#[derive(Deserialize)]
struct SuppressionBody {
    channel: String,
    address: String,
    /// Why, for the audit log.
    reason: Option<String>,
    /// Who, for the audit log (default `admin`).
    actor: Option<String>,
}

async fn change_suppression(
    state: &ApiState,
    body: SuppressionBody,
    action: SuppressionAction,
) -> HttpResponse {
    let Some(channel) = Channel::parse(&body.channel) else {
        return bad_channel();
    };
    let valid = match channel {
        Channel::Sms => crate::event::is_e164(body.address.trim()),
        Channel::Email => crate::event::is_email(body.address.trim()),
    };
    if !valid {
        return HttpResponse::BadRequest()
            .json(serde_json::json!({"error": "address is not a phone number (E.164) or email address for the channel"}));
    }
    let change = SuppressionChange {
        address: suppression_address(channel, &body.address),
        channel: channel.as_str(),
        action,
        actor: body.actor.unwrap_or_else(|| "admin".to_owned()),
        source: "api".to_owned(),
        reason: body.reason,
        now_ms: crate::store::now_ms(),
    };
    match state.store.change_suppressions(&[change]).await {
        Ok(changed) => HttpResponse::Ok()
            .json(serde_json::json!({"changed": changed.first().copied().unwrap_or(false)})),
        Err(e) => store_error(e),
    }
}

async fn add_suppression(
    state: web::Data<ApiState>,
    body: web::Json<SuppressionBody>,
) -> HttpResponse {
    change_suppression(&state, body.into_inner(), SuppressionAction::Suppress).await
}

async fn remove_suppression(
    state: web::Data<ApiState>,
    body: web::Json<SuppressionBody>,
) -> HttpResponse {
    change_suppression(&state, body.into_inner(), SuppressionAction::Allow).await
}

#[derive(Deserialize)]
struct AuditQuery {
    address: String,
    channel: String,
}

fn bad_channel() -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({"error": "channel must be sms or email"}))
}

async fn audit(state: web::Data<ApiState>, q: web::Query<AuditQuery>) -> HttpResponse {
    let Some(channel) = Channel::parse(&q.channel) else {
        return bad_channel();
    };
    match state
        .store
        .audit(&suppression_address(channel, &q.address))
        .await
    {
        Ok(mut log) => {
            for entry in &mut log {
                entry.address = masked(&entry.channel, &entry.address);
            }
            HttpResponse::Ok().json(log)
        }
        Err(e) => store_error(e),
    }
}

async fn classes(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(state.controls.classes())
}

async fn pause(state: web::Data<ApiState>, class: web::Path<String>) -> HttpResponse {
    match state.controls.pause(&class) {
        Ok(changed) => HttpResponse::Ok()
            .json(serde_json::json!({"class": *class, "paused": true, "changed": changed})),
        Err(e) => control_error(e),
    }
}

async fn resume(state: web::Data<ApiState>, class: web::Path<String>) -> HttpResponse {
    match state.controls.resume(&class) {
        Ok(changed) => HttpResponse::Ok()
            .json(serde_json::json!({"class": *class, "paused": false, "changed": changed})),
        Err(e) => control_error(e),
    }
}

/// `PUT /api/classes/{class}/rate_limit` body.
#[derive(Deserialize)]
struct RateBody {
    per_minute: u32,
    /// Only this channel (default: every channel the class uses).
    channel: Option<Channel>,
}

async fn set_rate(
    state: web::Data<ApiState>,
    class: web::Path<String>,
    body: web::Json<RateBody>,
) -> HttpResponse {
    match state
        .controls
        .set_rate(&class, body.channel, body.per_minute)
    {
        Ok(()) => HttpResponse::Ok().json(
            state
                .controls
                .classes()
                .into_iter()
                .find(|c| c.name == *class),
        ),
        Err(e) => control_error(e),
    }
}

async fn reload(state: web::Data<ApiState>) -> HttpResponse {
    match state.controls.reload() {
        Ok(done) => HttpResponse::Ok().json(done),
        Err(e) => control_error(e),
    }
}

#[derive(Deserialize)]
struct DlqQuery {
    class: Option<String>,
    id: Option<String>,
}

impl DlqQuery {
    fn which(&self) -> Which<'_> {
        Which {
            class: self.class.as_deref(),
            id: self.id.as_deref(),
        }
    }
}

async fn dlq_list(state: web::Data<ApiState>) -> HttpResponse {
    let Some(conn) = state.link.connection() else {
        return broker_unavailable();
    };
    match dlq::list(&conn).await {
        Ok(letters) => HttpResponse::Ok().json(letters),
        Err(e) => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `POST /api/dlq/replay`: all letters, a class's (`class`) or one event's
/// (`id`), from the JSON body.
async fn dlq_replay(state: web::Data<ApiState>, body: Option<web::Json<DlqQuery>>) -> HttpResponse {
    let Some(conn) = state.link.connection() else {
        return broker_unavailable();
    };
    let q = body.map(web::Json::into_inner).unwrap_or(DlqQuery {
        class: None,
        id: None,
    });
    match dlq::replay(&conn, &state.publisher, &state.store, q.which()).await {
        Ok(n) => {
            tracing::info!(replayed = n, class = ?q.class, "dead letters replayed");
            HttpResponse::Ok().json(serde_json::json!({"replayed": n}))
        }
        Err(e) => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `DELETE /api/dlq?class=&id=`: deletes dead letters for good.
async fn dlq_purge(state: web::Data<ApiState>, q: web::Query<DlqQuery>) -> HttpResponse {
    let Some(conn) = state.link.connection() else {
        return broker_unavailable();
    };
    match dlq::purge(&conn, q.which()).await {
        Ok(n) => {
            tracing::info!(purged = n, class = ?q.class, "dead letters purged");
            HttpResponse::Ok().json(serde_json::json!({"purged": n}))
        }
        Err(e) => error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn failures(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> HttpResponse {
    match state
        .store
        .recent_failures(q.limit.unwrap_or(20).min(500))
        .await
    {
        Ok(list) => HttpResponse::Ok().json(list),
        Err(e) => store_error(e),
    }
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Why a request may not pass, if it may not: a client over its failures
/// is refused before its token is looked at; a wrong token is counted.
fn refusal(req: &ServiceRequest, state: &ApiState) -> Option<HttpResponse> {
    let ip = req.peer_addr().map(|a| a.ip());
    let now = Instant::now();
    if let Some(wait) = ip.and_then(|ip| state.guard.blocked(ip, now)) {
        return Some(
            HttpResponse::TooManyRequests()
                .insert_header(("retry-after", wait.as_secs().max(1).to_string()))
                .json(serde_json::json!({"error": "too many failed attempts"})),
        );
    }
    match credentials(req, state.token.as_deref()) {
        Credentials::Right => return None,
        Credentials::Missing => {}
        Credentials::Wrong => {
            state.metrics.admin_auth_failures.inc();
            if let Some(ip) = ip {
                state.guard.failed(ip, now);
            }
        }
    }
    Some(unauthorized())
}

/// Mounts the `/api` scope.
pub fn configure(cfg: &mut web::ServiceConfig, state: ApiState) {
    let gate = state.clone();
    cfg.service(
        web::scope("/api")
            .app_data(web::Data::new(state))
            .wrap_fn(move |req, srv| match refusal(&req, &gate) {
                None => {
                    let fut = srv.call(req);
                    Either::Left(async move { fut.await.map(ServiceResponse::map_into_left_body) })
                }
                Some(refused) => {
                    let resp = req.into_response(refused).map_into_right_body();
                    Either::Right(async move { Ok(resp) })
                }
            })
            .route("/openapi.json", web::get().to(openapi))
            .route("/classes", web::get().to(classes))
            .route("/classes/{class}/pause", web::post().to(pause))
            .route("/classes/{class}/resume", web::post().to(resume))
            .route("/classes/{class}/rate_limit", web::put().to(set_rate))
            .route("/reload", web::post().to(reload))
            .route("/dlq", web::get().to(dlq_list))
            .route("/dlq", web::delete().to(dlq_purge))
            .route("/dlq/replay", web::post().to(dlq_replay))
            .route("/failures", web::get().to(failures))
            .route("/costs", web::get().to(costs))
            .route("/messages/{id}", web::get().to(message))
            .route("/users/{id}/cost", web::get().to(user_cost))
            .route("/users/{id}", web::delete().to(erase_user))
            .route("/suppressions", web::get().to(suppressions))
            .route("/suppressions", web::post().to(add_suppression))
            .route("/suppressions", web::delete().to(remove_suppression))
            .route("/suppressions/audit", web::get().to(audit)),
    );
}
