//! Hostile input and a misbehaving world: request limits, no open signing proxy, clock skew.

use crate::fake_upstream::{FakeUpstream, Reply};
use crate::helpers::{spawn_app, spawn_app_with};

#[actix_rt::test]
async fn an_overlong_target_is_414_without_an_upstream_call() {
    let app = spawn_app().await;
    let long = format!("/tasks/1?{}", "x".repeat(3_000));
    let answer = app.get(&long).await;
    assert_eq!(answer.status, 414);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(answer.json()["type"], "urn:taskgate:problem:uri-too-long");
    assert_eq!(app.fake.call_count(), 0);
}

#[actix_rt::test]
async fn oversized_headers_are_refused_without_an_upstream_call() {
    let app = spawn_app().await;
    let request = app
        .client
        .get(format!("{}/tasks/1", app.base))
        .insert_header(("X-Padding", "y".repeat(64 * 1024)));
    let answer = app.request(request).await;
    assert_eq!(answer.status, 431);
    assert_eq!(
        answer.json()["type"],
        "urn:taskgate:problem:headers-too-large"
    );

    let mut many = app.client.get(format!("{}/tasks/1", app.base));
    for i in 0..70 {
        many = many.insert_header((format!("x-extra-{i}"), "1"));
    }
    assert_eq!(app.request(many).await.status, 431);
    assert_eq!(app.fake.call_count(), 0);
}

#[actix_rt::test]
async fn head_answers_like_get_without_a_body() {
    let app = spawn_app().await;
    app.fake.script(5, Reply::Task(1));
    let head = app
        .request(app.client.head(format!("{}/tasks/5", app.base)))
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.header("x-cache"), Some("miss"));
}

#[actix_rt::test]
async fn nothing_from_the_caller_reaches_the_upstream_but_the_flow_id() {
    let app = spawn_app().await;
    let request = app
        .client
        .get(format!("{}/tasks/8?Action=CreateSecret&FlowID=9", app.base))
        .insert_header(("X-TC-Action", "CreateSecret"))
        .insert_header(("X-TC-Region", "evil-region"))
        .insert_header(("X-TC-Version", "2017-03-12"))
        .insert_header(("Host", "cvm.tencentcloudapi.com"))
        .insert_header(("Authorization", "TC3-HMAC-SHA256 Credential=stolen"))
        .insert_header(("Content-Type", "text/plain"));
    let answer = app.request(request).await;
    assert_eq!(answer.status, 200);

    let call = &app.fake.calls()[0];
    assert_eq!(call.signature_error, None);
    assert_eq!(call.header("X-TC-Action"), Some("DescribeAsyncRequestInfo"));
    assert_eq!(call.header("X-TC-Version"), Some("2019-09-23"));
    assert_eq!(call.header("X-TC-Region"), None);
    assert_eq!(call.header("Content-Type"), Some("application/json"));
    assert!(call.header("Host").unwrap().starts_with("127.0.0.1:"));
    assert_eq!(call.body, br#"{"FlowID":8}"#);
    let mut names: Vec<String> = call
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    // Plus what the HTTP client adds on its own: Date, and Accept-Encoding: identity.
    assert_eq!(call.header("Accept-Encoding"), Some("identity"));
    assert_eq!(
        names,
        [
            "accept-encoding",
            "authorization",
            "content-length",
            "content-type",
            "date",
            "host",
            "user-agent",
            "x-tc-action",
            "x-tc-language",
            "x-tc-requestclient",
            "x-tc-timestamp",
            "x-tc-traceid",
            "x-tc-version",
        ],
        "exactly the headers taskgate sets"
    );
}

#[actix_rt::test]
async fn a_clock_problem_is_measured_and_counted() {
    let fake = FakeUpstream::start();
    fake.set_clock_offset(-600);
    let app = spawn_app_with(fake, &[]).await;

    let answer = app.task(9).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["code"], "AuthFailure.SignatureExpire");

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("taskgate_signature_expired_total 1"),
        "{metrics}"
    );
    let skew: f64 = metrics
        .lines()
        .find(|l| l.starts_with("taskgate_clock_skew_seconds "))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (590.0..=610.0).contains(&skew),
        "our clock is 600 s ahead: {skew}"
    );
}
