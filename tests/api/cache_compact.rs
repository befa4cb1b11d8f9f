//! The compact cache of final answers, seen from outside: a hit answers the same bytes and
//! headers as the lookup that fetched the answer, `taskgate_cache_entries` counts answers, and
//! the byte bound evicts when answers come in through lookups.

use futures_util::future::join_all;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{metric_value, spawn_app, spawn_app_with, Answer};

/// Every header but the ones that differ by design between a miss and a hit.
fn comparable_headers(answer: &Answer) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = answer
        .headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "x-cache" | "x-request-id" | "date"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
        .collect();
    headers.sort();
    headers
}

#[actix_rt::test]
async fn a_hit_answers_the_bytes_and_headers_the_fetch_answered() {
    let app = spawn_app().await;
    let replies = [
        (
            1_000,
            Reply::Raw(
                200,
                r#"{"Response":{"TaskStatus":1,"Description":"task succeeded","RequestId":"6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c"}}"#,
            ),
        ),
        (
            1_001,
            Reply::Raw(
                200,
                r#"{"Response":{"TaskStatus":2,"Description":"boom \"quoted\" \\ \u00e9 \n","RequestId":"0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3"}}"#,
            ),
        ),
        (
            1_002,
            Reply::Raw(
                200,
                r#"{"Response":{"TaskStatus":1,"Description":"upper-case id","RequestId":"6F1A2B3C-0D4E-4F5A-8B6C-7D8E9F0A1B2C"}}"#,
            ),
        ),
        (1_003, Reply::Task(1)),
        (1_004, Reply::Task(2)),
    ];
    let expected_bodies = [
        r#"{"flow_id":1000,"status":"succeeded","task_status":1,"description":"task succeeded","request_id":"6f1a2b3c-0d4e-4f5a-8b6c-7d8e9f0a1b2c"}"#.to_string(),
        format!(
            r#"{{"flow_id":1001,"status":"failed","task_status":2,"description":"boom \"quoted\" \\ {} \n","request_id":"0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3"}}"#,
            '\u{e9}'
        ),
        r#"{"flow_id":1002,"status":"succeeded","task_status":1,"description":"upper-case id","request_id":"6F1A2B3C-0D4E-4F5A-8B6C-7D8E9F0A1B2C"}"#.to_string(),
    ];
    for (flow_id, reply) in replies {
        app.fake.script(flow_id, reply);
    }
    for flow_id in 1_000..1_005 {
        let miss = app.task(flow_id).await;
        assert_eq!(miss.status, 200);
        assert_eq!(miss.header("x-cache"), Some("miss"));
        let hit = app.task(flow_id).await;
        assert_eq!(hit.header("x-cache"), Some("hit"));
        assert_eq!(hit.status, miss.status);
        assert_eq!(
            String::from_utf8_lossy(&hit.body),
            String::from_utf8_lossy(&miss.body),
            "flow id {flow_id}"
        );
        assert_eq!(comparable_headers(&hit), comparable_headers(&miss));
        if let Some(expected) = expected_bodies.get((flow_id - 1_000) as usize) {
            assert_eq!(String::from_utf8_lossy(&hit.body), expected.as_str());
        }
        // The body is what `Task::to_json` writes for what the upstream said.
        let json = hit.json();
        let task = taskgate::Task {
            flow_id: taskgate::FlowId::new(flow_id).unwrap(),
            status: taskgate::TaskStatus::from_code(json["task_status"].as_i64().unwrap()).unwrap(),
            description: json["description"].as_str().unwrap().to_string(),
            request_id: json["request_id"].as_str().unwrap().to_string(),
        };
        assert_eq!(hit.body, task.to_json());
    }
    assert_eq!(app.fake.call_count(), 5);
    // Five answers, held in one block of neighbouring flow ids.
    let metrics = app.metrics().await;
    assert_eq!(metric_value(&metrics, "taskgate_cache_entries"), Some(5.0));
    assert!(metric_value(&metrics, "taskgate_cache_weighted_size_bytes").unwrap() > 0.0);
}

#[actix_rt::test]
async fn the_byte_bound_evicts_answers_that_come_in_through_lookups() {
    const CAPACITY: &str = "65536";
    let app = spawn_app_with(
        FakeUpstream::start(),
        &["--cache-capacity", CAPACITY, "--rate-limit", "2000"],
    )
    .await;
    let mut held = Vec::new();
    // Flow ids 64 apart: one block each, the costliest layout.
    for round in 0..4 {
        let asks = (0..150).map(|i| app.task((round * 150 + i) * 64));
        for answer in join_all(asks).await {
            assert_eq!(answer.status, 200);
        }
        let metrics = app.metrics().await;
        let entries = metric_value(&metrics, "taskgate_cache_entries").unwrap();
        let size = metric_value(&metrics, "taskgate_cache_weighted_size_bytes").unwrap();
        assert!(size <= 65_536.0, "weighted size {size} within the bound");
        held.push(entries);
    }
    // 600 answers asked; about 120 fit, and the count stays there.
    assert!(held[3] < 200.0, "evicted: {held:?}");
    assert!(
        held[3] >= held[1] * 0.75 && held[3] <= held[1] * 1.25,
        "levels off: {held:?}"
    );
    // The newest answers are held: asked again, most come from the cache. (Not every one: the
    // cache admits a newcomer over a victim it has seen as often, so one may have been turned
    // away.)
    let again = join_all((450..600).map(|i| app.task(i * 64))).await;
    let hits = again
        .iter()
        .filter(|answer| answer.header("x-cache") == Some("hit"))
        .count();
    assert!(
        hits as f64 >= held[3] / 2.0,
        "{hits} of the newest 150 were hits, the cache holds {held:?}"
    );
}
