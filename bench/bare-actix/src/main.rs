//! The floor for taskgate's cache-hit path: the same actix-web, one worker, and a handler that
//! returns a fixed body (the bytes taskgate answered for the warmed task) with no lookup at all.
//!
//! Usage: bare-actix LISTEN_ADDR BODY_FILE

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(body_file)) = (args.next(), args.next()) else {
        eprintln!("usage: bare-actix LISTEN_ADDR BODY_FILE");
        std::process::exit(2);
    };
    let body = Bytes::from(std::fs::read(&body_file)?);
    HttpServer::new(move || {
        let body = body.clone();
        App::new().route(
            "/tasks/{flow_id}",
            web::get().to(move || {
                let body = body.clone();
                async move {
                    HttpResponse::Ok()
                        .insert_header((header::CONTENT_TYPE, "application/json"))
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .bind(listen)?
    .run()
    .await
}
