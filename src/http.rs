//! The one HTTP listener: `/metrics`, `/healthz`, `/readyz`, the dashboard
//! at `/` ([`crate::dashboard`]), the admin API under `/api`
//! ([`crate::api`]) and the providers' webhooks ([`crate::webhooks`]).

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use herald_actors::metrics::Metrics;

use crate::api::ApiState;
use crate::webhooks::WebhookState;

/// Whether herald can do its job: used by `/readyz`.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when ready, or what is not.
    fn check(&self) -> Result<(), String>;
}

struct State {
    metrics: Arc<Metrics>,
    ready: Arc<dyn Readiness>,
}

async fn metrics_text(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.encode())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    match state.ready.check() {
        Ok(()) => HttpResponse::Ok().body("ready\n"),
        Err(why) => HttpResponse::ServiceUnavailable().body(format!("not ready: {why}\n")),
    }
}

/// Binds `addr` and serves in the background; returns the bound address
/// (for port 0) and a handle to stop the server.
pub fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Readiness>,
    api: ApiState,
    webhooks: WebhookState,
) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let state = web::Data::new(State { metrics, ready });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(metrics_text))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/", web::get().to(crate::dashboard::page))
            .configure(|cfg| crate::api::configure(cfg, api.clone()))
            .configure(|cfg| crate::webhooks::configure(cfg, webhooks.clone()))
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?;
    let bound = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((bound, handle))
}
