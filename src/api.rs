//! The admin API under `/api`, behind `Authorization: Bearer
//! $HERALD_ADMIN_TOKEN` (compared in constant time). Without a configured
//! token every route answers 401.

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use futures_util::future::Either;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use herald_actors::model::{suppression_address, Channel};

use crate::store::{Store, SuppressionAction, SuppressionChange};

/// What the API routes need.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// `None`: the API is refused.
    pub token: Option<String>,
}

fn authorized(req: &ServiceRequest, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return false;
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("www-authenticate", "Bearer"))
        .json(serde_json::json!({"error": "unauthorized"}))
}

fn store_error(e: crate::store::StoreError) -> HttpResponse {
    tracing::warn!(error = %e, "admin API: store error");
    HttpResponse::ServiceUnavailable()
        .json(serde_json::json!({"error": "delivery store unavailable"}))
}

async fn message(state: web::Data<ApiState>, id: web::Path<String>) -> HttpResponse {
    match state.store.message(&id).await {
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
    let day = match &q.date {
        None => chrono::Utc::now().date_naive(),
        Some(d) => match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(day) => day,
            Err(_) => {
                return HttpResponse::BadRequest()
                    .json(serde_json::json!({"error": "date must be YYYY-MM-DD"}))
            }
        },
    };
    let start = day
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_millis();
    let end = start + 24 * 3600 * 1000;
    match state.store.user_cost(&user, start, end).await {
        Ok(cost) => HttpResponse::Ok().json(cost),
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

async fn suppressions(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> HttpResponse {
    match state.store.suppressions(q.limit.unwrap_or(1000)).await {
        Ok(list) => HttpResponse::Ok().json(list),
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
    let channel = match body.channel.as_str() {
        "sms" => Channel::Sms,
        "email" => Channel::Email,
        _ => {
            return HttpResponse::BadRequest()
                .json(serde_json::json!({"error": "channel must be sms or email"}))
        }
    };
    let valid = match channel {
        Channel::Sms => crate::event::is_e164(body.address.trim()),
        Channel::Email => body.address.contains('@'),
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

async fn audit(state: web::Data<ApiState>, q: web::Query<AuditQuery>) -> HttpResponse {
    let channel = if q.channel == "sms" {
        Channel::Sms
    } else {
        Channel::Email
    };
    match state
        .store
        .audit(&suppression_address(channel, &q.address))
        .await
    {
        Ok(log) => HttpResponse::Ok().json(log),
        Err(e) => store_error(e),
    }
}

/// Mounts the `/api` scope.
pub fn configure(cfg: &mut web::ServiceConfig, state: ApiState) {
    let token = state.token.clone();
    cfg.service(
        web::scope("/api")
            .app_data(web::Data::new(state))
            .wrap_fn(move |req, srv| {
                if authorized(&req, token.as_deref()) {
                    let fut = srv.call(req);
                    Either::Left(async move { fut.await.map(ServiceResponse::map_into_left_body) })
                } else {
                    let resp = req.into_response(unauthorized()).map_into_right_body();
                    Either::Right(async move { Ok(resp) })
                }
            })
            .route("/messages/{id}", web::get().to(message))
            .route("/users/{id}/cost", web::get().to(user_cost))
            .route("/users/{id}", web::delete().to(erase_user))
            .route("/suppressions", web::get().to(suppressions))
            .route("/suppressions", web::post().to(add_suppression))
            .route("/suppressions", web::delete().to(remove_suppression))
            .route("/suppressions/audit", web::get().to(audit)),
    );
}
