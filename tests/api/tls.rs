//! The HTTPS path, tested rather than assumed: a loopback fake served over TLS with a self-signed
//! certificate, trusted through TASKGATE_UPSTREAM_CA_FILE; and refused when not trusted.

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fake_upstream::FakeUpstream;
use crate::helpers::{metric_value, spawn_app_with};

struct TlsFake {
    fake: FakeUpstream,
    ca_file: std::path::PathBuf,
}

fn tls_fake(name: &str) -> TlsFake {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    tls_fake_with(name, certified.cert, certified.signing_key)
}

/// A fake whose own certificate is a CA (`CA:TRUE`), as a hand-made self-signed one often is.
fn tls_fake_with_a_ca_as_its_certificate(name: &str) -> TlsFake {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    tls_fake_with(name, cert, key)
}

fn tls_fake_with(name: &str, cert: rcgen::Certificate, signing_key: rcgen::KeyPair) -> TlsFake {
    let certified = rcgen::CertifiedKey { cert, signing_key };
    let ca_file = std::env::temp_dir().join(format!(
        "taskgate-test-ca-{name}-{}.pem",
        std::process::id()
    ));
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(certified.cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        )),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    TlsFake {
        fake: FakeUpstream::start_with_tls(Some(acceptor)),
        ca_file,
    }
}

#[actix_rt::test]
async fn a_lookup_over_https_with_a_trusted_private_ca() {
    let TlsFake { fake, ca_file } = tls_fake("trusted");
    assert!(fake.url.starts_with("https://"));
    let ca = ca_file.to_str().unwrap().to_string();
    let app = spawn_app_with(fake, &["--upstream-ca-file", &ca]).await;

    let answer = app.task(77).await;

    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["status"], "succeeded");
    assert_eq!(app.fake.calls()[0].signature_error, None);
    let _ = std::fs::remove_file(ca_file);
}

#[actix_rt::test]
async fn an_untrusted_certificate_is_refused() {
    let TlsFake { fake, ca_file } = tls_fake("untrusted");
    let app = spawn_app_with(fake, &[]).await;

    let answer = app.task(78).await;

    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.json()["type"],
        "urn:taskgate:problem:upstream-unreachable"
    );
    assert_eq!(
        app.fake.call_count(),
        0,
        "no request crossed an unverified connection"
    );
    let _ = std::fs::remove_file(ca_file);
}

#[actix_rt::test]
async fn a_certificate_failure_is_not_retried() {
    // rustls refuses a CA certificate served as the end entity (CaUsedAsEndEntity), even when
    // it is the one trusted: an answer that no retry can change.
    let TlsFake { fake, ca_file } = tls_fake_with_a_ca_as_its_certificate("ca-as-leaf");
    let ca = ca_file.to_str().unwrap().to_string();
    let app = spawn_app_with(fake, &["--upstream-ca-file", &ca]).await;

    let answer = app.task(79).await;

    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.json()["type"],
        "urn:taskgate:problem:upstream-unreachable"
    );
    assert_eq!(app.fake.call_count(), 0);
    assert_eq!(app.fake.connections(), 1, "one handshake, no retry");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"taskgate_upstream_calls_total{code="none",outcome="tls"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "taskgate_upstream_retries_total"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"taskgate_circuit_breaker_state{state="closed"}"#
        ),
        Some(1.0)
    );
    let _ = std::fs::remove_file(ca_file);
}
