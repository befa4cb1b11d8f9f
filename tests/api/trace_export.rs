//! Trace export under trouble and at the end: a dead collector (a bound socket that never
//! accepts) delays no answer and its dropped spans are counted; on shutdown the last spans are
//! sent within the drain, and a dead collector cannot hold the process past it. The access line
//! names the trace.

use std::time::Duration;

use tokio::time::Instant;

use crate::fake_collector::{DeadCollector, FakeCollector};
use crate::fake_upstream::{FakeUpstream, FAKE_SECRET_ID, FAKE_SECRET_KEY};
use crate::helpers::{client, exit_code, sigterm, spawn_app_with, spawn_process, Process};
use crate::traces::{get_traced, named, traceparent, REQUEST_SPAN, TRACE_ID};

#[actix_rt::test]
async fn a_dead_collector_never_delays_an_answer_and_dropped_spans_are_counted() {
    let dead = DeadCollector::start();
    let app = spawn_app_with(
        FakeUpstream::start(),
        &[
            "--otlp-endpoint",
            &dead.url,
            "--otlp-timeout",
            "60000",
            "--bsp-max-queue-size",
            "8",
            "--bsp-max-export-batch-size",
            "4",
            "--bsp-schedule-delay",
            "10",
        ],
    )
    .await;
    let before = app.metrics().await;
    assert!(before.contains(r#"taskgate_trace_spans_dropped_total{reason="queue_full"} 0"#));

    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..300 {
        // Ten misses (each a request, a fetch, a budget wait and a call), then hits.
        let flow_id = 30 + (i % 10);
        let asked = Instant::now();
        let status = get_traced(&app, &format!("/tasks/{flow_id}"), None).await;
        slowest = slowest.max(asked.elapsed());
        assert_eq!(status, 200);
    }
    assert!(
        slowest < Duration::from_secs(1),
        "an answer took {slowest:?} with the collector dead"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    app.until_metric(
        r#"taskgate_trace_spans_dropped_total{reason="queue_full"}"#,
        100.0,
    )
    .await;
}

#[actix_rt::test]
async fn the_last_spans_are_sent_on_shutdown_and_the_access_line_names_the_trace() {
    let collector = FakeCollector::start();
    let fake = FakeUpstream::start();
    let process = spawn_process(
        &[
            "--upstream-endpoint",
            &fake.url,
            "--otlp-endpoint",
            &collector.url,
            "--bsp-schedule-delay",
            "600000",
            "--drain-delay",
            "0s",
            "--log-format",
            "json",
        ],
        &[
            ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
            ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY),
        ],
    );
    let client = client();
    for parent in [Some(traceparent(TRACE_ID, true)), None] {
        let mut request = client.get(format!("{}/tasks/4", process.base()));
        if let Some(parent) = parent {
            request = request.insert_header(("traceparent", parent));
        }
        let mut response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let _ = response.body().await;
    }
    let access = wait_for_lines(&process, "taskgate::access", 2).await;
    let trace_ids: Vec<String> = access
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|line| line["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(trace_ids[0], TRACE_ID);
    assert!(
        trace_ids[1].len() == 32 && trace_ids[1] != TRACE_ID,
        "{trace_ids:?}"
    );
    assert!(
        collector.spans().is_empty(),
        "nothing sent before the batch is due"
    );

    sigterm(&process);
    assert_eq!(exit_code(process).await, Some(0));
    let spans = collector.spans();
    for trace_id in &trace_ids {
        assert_eq!(named(&spans, REQUEST_SPAN, trace_id).len(), 1, "{spans:#?}");
    }
}

#[actix_rt::test]
async fn a_dead_collector_cannot_hold_the_shutdown_past_the_drain() {
    let dead = DeadCollector::start();
    let fake = FakeUpstream::start();
    let process = spawn_process(
        &[
            "--upstream-endpoint",
            &fake.url,
            "--otlp-endpoint",
            &dead.url,
            "--bsp-schedule-delay",
            "600000",
            "--drain-delay",
            "0s",
            "--shutdown-timeout",
            "1s",
        ],
        &[
            ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
            ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY),
        ],
    );
    let mut response = client()
        .get(format!("{}/tasks/4", process.base()))
        .insert_header(("traceparent", traceparent(TRACE_ID, true)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let _ = response.body().await;
    let access = wait_for_lines(&process, "taskgate::access", 1).await;
    assert!(
        access[0].ends_with(&format!(" trace_id={TRACE_ID}")),
        "{}",
        access[0]
    );

    let stopping = Instant::now();
    sigterm(&process);
    let log = process.log.clone();
    assert_eq!(exit_code(process).await, Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    let log = log.lock().unwrap().join("\n");
    // Whichever gives up first says so: the export (its deadline) or the flush.
    assert!(
        log.contains("did not take the last spans") || log.contains("failed (no answer in time)"),
        "{log}"
    );
}

/// Waits (10 s at most) for `count` log lines containing `needle`.
async fn wait_for_lines(process: &Process, needle: &str, count: usize) -> Vec<String> {
    for _ in 0..1000 {
        let lines: Vec<String> = process
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "fewer than {count} {needle:?} lines: {}",
        process.log_text()
    );
}
