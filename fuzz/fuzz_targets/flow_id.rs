//! Fuzzes the flow id parser: it never panics, and it accepts exactly the decimal integers from
//! 0 to 2^63-1 written with digits only. Anything it refuses is answered 400 before the lookup
//! (and so before any upstream call); anything it accepts is the number the text says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskgate::FlowId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match FlowId::parse(text) {
        Ok(id) => {
            assert!(digits_only, "accepted {text:?}");
            assert_eq!(text.parse::<i64>().ok(), Some(id.get()));
        }
        Err(_) => assert!(!digits_only || text.parse::<i64>().is_err(), "refused {text:?}"),
    }
});
