//! Fuzzes the upstream answer parser with any status and body: it never panics, and it reads a
//! task only from an HTTP 200 whose body is JSON with `Response.TaskStatus` 0, 1 or 2, a
//! `Description` string and a `RequestId` string, and no `Response.Error`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskgate::FlowId;
use taskgate::parse_answer;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, rest @ ..] => (100 + u16::from_le_bytes([*a, *b]) % 500, rest),
        _ => return,
    };
    let flow_id = FlowId::new(7).expect("7 is a flow id");
    if let Ok(task) = parse_answer(flow_id, status, body) {
        assert_eq!(status, 200);
        let value: serde_json::Value = serde_json::from_slice(body).expect("a success is JSON");
        let response = &value["Response"];
        assert!(response.get("Error").is_none());
        assert_eq!(response["TaskStatus"].as_i64(), Some(i64::from(task.status.code())));
        assert_eq!(response["RequestId"].as_str(), Some(task.request_id.as_str()));
        assert_eq!(response["Description"].as_str(), Some(task.description.as_str()));
    }
});
