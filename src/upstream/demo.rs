//! The embedded simulated SSM upstream behind `taskgate --demo`.
//!
//! It listens on loopback, checks every request the way Tencent does (action, version, timestamp
//! within 5 minutes, TC3 signature over the received body and Host) and answers like
//! `DescribeAsyncRequestInfo`: tasks start processing and finish after a few polls. It also
//! enforces 20 calls per second with `RequestLimitExceeded`, so the demo shows the real limits.
//!
//! Tasks, by flow id:
//! - above 1_000_000: `ResourceNotFound`;
//! - otherwise processing for `2 + flow_id % 3` polls, then failed when `flow_id % 10 == 7`,
//!   succeeded otherwise.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use super::endpoint::Endpoint;
use super::signing::{sign, SigningInput};
use crate::credentials::Credentials;
use crate::support::lock;
use crate::task::FlowId;

/// Flow ids above this do not exist in the demo.
pub(crate) const DEMO_MAX_FLOW_ID: i64 = 1_000_000;
const DEMO_RATE_LIMIT: usize = 20;

struct DemoState {
    credentials: Credentials,
    polls: Mutex<HashMap<i64, u32>>,
    recent_calls: Mutex<VecDeque<std::time::Instant>>,
}

/// A running demo upstream; stops with the actix system it was started in.
pub(crate) struct DemoUpstream {
    endpoint: Endpoint,
    handle: ServerHandle,
}

impl DemoUpstream {
    /// Starts on `127.0.0.1:0`, accepting only requests signed with `credentials`.
    pub(crate) fn start(credentials: Credentials) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(DemoState {
            credentials,
            polls: Mutex::new(HashMap::new()),
            recent_calls: Mutex::new(VecDeque::new()),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(64 * 1024))
                .route("/", web::post().to(describe))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}"))
            .expect("a loopback URL always parses");
        Ok(Self { endpoint, handle })
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    pub(crate) async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

fn error(code: &str, message: &str) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id()}
    }))
}

fn request_id() -> String {
    let mut rng = fastrand::Rng::new();
    format!(
        "demo-{:08x}-{:04x}-{:04x}",
        rng.u32(..),
        rng.u16(..),
        rng.u16(..)
    )
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn describe(req: HttpRequest, body: web::Bytes, state: web::Data<DemoState>) -> HttpResponse {
    if header(&req, "x-tc-action") != "DescribeAsyncRequestInfo" {
        return error(
            "InvalidAction",
            "the demo only knows DescribeAsyncRequestInfo",
        );
    }
    if header(&req, "x-tc-version") != "2019-09-23" {
        return error("NoSuchVersion", "the demo only knows version 2019-09-23");
    }
    let Ok(timestamp) = header(&req, "x-tc-timestamp").parse::<i64>() else {
        return error("MissingParameter", "X-TC-Timestamp is missing");
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - timestamp).abs() > 300 {
        return error("AuthFailure.SignatureExpire", "signature expired");
    }
    let expected = sign(
        &state.credentials,
        &SigningInput {
            service: "ssm",
            host: header(&req, "host"),
            content_type: header(&req, "content-type"),
            timestamp,
            body: &body,
        },
    );
    if header(&req, "authorization") != expected.authorization {
        return error(
            "AuthFailure.SignatureFailure",
            "the signature does not match",
        );
    }
    if !admit(&state) {
        return error(
            "RequestLimitExceeded",
            "the demo allows 20 calls per second, like the real API",
        );
    }
    let flow_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("FlowID").and_then(serde_json::Value::as_i64))
        .and_then(FlowId::new);
    let Some(flow_id) = flow_id else {
        return error("InvalidParameter", "FlowID must be a non-negative integer");
    };
    let id = flow_id.get();
    if id > DEMO_MAX_FLOW_ID {
        return error("ResourceNotFound", "the task does not exist");
    }
    let polls = {
        let mut polls = lock(&state.polls);
        let count = polls.entry(id).or_insert(0);
        *count += 1;
        *count
    };
    // A little latency, as a real API has.
    actix_rt::time::sleep(Duration::from_millis(15 + fastrand::u64(..20))).await;
    let finished_after = 2 + (id % 3) as u32;
    let (status, description) = if polls <= finished_after {
        (0, "task is processing")
    } else if id % 10 == 7 {
        (2, "task failed: the demo fails every flow id ending in 7")
    } else {
        (1, "task succeeded")
    };
    HttpResponse::Ok().json(serde_json::json!({
        "Response": {"TaskStatus": status, "Description": description, "RequestId": request_id()}
    }))
}

/// The demo's own 20/s window, as Tencent counts calls on arrival.
fn admit(state: &DemoState) -> bool {
    let now = std::time::Instant::now();
    let mut calls = lock(&state.recent_calls);
    while calls
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        calls.pop_front();
    }
    if calls.len() >= DEMO_RATE_LIMIT {
        return false;
    }
    calls.push_back(now);
    true
}
