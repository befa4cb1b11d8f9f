//! Property tests of the two parsers that read untrusted input: the flow id from callers and the
//! answer from the upstream. Neither may panic, and each accepts exactly what it should.

use proptest::prelude::*;
use taskgate::parse_answer;
use taskgate::{FlowId, TaskStatus};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_non_negative_i64_round_trips(value in 0i64..=i64::MAX) {
        prop_assert_eq!(FlowId::parse(&value.to_string()).unwrap().get(), value);
    }

    #[test]
    fn leading_zeros_are_still_the_same_number(value in 0i64..=1_000_000, zeros in 1usize..5) {
        let text = format!("{}{value}", "0".repeat(zeros));
        prop_assert_eq!(FlowId::parse(&text).unwrap().get(), value);
    }

    #[test]
    fn any_text_is_accepted_only_if_it_is_digits_within_range(text in "\\PC{0,30}") {
        match FlowId::parse(&text) {
            Ok(id) => {
                prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(text.parse::<i64>().ok(), Some(id.get()));
            }
            Err(_) => prop_assert!(
                text.is_empty()
                    || !text.bytes().all(|b| b.is_ascii_digit())
                    || text.parse::<i64>().is_err()
            ),
        }
    }

    #[test]
    fn signs_spaces_and_exponents_are_refused(value in 0i64..1_000, decoration in prop::sample::select(vec!["+", "-", " ", "e1", "0x", ".0", "\t", "_"])) {
        let before = format!("{decoration}{value}");
        let after = format!("{value}{decoration}");
        prop_assert!(FlowId::parse(&before).is_err());
        prop_assert!(FlowId::parse(&after).is_err());
    }

    #[test]
    fn the_answer_parser_never_panics_on_any_bytes(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_answer(FlowId::new(1).unwrap(), status, &body);
    }

    #[test]
    fn well_formed_answers_are_read_exactly(
        code in 0i64..=2,
        description in "[ -~]{0,40}",
        request_id in "[a-f0-9-]{1,36}",
    ) {
        let body = serde_json::json!({"Response": {
            "TaskStatus": code, "Description": description, "RequestId": request_id
        }});
        let task = parse_answer(FlowId::new(9).unwrap(), 200, body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(task.status, TaskStatus::from_code(code).unwrap());
        prop_assert_eq!(task.description, description);
        prop_assert_eq!(task.request_id, request_id);
    }

    #[test]
    fn unknown_statuses_and_non_200_lines_are_never_a_success(
        code in prop::num::i64::ANY.prop_filter("not 0..=2", |c| !(0..=2).contains(c)),
        status in prop::sample::select(vec![201u16, 204, 301, 400, 404, 500, 502, 503]),
    ) {
        let unknown = serde_json::json!({"Response": {"TaskStatus": code, "Description": "", "RequestId": "r"}});
        prop_assert!(parse_answer(FlowId::new(1).unwrap(), 200, unknown.to_string().as_bytes()).is_err());
        let fine = serde_json::json!({"Response": {"TaskStatus": 1, "Description": "", "RequestId": "r"}});
        prop_assert!(parse_answer(FlowId::new(1).unwrap(), status, fine.to_string().as_bytes()).is_err());
    }

    #[test]
    fn error_bodies_win_whatever_the_status(code in "[A-Za-z]{1,20}(\\.[A-Za-z]{1,20})?", status in 100u16..600) {
        let body = serde_json::json!({"Response": {"Error": {"Code": code, "Message": "m"}, "RequestId": "r"}});
        let error = parse_answer(FlowId::new(1).unwrap(), status, body.to_string().as_bytes()).unwrap_err();
        prop_assert!(matches!(error, taskgate::UpstreamError::Api(ref a) if a.code == code));
    }
}
