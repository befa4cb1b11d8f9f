//! The binary as an operator runs it: help, bad settings, missing credentials, and logs that never
//! carry a secret.

use std::process::Command;

use crate::fake_upstream::{FakeUpstream, Reply, FAKE_SECRET_ID, FAKE_SECRET_KEY};
use crate::helpers::{client, spawn_process};

fn run(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskgate"));
    command.args(args);
    // Nothing of this machine's own Tencent set-up may reach the process under test.
    for var in [
        "TENCENTCLOUD_SECRET_ID",
        "TENCENTCLOUD_SECRET_KEY",
        "TENCENTCLOUD_CREDENTIALS_FILE",
        "HOME",
    ] {
        command.env_remove(var);
    }
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let output = run(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (var, default) in [
        ("TASKGATE_LISTEN", Some("0.0.0.0:8080")),
        (
            "TASKGATE_UPSTREAM_ENDPOINT",
            Some("https://ssm.intl.tencentcloudapi.com"),
        ),
        ("TASKGATE_REGION", None),
        ("TENCENTCLOUD_REGION", None),
        ("TASKGATE_UPSTREAM_TIMEOUT", Some("5s")),
        ("TASKGATE_REQUEST_TIMEOUT", Some("30s")),
        ("TASKGATE_WORKERS", None),
        ("TENCENTCLOUD_SECRET_ID", None),
        ("TENCENTCLOUD_SECRET_KEY", None),
        ("TENCENTCLOUD_SECURITY_TOKEN", None),
        ("TENCENTCLOUD_CREDENTIALS_FILE", None),
    ] {
        assert!(help.contains(var), "{var} missing from --help");
        if let Some(default) = default {
            assert!(
                help.contains(&format!("[default: {default}]")),
                "{var} default"
            );
        }
    }
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let output = run(&["--help"], &[("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY)]);
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(!help.contains(FAKE_SECRET_KEY));
}

#[test]
fn a_bad_value_stops_the_start_and_names_the_setting() {
    for (env, value) in [
        ("TASKGATE_UPSTREAM_TIMEOUT", "soon"),
        ("TASKGATE_RATE_LIMIT", "0"),
        ("TASKGATE_UPSTREAM_ENDPOINT", "ftp://example"),
        ("TASKGATE_LISTEN", "not-an-address"),
        ("TASKGATE_REGION", "ap guangzhou"),
    ] {
        let output = run(
            &[],
            &[
                (env, value),
                ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
                ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY),
            ],
        );
        assert!(!output.status.success(), "{env}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(env), "{env}: {stderr}");
    }
}

#[test]
fn missing_credentials_stop_the_start_with_a_clear_message() {
    let output = run(&["--listen", "127.0.0.1:0"], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TENCENTCLOUD_SECRET_ID is not set"),
        "{stderr}"
    );

    let output = run(
        &["--listen", "127.0.0.1:0"],
        &[("TENCENTCLOUD_CREDENTIALS_FILE", "/nonexistent/credentials")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TENCENTCLOUD_CREDENTIALS_FILE") && stderr.contains("/nonexistent"),
        "{stderr}"
    );
}

#[actix_rt::test]
async fn no_secret_reaches_a_log_line_or_a_response_across_every_error() {
    for format in ["text", "json"] {
        no_secret_in(format).await;
    }
}

async fn no_secret_in(log_format: &str) {
    let fake = FakeUpstream::start();
    let token = "fakeTOKENsecretVALUE";
    fake.require_token(token);
    let replies = [
        Reply::Task(1),
        Reply::Error("ResourceNotFound"),
        Reply::Error("AuthFailure.SignatureFailure"),
        Reply::Error("UnauthorizedOperation"),
        Reply::Error("InternalError"),
        Reply::Raw(500, "boom"),
        Reply::Raw(200, "not json"),
        Reply::Close,
    ];
    for (i, reply) in replies.iter().enumerate() {
        fake.script(i as i64, reply.clone());
    }
    let process = spawn_process(
        &[
            "--upstream-endpoint",
            &fake.url,
            "--upstream-timeout",
            "1s",
            "--log-format",
            log_format,
        ],
        &[
            ("RUST_LOG", "trace"),
            ("TENCENTCLOUD_SECRET_ID", FAKE_SECRET_ID),
            ("TENCENTCLOUD_SECRET_KEY", FAKE_SECRET_KEY),
            ("TENCENTCLOUD_SECURITY_TOKEN", token),
        ],
    );
    let client = client();
    let mut bodies = String::new();
    for i in 0..replies.len() {
        let mut response = client
            .get(format!("{}/tasks/{i}", process.base()))
            .send()
            .await
            .unwrap();
        bodies.push_str(&String::from_utf8_lossy(&response.body().await.unwrap()));
        for (name, value) in response.headers() {
            bodies.push_str(&format!("{name}: {value:?}\n"));
        }
    }
    assert!(fake.call_count() >= replies.len());
    // Log lines are written off the request path: wait for every request's access line.
    for _ in 0..300 {
        let access_lines = process
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("taskgate::access"))
            .count();
        if access_lines >= replies.len() {
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let log = process.log_text();
    assert!(
        log.matches("taskgate::access").count() >= replies.len(),
        "{log}"
    );
    assert!(
        log.contains("upstream rejected taskgate's credentials"),
        "auth failure logged as error"
    );
    for secret in [FAKE_SECRET_KEY, token] {
        assert!(!log.contains(secret), "secret in log:\n{log}");
        assert!(!bodies.contains(secret), "secret in a response");
    }
}
