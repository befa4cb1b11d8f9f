//! Caller authentication and the fair share of the budget between callers.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{spawn_app_with, Answer, TestApp};

const BILLING: &str = "billing-token-0123456789abcdef";
const ORDERS: &str = "orders-token-0123456789abcdef";

fn tokens_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "taskgate-callers-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

async fn get_as(app: &TestApp, path: &str, token: Option<&str>) -> Answer {
    let mut request = app.client.get(format!("{}{path}", app.base));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    app.request(request).await
}

async fn spawn_with_tokens(name: &str, extra: &[&str]) -> (TestApp, PathBuf) {
    let file = tokens_file(
        name,
        &format!("# test callers\nbilling {BILLING}\norders {ORDERS}\n"),
    );
    let mut args = vec!["--caller-tokens-file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let app = spawn_app_with(FakeUpstream::start(), &args).await;
    (app, file)
}

#[actix_rt::test]
async fn lookups_need_a_valid_bearer_token_and_operations_endpoints_stay_open() {
    let (app, file) = spawn_with_tokens("auth", &[]).await;

    let missing = get_as(&app, "/tasks/1", None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="taskgate""#)
    );

    let wrong = get_as(&app, "/tasks/1", Some("billing-token-0123456789abcdeX")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.header("www-authenticate"),
        Some(r#"Bearer realm="taskgate", error="invalid_token""#)
    );
    let basic = app
        .request(
            app.client
                .get(format!("{}/tasks/1", app.base))
                .insert_header(("Authorization", format!("Basic {BILLING}"))),
        )
        .await;
    assert_eq!(basic.status, 401);
    // Unauthenticated callers learn nothing about their input either.
    assert_eq!(get_as(&app, "/tasks/-1", None).await.status, 401);
    assert_eq!(
        app.fake.call_count(),
        0,
        "no upstream call for a refused caller"
    );

    assert_eq!(get_as(&app, "/tasks/1", Some(BILLING)).await.status, 200);
    assert_eq!(get_as(&app, "/tasks/2", Some(ORDERS)).await.status, 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get_as(&app, open, None).await.status, 200, "{open}");
    }

    let metrics = String::from_utf8(get_as(&app, "/metrics", None).await.body).unwrap();
    assert!(metrics.contains(r#"taskgate_caller_requests_total{caller="billing"} 1"#));
    assert!(metrics.contains(r#"taskgate_caller_requests_total{caller="orders"} 1"#));
    assert!(metrics.contains(r#"taskgate_caller_requests_total{caller="rejected"} 4"#));
    assert!(!metrics.contains(BILLING) && !metrics.contains(ORDERS));
    let _ = std::fs::remove_file(file);
}

#[actix_rt::test]
async fn a_changed_tokens_file_takes_effect_and_a_broken_one_is_refused() {
    let (app, file) = spawn_with_tokens("reload", &[]).await;
    assert_eq!(get_as(&app, "/tasks/1", Some(BILLING)).await.status, 200);

    let rotated = "billing-token-rotated-000000000";
    let staged = file.with_extension("new");
    std::fs::write(&staged, format!("billing {rotated}\n")).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    let mut status = 0;
    for _ in 0..40 {
        status = get_as(&app, "/tasks/2", Some(rotated)).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "the new token works within the reload interval"
    );
    assert_eq!(
        get_as(&app, "/tasks/3", Some(BILLING)).await.status,
        401,
        "the old one is gone"
    );

    // A broken file keeps the tokens in force and is counted.
    std::fs::write(&file, "billing\n").unwrap();
    app.until_metric(
        r#"taskgate_file_reloads_total{file="caller_tokens",result="error"}"#,
        1.0,
    )
    .await;
    assert_eq!(get_as(&app, "/tasks/4", Some(rotated)).await.status, 200);
    let _ = std::fs::remove_file(file);
}

#[actix_rt::test]
async fn a_noisy_caller_cannot_starve_a_quiet_one() {
    let (app, file) = spawn_with_tokens(
        "fair",
        &[
            "--rate-limit",
            "5",
            "--max-queue-wait",
            "30s",
            "--request-timeout",
            "30s",
        ],
    )
    .await;
    app.fake.default_reply(Reply::Delay(
        Duration::from_millis(20),
        Box::new(Reply::Task(1)),
    ));
    let app = &app;

    let noisy = join_all((0..40).map(|i| async move {
        get_as(app, &format!("/tasks/{}", 1_000 + i), Some(BILLING)).await
    }));
    let quiet = async {
        // Arrives once the noisy burst is queued (the queue-depth gauge says so).
        app.until_metric("taskgate_budget_queue_depth", 30.0).await;
        let noisy_sent_before = app.fake.call_count();
        let answers = join_all((0..5).map(|i| async move {
            get_as(app, &format!("/tasks/{}", 2_000 + i), Some(ORDERS)).await
        }))
        .await;
        (answers, noisy_sent_before)
    };
    let (noisy, (quiet, noisy_sent_before)) = futures_util::join!(noisy, quiet);

    assert!(noisy
        .iter()
        .chain(quiet.iter())
        .all(|answer| answer.status == 200));
    // Judged by the order calls reached the upstream, which a slow machine does not change.
    // First come, first served would send the quiet caller's 5 after all 40 noisy ones; taking
    // turns sends them within the next ten calls (fifteen leaves a window for a slow machine to
    // send them late), while most of the noisy burst still waits.
    let order: Vec<i64> = app.fake.calls().iter().filter_map(|c| c.flow_id).collect();
    let last_quiet = order.iter().rposition(|id| *id >= 2_000).unwrap();
    assert!(
        last_quiet < noisy_sent_before + 15,
        "the quiet caller's last call was call {} of {}: {order:?}",
        last_quiet + 1,
        order.len()
    );
    assert!(
        order.len() - last_quiet > 20,
        "the noisy burst still queued"
    );
    let _ = std::fs::remove_file(file);
}
