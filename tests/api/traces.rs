//! OpenTelemetry traces against a fake OTLP/HTTP collector that decodes what it receives: the
//! caller's trace carried through every span, the spans and their attributes, no secret in any
//! exported byte, malformed `traceparent`s ignored, the sampler. (`trace_export`: what a dead
//! collector and a shutdown do.)

use std::time::Duration;

use crate::fake_collector::{FakeCollector, SeenSpan};
use crate::fake_upstream::{FakeUpstream, Reply, FAKE_SECRET_ID, FAKE_SECRET_KEY};
use crate::helpers::{spawn_app_with, TestApp};

pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TOKEN: &str = "billing-token-trace-0123456789abcdef";
pub const REQUEST_SPAN: &str = "GET /tasks/{flow_id}";
/// OTLP span kinds and status codes.
const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

pub fn traceparent(trace_id: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{PARENT_ID}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// taskgate exporting to `collector`, batches sent within 20 ms.
async fn traced_app(collector: &FakeCollector, extra: &[&str]) -> TestApp {
    let mut args = vec![
        "--otlp-endpoint",
        &collector.url,
        "--bsp-schedule-delay",
        "20",
    ];
    args.extend_from_slice(extra);
    spawn_app_with(FakeUpstream::start(), &args).await
}

pub async fn get_traced(app: &TestApp, path: &str, traceparent: Option<&str>) -> u16 {
    let mut request = app.client.get(format!("{}{path}", app.base));
    if let Some(value) = traceparent {
        request = request.insert_header(("traceparent", value));
    }
    app.request(request).await.status
}

pub fn named<'a>(spans: &'a [SeenSpan], name: &str, trace_id: &str) -> Vec<&'a SeenSpan> {
    spans
        .iter()
        .filter(|s| s.name == name && s.trace_id == trace_id)
        .collect()
}

fn one<'a>(spans: &'a [SeenSpan], name: &str, trace_id: &str) -> &'a SeenSpan {
    match named(spans, name, trace_id)[..] {
        [span] => span,
        ref found => panic!("{} spans {name:?} in {trace_id}: {spans:#?}", found.len()),
    }
}

