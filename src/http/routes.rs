//! The route table: `/tasks/{flow_id}` and the operational endpoints, with their methods.

use actix_web::web;

use super::ops::{healthz, metrics, readyz};
use super::state::AppState;
use super::tasks::get_task;
use crate::error::ApiError;

/// `Allow` of the operational routes.
const OPS_METHODS: &str = "GET, HEAD";

/// Registers every route; shared by the server and the tests.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        // A static prefix, not a `{flow_id}` pattern: actix matches patterns with a regex engine,
        // which cost a cache hit about a sixth of its CPU time. The whole tail reaches the parser,
        // so `/tasks/1/2` and `/tasks/` get a 400 that explains the flow id, not a bare 404.
        web::scope("/tasks").default_service(web::to(get_task)),
    )
    .service(ops_resource("/healthz", healthz))
    .service(ops_resource("/readyz", readyz))
    .service(ops_resource("/metrics", metrics));
}

fn ops_resource<F, R>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<(web::Data<AppState>,), Output = R>,
    R: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|| async {
            ApiError::MethodNotAllowed { allow: OPS_METHODS }
        }))
}

/// Answers every path that matches no route.
pub(crate) async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}
