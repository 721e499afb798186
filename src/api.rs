//! The admin API under `/api`, behind `Authorization: Bearer
//! $HERALD_ADMIN_TOKEN` (compared in constant time). Without a configured
//! token every route answers 401.

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use futures_util::future::Either;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::store::Store;

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
            .route("/users/{id}/cost", web::get().to(user_cost)),
    );
}
