//! The operational endpoints: liveness, readiness and the Prometheus exposition. None of them
//! asks Tencent or Redis: probes must never spend the account's budget.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::state::AppState;

pub(super) async fn healthz(_state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"status": "ok"}))
}

pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.readiness() {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({"status": "ready"})),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({"status": "not_ready", "reason": reason})),
    }
}

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.refresh_gauges().await;
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(state.metrics.render())
}
