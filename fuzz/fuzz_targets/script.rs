//! `pvagent::script::parse_bytes` on arbitrary bytes: it returns, never
//! panics, and what it returns is consistent:
//! - an `Err` points inside the input (at most one past its end), and names
//!   the step its offset falls in, unless it concerns the whole script (step
//!   0: too long, not ASCII);
//! - an `Ok` script has 1..=MAX_STEPS steps, each a non-empty piece of the
//!   input of at most MAX_STEP_LEN bytes, and parses the same again from
//!   its steps joined with other whitespace around the `;`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvagent::script::{self, ErrorKind, MAX_SCRIPT_LEN, MAX_STEP_LEN, MAX_STEPS};

fuzz_target!(|data: &[u8]| {
    match script::parse_bytes(data) {
        Ok(steps) => {
            assert!(data.len() <= MAX_SCRIPT_LEN && data.is_ascii());
            assert!((1..=MAX_STEPS).contains(&steps.len()), "{} steps", steps.len());
            let input = data.as_ptr_range();
            for step in &steps {
                assert!(!step.text.is_empty() && step.text.len() <= MAX_STEP_LEN, "{:?}", step.text);
                let text = step.text.as_bytes().as_ptr_range();
                assert!(input.start <= text.start && text.end <= input.end, "a step's text is not in the input");
                assert_eq!(step.text.trim_matches([' ', '\t', '\n', '\r']), step.text, "not trimmed");
            }
            let joined = steps.iter().map(|s| s.text).collect::<Vec<_>>().join(" \t;\n ");
            if joined.len() <= MAX_SCRIPT_LEN {
                let again = script::parse(&joined)
                    .unwrap_or_else(|e| panic!("{joined:?} (the steps of an accepted script) is refused: {e}"));
                assert_eq!(again, steps, "{joined:?}");
            }
        }
        Err(e) => {
            assert!(e.offset <= data.len(), "offset {} in {} bytes: {e}", e.offset, data.len());
            if e.step == 0 {
                assert!(matches!(e.kind, ErrorKind::ScriptTooLong { .. } | ErrorKind::NotAscii), "{e:?}");
            } else {
                // The step named is the one the offset falls in.
                let separators = data[..e.offset].iter().filter(|&&b| b == b';').count();
                assert_eq!(e.step, separators + 1, "{e:?}");
            }
            // The log line must render whatever the error holds.
            let text = e.to_string();
            assert!(text.starts_with("script error: "));
        }
    }
});
