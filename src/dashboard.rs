//! The live dashboard at `/`: one self-contained page (HTML, CSS and
//! JavaScript in `dashboard/index.html`, no build step), compiled into the
//! binary. It reads `/metrics` (open) for the live numbers and the admin
//! API (with the token the operator types in, kept in the tab's session
//! storage) for classes, failures and the dead-letter queue.

use actix_web::HttpResponse;

const PAGE: &str = include_str!("dashboard/index.html");

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header((
            "content-security-policy",
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
        ))
        .body(PAGE)
}