#[actix_rt::test]
async fn the_callers_trace_runs_through_the_request_its_fetch_and_the_upstream_call() {
    let collector = FakeCollector::start();
    let tokens = std::env::temp_dir().join(format!("taskgate-traces-{}", std::process::id()));
    std::fs::write(&tokens, format!("billing {TOKEN}\n")).unwrap();
    let app = traced_app(
        &collector,
        &[
            "--caller-tokens-file",
            tokens.to_str().unwrap(),
            "--otel-service-name",
            "gate-under-test",
            "--otel-resource-attributes",
            "deployment.environment.name=test,team=a%2Cb",
        ],
    )
    .await;
    app.fake.script(7, Reply::Task(1));

    let ask = |traceparent: String| {
        app.client
            .get(format!("{}/tasks/7", app.base))
            .insert_header(("traceparent", traceparent))
            .insert_header(("tracestate", "vendor=opaque"))
            .insert_header(("Authorization", format!("Bearer {TOKEN}")))
            .insert_header(("User-Agent", "trace-test/1"))
    };
    let answer = app.request(ask(traceparent(TRACE_ID, true))).await;
    assert_eq!(
        (answer.status, answer.header("x-cache")),
        (200, Some("miss"))
    );
    let spans = collector
        .until_spans(&[REQUEST_SPAN, "fetch", "budget wait", "POST"])
        .await;

    let request = one(&spans, REQUEST_SPAN, TRACE_ID);
    assert_eq!(
        request.parent_span_id, PARENT_ID,
        "a child of the caller's span"
    );
    assert_eq!(
        (request.kind, request.trace_state.as_str()),
        (SERVER, "vendor=opaque")
    );
    let port = app.base.rsplit(':').next().unwrap();
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.route", "/tasks/{flow_id}"),
        ("http.response.status_code", "200"),
        ("url.path", "/tasks/7"),
        ("url.scheme", "http"),
        ("server.address", "127.0.0.1"),
        ("server.port", port),
        ("network.protocol.version", "1.1"),
        ("network.peer.address", "127.0.0.1"),
        ("user_agent.original", "trace-test/1"),
        ("taskgate.served", "miss"),
        ("taskgate.caller", "billing"),
    ] {
        assert_eq!(request.attr(key), Some(value), "{key} in {request:#?}");
    }
    assert_eq!(
        request.attr("taskgate.request_id"),
        answer.header("x-request-id")
    );
    assert_eq!(request.resource["service.name"], "gate-under-test");
    assert_eq!(request.resource["deployment.environment.name"], "test");
    assert_eq!(request.resource["team"], "a,b");

    let fetch = one(&spans, "fetch", TRACE_ID);
    assert_eq!(
        (fetch.kind, &fetch.parent_span_id),
        (INTERNAL, &request.span_id)
    );
    assert_eq!(fetch.attr("taskgate.fetch.origin"), Some("upstream"));
    assert_eq!(fetch.attr("taskgate.flow_id"), Some("7"));
    let budget = one(&spans, "budget wait", TRACE_ID);
    assert_eq!(budget.parent_span_id, fetch.span_id);
    assert_eq!(budget.attr("taskgate.budget.outcome"), Some("granted"));
    assert_eq!(budget.attr("taskgate.budget.priority"), Some("unknown"));
    let call = one(&spans, "POST", TRACE_ID);
    assert_eq!((call.kind, &call.parent_span_id), (CLIENT, &fetch.span_id));
    for (key, value) in [
        ("http.request.method", "POST"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("rpc.method", "DescribeAsyncRequestInfo"),
        ("taskgate.upstream.outcome", "success"),
        ("taskgate.flow_id", "7"),
        ("taskgate.attempt", "1"),
    ] {
        assert_eq!(call.attr(key), Some(value), "{key} in {call:#?}");
    }
    let upstream_id = call.attr("tencentcloud.request_id").unwrap();
    assert!(upstream_id.starts_with("fake-"), "{upstream_id}");

    // A hit is a span of its own, with nothing under it.
    let hit_trace = "0af7651916cd43dd8448eb211c80319c";
    let answer = app.request(ask(traceparent(hit_trace, true))).await;
    assert_eq!(answer.header("x-cache"), Some("hit"));
    let spans = loop {
        let spans = collector.spans();
        if !named(&spans, REQUEST_SPAN, hit_trace).is_empty() {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let hit = one(&spans, REQUEST_SPAN, hit_trace);
    assert_eq!(hit.attr("taskgate.served"), Some("hit"));
    assert_eq!(spans.iter().filter(|s| s.trace_id == hit_trace).count(), 1);

    // What reached the collector: OTLP protobuf on /v1/traces, and no secret in any byte.
    for export in collector.exports() {
        assert_eq!(export.path, "/v1/traces");
        let content_type = export.headers.iter().find(|(n, _)| n == "content-type");
        assert_eq!(content_type.unwrap().1, "application/x-protobuf");
        let bytes = format!(
            "{:?}{}",
            export.headers,
            String::from_utf8_lossy(&export.body)
        );
        for secret in [
            FAKE_SECRET_ID,
            FAKE_SECRET_KEY,
            TOKEN,
            "TC3-HMAC-SHA256",
            "Signature=",
        ] {
            assert!(!bytes.contains(secret), "{secret} was exported");
        }
    }
    let _ = std::fs::remove_file(tokens);
}

#[actix_rt::test]
async fn without_a_valid_traceparent_a_request_starts_a_new_trace() {
    let collector = FakeCollector::start();
    let app = traced_app(&collector, &[]).await;
    let malformed = [
        None,
        Some(format!("00-{}-{PARENT_ID}-01", TRACE_ID.to_uppercase())),
        Some(format!("00-{TRACE_ID}-0000000000000000-01")),
        Some(format!("ff-{TRACE_ID}-{PARENT_ID}-01")),
        Some(format!("00-{TRACE_ID}-{PARENT_ID}-01-extra")),
    ];
    for (i, header) in malformed.iter().enumerate() {
        assert_eq!(
            get_traced(&app, &format!("/tasks/{}", 10 + i), header.as_deref()).await,
            200
        );
    }
    // Probes start no trace of their own; a caller's trace still covers them.
    assert_eq!(get_traced(&app, "/healthz", None).await, 200);
    let probe_trace = "11111111111111111111111111111111";
    let probe_parent = traceparent(probe_trace, true);
    assert_eq!(get_traced(&app, "/healthz", Some(&probe_parent)).await, 200);

    let spans = collector.until_spans(&["GET /healthz"]).await;
    let spans = loop {
        let requests = spans.iter().filter(|s| s.name == REQUEST_SPAN).count();
        if requests >= malformed.len() {
            break collector.spans();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let roots: Vec<_> = spans.iter().filter(|s| s.name == REQUEST_SPAN).collect();
    assert_eq!(roots.len(), malformed.len());
    let mut trace_ids: Vec<_> = roots.iter().map(|s| s.trace_id.as_str()).collect();
    for root in &roots {
        assert_eq!(root.parent_span_id, "", "a new trace's root: {root:#?}");
        assert_ne!(root.trace_id.to_lowercase(), TRACE_ID);
        assert_eq!(root.trace_id.len(), 32);
    }
    trace_ids.sort_unstable();
    trace_ids.dedup();
    assert_eq!(trace_ids.len(), malformed.len(), "one new trace each");
    let probes: Vec<_> = spans.iter().filter(|s| s.name == "GET /healthz").collect();
    assert_eq!(probes.len(), 1, "only the probe with a trace: {probes:#?}");
    assert_eq!(probes[0].trace_id, probe_trace);
}

#[actix_rt::test]
async fn coalesced_waits_and_long_polls_are_spans_of_their_requests() {
    let collector = FakeCollector::start();
    let app = traced_app(&collector, &["--processing-ttl", "100ms"]).await;
    app.fake.script(
        8,
        Reply::Delay(Duration::from_millis(300), Box::new(Reply::Task(1))),
    );
    let (a, b) = (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    );
    let leader = traceparent(a, true);
    let (first, second) = futures_util::join!(get_traced(&app, "/tasks/8", Some(&leader)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get_traced(&app, "/tasks/8", Some(&traceparent(b, true))).await
    });
    assert_eq!((first, second), (200, 200));

    app.fake.script(9, Reply::Task(0));
    let polled = "cccccccccccccccccccccccccccccccc";
    let waiter = traceparent(polled, true);
    let (answer, _) = futures_util::join!(
        get_traced(&app, "/tasks/9?wait=10s", Some(&waiter)),
        async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            app.fake.rescript(9, Reply::Task(1));
        }
    );
    assert_eq!(answer, 200);

    let spans = collector
        .until_spans(&["coalesced wait", "long poll"])
        .await;
    let follower = one(&spans, REQUEST_SPAN, b);
    let wait = one(&spans, "coalesced wait", b);
    assert_eq!(wait.parent_span_id, follower.span_id);
    assert_eq!(wait.attr("taskgate.flow_id"), Some("8"));
    assert!(
        named(&spans, "POST", b).is_empty(),
        "the follower made no call"
    );
    assert_eq!(
        named(&spans, "POST", a).len(),
        1,
        "the leader made the one call"
    );

    let request = one(&spans, REQUEST_SPAN, polled);
    let poll = one(&spans, "long poll", polled);
    assert_eq!(poll.parent_span_id, request.span_id);
    assert_eq!(poll.attr("taskgate.wait.end"), Some("completed"));
    assert_eq!(
        poll.attr("taskgate.wait.requested_ms")
            .map(|ms| ms.len() >= 4),
        Some(true)
    );
    // The poller's refreshes are in the trace of the request that started it.
    let calls = named(&spans, "POST", polled);
    assert!(calls.len() >= 2, "{calls:#?}");
}

#[actix_rt::test]
async fn the_sampler_follows_the_callers_decision() {
    let collector = FakeCollector::start();
    let app = traced_app(&collector, &["--traces-sampler", "parentbased_always_off"]).await;
    let (sampled, unsampled) = (
        "dddddddddddddddddddddddddddddddd",
        "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
    );
    assert_eq!(get_traced(&app, "/tasks/20", None).await, 200);
    assert_eq!(
        get_traced(&app, "/tasks/21", Some(&traceparent(unsampled, false))).await,
        200
    );
    assert_eq!(
        get_traced(&app, "/tasks/22", Some(&traceparent(sampled, true))).await,
        200
    );
    let spans = collector.until_spans(&[REQUEST_SPAN, "POST"]).await;
    assert!(spans.iter().all(|s| s.trace_id == sampled), "{spans:#?}");
}

#[actix_rt::test]
async fn a_failed_call_says_what_tencent_answered() {
    let collector = FakeCollector::start();
    let app = traced_app(&collector, &[]).await;
    app.fake
        .script(41, Reply::Error("AuthFailure.SignatureFailure"));
    assert_eq!(
        get_traced(&app, "/tasks/41", Some(&traceparent(TRACE_ID, true))).await,
        502
    );
    let spans = collector.until_spans(&[REQUEST_SPAN, "POST"]).await;
    let call = one(&spans, "POST", TRACE_ID);
    assert_eq!(call.status_code, STATUS_ERROR);
    assert_eq!(
        call.attr("tencentcloud.error_code"),
        Some("AuthFailure.SignatureFailure")
    );
    assert_eq!(
        call.attr("error.type"),
        Some("AuthFailure.SignatureFailure")
    );
    assert_eq!(call.attr("taskgate.upstream.outcome"), Some("auth_failure"));
    let request = one(&spans, REQUEST_SPAN, TRACE_ID);
    assert_eq!(request.status_code, STATUS_ERROR);
    assert_eq!(request.attr("error.type"), Some("502"));
}
