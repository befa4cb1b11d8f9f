//! The signer against the known-answer vectors made by the official Tencent SDK's own code
//! (`tests/data/tc3_vectors.json`, a copy of shared/vectors), every intermediate value of every
//! vector, and Tencent's published documentation example.

use serde_json::Value;
use taskgate::request_body;
use taskgate::signing::*;
use taskgate::Credentials;
use taskgate::FlowId;

fn vectors() -> Value {
    let text = include_str!("data/tc3_vectors.json");
    serde_json::from_str(text).expect("the vector file is JSON")
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is a string"))
}

fn check_steps(name: &str, input: &Value, expected: &Value) {
    let body = s(input, "body").as_bytes();
    let service = input["service"].as_str().unwrap_or("ssm");
    let timestamp = input["timestamp"].as_i64().unwrap();

    let payload_hash = hashed_request_payload(body);
    if let Some(want) = expected["hashed_request_payload"].as_str() {
        assert_eq!(payload_hash, want, "{name}: hashed payload");
    }
    let canonical = canonical_request(s(input, "content_type"), s(input, "host"), &payload_hash);
    assert_eq!(
        canonical,
        s(expected, "canonical_request"),
        "{name}: canonical request"
    );
    let date = utc_date(timestamp);
    assert_eq!(date, s(expected, "date"), "{name}: date");
    let scope = credential_scope(&date, service);
    if let Some(want) = expected["credential_scope"].as_str() {
        assert_eq!(scope, want, "{name}: credential scope");
    }
    let to_sign = string_to_sign(timestamp, &scope, &canonical);
    assert_eq!(
        to_sign,
        s(expected, "string_to_sign"),
        "{name}: string to sign"
    );
    if let Some(want) = expected["hashed_canonical_request"].as_str() {
        assert!(to_sign.ends_with(want), "{name}: hashed canonical request");
    }
    let keys = derive_signing_key(s(input, "secret_key"), &date, service);
    if let Some(derived) = expected.get("derived_keys_hex") {
        assert_eq!(
            hex_encode(&keys.k_date),
            s(derived, "k_date"),
            "{name}: k_date"
        );
        assert_eq!(
            hex_encode(&keys.k_service),
            s(derived, "k_service"),
            "{name}: k_service"
        );
        assert_eq!(
            hex_encode(&keys.k_signing),
            s(derived, "k_signing"),
            "{name}: k_signing"
        );
    }
    let signature = calculate_signature(&keys.k_signing, &to_sign);
    assert_eq!(signature, s(expected, "signature"), "{name}: signature");
    let authorization = authorization_header(s(input, "secret_id"), &scope, &signature);
    assert_eq!(
        authorization,
        s(expected, "authorization"),
        "{name}: authorization"
    );

    // The composed entry point agrees with the steps.
    let credentials = Credentials::from_parts(
        Some(s(input, "secret_id")),
        Some(s(input, "secret_key")),
        None,
    )
    .unwrap();
    let signed = sign(
        &credentials,
        &SigningInput {
            service,
            host: s(input, "host"),
            content_type: s(input, "content_type"),
            timestamp,
            body,
        },
    );
    assert_eq!(
        signed.authorization,
        s(expected, "authorization"),
        "{name}: sign()"
    );
}

#[test]
fn every_sdk_vector_at_every_step() {
    let all = vectors();
    let list = all["vectors"].as_array().unwrap();
    assert_eq!(list.len(), 15, "the file holds 15 vectors");
    for vector in list {
        check_steps(s(vector, "name"), &vector["input"], &vector["expected"]);
    }
}

#[test]
fn tencents_published_example() {
    let all = vectors();
    let example = &all["published_doc_example"];
    check_steps(
        "published_doc_example",
        &example["input"],
        &example["expected"],
    );
}

#[test]
fn the_sdk_sent_exactly_the_headers_we_sign_and_the_body_we_hash() {
    // The wire capture shows the SDK signs Content-Type and Host as sent.
    for vector in vectors()["vectors"].as_array().unwrap() {
        let input = &vector["input"];
        let wire = &vector["expected"]["wire"];
        let headers = wire["headers"].as_array().unwrap();
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
                .map(|h| h[1].as_str().unwrap().to_string())
        };
        assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
        assert_eq!(get("Host").as_deref(), Some(s(input, "host")));
        assert_eq!(wire["body"].as_str(), Some(s(input, "body")));
    }
}

#[test]
fn our_body_is_compact_json_of_the_exact_integer() {
    for id in [0, 1, 43_414, i64::MAX] {
        let body = request_body(FlowId::new(id).unwrap());
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["FlowID"].as_i64(), Some(id));
        assert_eq!(body, format!("{{\"FlowID\":{id}}}").into_bytes());
    }
}
