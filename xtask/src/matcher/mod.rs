//! Matching observed QMP events against a scenario's `expect` list.
//!
//! The expect list is a sequence of entries, each matching `min..=max`
//! consecutive events. It is simulated as a small NFA so that ambiguous lists
//! (`RESET ×1..2` followed by `RESET`) are handled exactly. The entries
//! themselves and their validation: [`expect`].

use serde_json::Value;

pub mod expect;

pub use expect::{ExpectEntry, Expected, WATCHED_EVENTS};

/// Parses an integer spelled in decimal (optionally negative) or `0x` hex.
fn parse_int_str(s: &str) -> Option<i128> {
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        return u64::from_str_radix(h, 16).ok().map(i128::from);
    }
    if t.is_empty() {
        return None;
    }
    t.parse::<i128>().ok()
}

/// The exact integer value of a JSON number, if it is an integer.
fn json_int(n: &serde_json::Number) -> Option<i128> {
    n.as_u64().map(i128::from).or_else(|| n.as_i64().map(i128::from))
}

/// Recursive subset match: every field of `expected` must be present in
/// `actual` with a matching value; extra actual fields are fine. Arrays must
/// have the same length and match element-wise. Integers compare exactly.
pub fn data_matches(expected: &Expected, actual: &Value) -> bool {
    match (expected, actual) {
        (Expected::Bool(e), Value::Bool(a)) => e == a,
        (Expected::Int(e), Value::Number(n)) => json_int(n) == Some(i128::from(*e)),
        (Expected::Str(e), Value::String(a)) => e == a,
        (Expected::Str(e), Value::Number(n)) => match (parse_int_str(e), json_int(n)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Expected::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(x, y)| data_matches(x, y)),
        (Expected::Table(e), Value::Object(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| data_matches(v, av))),
        _ => false,
    }
}

/// Is the field at `path` (dot-separated keys, e.g. `info` or `info.arg1`)
/// present in `data`?
pub fn has_path(data: &Value, path: &str) -> bool {
    let mut v = data;
    for key in path.split('.') {
        match v.get(key) {
            Some(x) => v = x,
            None => return false,
        }
    }
    true
}

/// Does one event (name + data, `Value::Null` when absent) match an entry?
pub fn entry_matches(entry: &ExpectEntry, name: &str, data: &Value) -> bool {
    entry.event == name
        && match &entry.data {
            None => true,
            Some(exp) => data_matches(exp, data),
        }
        && !entry.absent.iter().any(|p| has_path(data, p))
}

/// Verdict of the event sequence so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The events seen so far form a complete match.
    Complete,
    /// Not complete, but more events could still complete it. `waiting_for`
    /// lists what is still required (shortest way to completion).
    Incomplete { waiting_for: Vec<String> },
    /// Event number `index` (0-based among the matched events) can never be
    /// part of a match.
    Mismatch { index: usize, expected: Vec<String> },
}

/// NFA state: at entry `j` having consumed `c` events for it.
type State = (usize, u32);

fn closure(expect: &[ExpectEntry], states: Vec<State>) -> Vec<State> {
    let mut out: Vec<State> = Vec::new();
    let mut stack = states;
    while let Some(s) = stack.pop() {
        if out.contains(&s) {
            continue;
        }
        out.push(s);
        let (j, c) = s;
        if j < expect.len() && c >= expect[j].min {
            stack.push((j + 1, 0));
        }
    }
    out.sort();
    out
}

fn describe_required(expect: &[ExpectEntry], (j, c): State) -> Vec<String> {
    let mut v = Vec::new();
    for (k, e) in expect.iter().enumerate().skip(j) {
        let have = if k == j { c } else { 0 };
        if e.min > have {
            let mut entry = e.clone();
            entry.min -= have;
            entry.max = entry.min;
            v.push(entry.to_string());
        }
    }
    v
}

fn describe_next(expect: &[ExpectEntry], states: &[State]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for &(j, c) in states {
        if j < expect.len() && c < expect[j].max {
            let s = ExpectEntry { min: 1, max: 1, ..expect[j].clone() }.to_string();
            if !v.contains(&s) {
                v.push(s);
            }
        }
    }
    if states.iter().any(|&(j, _)| j == expect.len()) {
        v.push("no further event".into());
    }
    v
}

/// Evaluates `events` (name, data) against `expect`.
pub fn evaluate(expect: &[ExpectEntry], events: &[(&str, &Value)]) -> Progress {
    let mut states = closure(expect, vec![(0, 0)]);
    for (i, (name, data)) in events.iter().enumerate() {
        let next: Vec<State> = states
            .iter()
            .filter(|&&(j, c)| j < expect.len() && c < expect[j].max && entry_matches(&expect[j], name, data))
            .map(|&(j, c)| (j, c + 1))
            .collect();
        if next.is_empty() {
            return Progress::Mismatch { index: i, expected: describe_next(expect, &states) };
        }
        states = closure(expect, next);
    }
    if states.iter().any(|&(j, _)| j == expect.len()) {
        Progress::Complete
    } else {
        let best = states.iter().map(|&s| describe_required(expect, s)).min_by_key(|v| v.len()).unwrap_or_default();
        Progress::Incomplete { waiting_for: best }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn e(name: &str) -> ExpectEntry {
        ExpectEntry::new(name)
    }
    fn ed(name: &str, data: Expected) -> ExpectEntry {
        ExpectEntry { data: Some(data), ..ExpectEntry::new(name) }
    }
    fn table(pairs: &[(&str, Expected)]) -> Expected {
        Expected::Table(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }
    fn run(expect: &[ExpectEntry], evs: &[(&str, Value)]) -> Progress {
        let v: Vec<(&str, &Value)> = evs.iter().map(|(n, d)| (*n, d)).collect();
        evaluate(expect, &v)
    }

    #[test]
    fn u64_exact() {
        // 2^64 - 1 and 2^53 + 1: an f64 path would round these.
        let actual: Value = serde_json::from_str(r#"{"a": 18446744073709551615, "b": 9007199254740993}"#).unwrap();
        assert!(data_matches(&table(&[("a", Expected::Str("0xffffffffffffffff".into()))]), &actual));
        assert!(data_matches(&table(&[("a", Expected::Str("18446744073709551615".into()))]), &actual));
        assert!(!data_matches(&table(&[("a", Expected::Str("18446744073709551614".into()))]), &actual));
        assert!(data_matches(&table(&[("b", Expected::Int(9_007_199_254_740_993))]), &actual));
        assert!(!data_matches(&table(&[("b", Expected::Int(9_007_199_254_740_992))]), &actual));
        assert!(!data_matches(&table(&[("b", Expected::Str("0x1ffffffffffffff00".into()))]), &actual));
        // A string expectation does not match a different string.
        assert!(!data_matches(&Expected::Str("1".into()), &json!("01")));
        assert!(data_matches(&Expected::Str("-5".into()), &json!(-5)));
    }

    #[test]
    fn absent_fields() {
        let plain = json!({"action": "pause"});
        let hv = json!({"action": "pause", "info": {"type": "hyper-v", "arg1": 1}});
        let entry = |absent: &[&str]| ExpectEntry {
            absent: absent.iter().map(|s| s.to_string()).collect(),
            ..ed("GUEST_PANICKED", table(&[("action", Expected::Str("pause".into()))]))
        };
        assert!(entry_matches(&entry(&["info"]), "GUEST_PANICKED", &plain));
        assert!(!entry_matches(&entry(&["info"]), "GUEST_PANICKED", &hv));
        assert!(!entry_matches(&entry(&["info.arg1"]), "GUEST_PANICKED", &hv));
        assert!(entry_matches(&entry(&["info.arg2"]), "GUEST_PANICKED", &hv));
        assert!(entry_matches(&entry(&["info"]), "GUEST_PANICKED", &json!({"action": "pause", "x": null})));
        assert!(entry_matches(&ExpectEntry { absent: vec!["info".into()], ..e("STOP") }, "STOP", &Value::Null));
        assert_eq!(entry(&["info"]).to_string(), "GUEST_PANICKED{action: \"pause\"} without info");
        match run(&[entry(&["info"])], &[("GUEST_PANICKED", hv.clone())]) {
            Progress::Mismatch { expected, .. } => {
                assert_eq!(expected, ["GUEST_PANICKED{action: \"pause\"} without info"])
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn hyperv_payload_u64() {
        // The nested board's row: arg2 above i64::MAX (a "0x…" string in
        // TOML), arg5 above 2^53 (a TOML integer).
        let actual: Value = serde_json::from_str(
            r#"{"action":"pause","info":{"type":"hyper-v","arg1":30,"arg2":18446744073709551600,"arg3":131073,"arg4":0,"arg5":1311768467463790320}}"#,
        )
        .unwrap();
        let want = |arg2: &str, arg5: i64| {
            table(&[(
                "info",
                table(&[
                    ("type", Expected::Str("hyper-v".into())),
                    ("arg1", Expected::Int(0x1e)),
                    ("arg2", Expected::Str(arg2.into())),
                    ("arg3", Expected::Int(0x20001)),
                    ("arg4", Expected::Int(0)),
                    ("arg5", Expected::Int(arg5)),
                ]),
            )])
        };
        assert!(data_matches(&want("0xfffffffffffffff0", 0x1234_5678_9abc_def0), &actual));
        assert!(!data_matches(&want("0xfffffffffffffff1", 0x1234_5678_9abc_def0), &actual));
        assert!(!data_matches(&want("0xfffffffffffffff0", 0x1234_5678_9abc_def1), &actual));
    }

    #[test]
    fn subset_and_types() {
        let actual = json!({"action": "pause", "info": {"type": "hyper-v", "arg1": 1}, "x": [1, 2]});
        assert!(data_matches(&table(&[("action", Expected::Str("pause".into()))]), &actual));
        assert!(data_matches(&table(&[("info", table(&[("arg1", Expected::Int(1))]))]), &actual));
        assert!(!data_matches(&table(&[("missing", Expected::Bool(true))]), &actual));
        assert!(!data_matches(&table(&[("action", Expected::Int(1))]), &actual));
        assert!(data_matches(&table(&[("x", Expected::Array(vec![Expected::Int(1), Expected::Int(2)]))]), &actual));
        assert!(!data_matches(&table(&[("x", Expected::Array(vec![Expected::Int(1)]))]), &actual));
        assert!(!data_matches(&table(&[("a", Expected::Bool(true))]), &Value::Null));
    }

    #[test]
    fn exact_sequence() {
        let exp = [ed("GUEST_PANICKED", table(&[("action", Expected::Str("pause".into()))])), e("STOP")];
        assert_eq!(
            run(&exp, &[("GUEST_PANICKED", json!({"action": "pause"})), ("STOP", Value::Null)]),
            Progress::Complete
        );
        assert_eq!(
            run(&exp, &[("GUEST_PANICKED", json!({"action": "pause"}))]),
            Progress::Incomplete { waiting_for: vec!["STOP".into()] }
        );
        // Wrong data.
        assert!(matches!(
            run(&exp, &[("GUEST_PANICKED", json!({"action": "poweroff"}))]),
            Progress::Mismatch { index: 0, .. }
        ));
        // Wrong order.
        assert!(matches!(
            run(&exp, &[("STOP", Value::Null), ("GUEST_PANICKED", json!({"action": "pause"}))]),
            Progress::Mismatch { index: 0, .. }
        ));
        // Extra event after a complete match.
        match run(
            &exp,
            &[("GUEST_PANICKED", json!({"action": "pause"})), ("STOP", Value::Null), ("RESET", Value::Null)],
        ) {
            Progress::Mismatch { index, expected } => {
                assert_eq!(index, 2);
                assert_eq!(expected, vec!["no further event".to_string()]);
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn empty_expect() {
        assert_eq!(run(&[], &[]), Progress::Complete);
        assert!(matches!(run(&[], &[("STOP", Value::Null)]), Progress::Mismatch { index: 0, .. }));
    }

    #[test]
    fn min_max_counts() {
        let exp = [ExpectEntry { min: 1, max: 2, ..e("RESET") }, e("SHUTDOWN")];
        let r = ("RESET", Value::Null);
        let s = ("SHUTDOWN", Value::Null);
        assert_eq!(run(&exp, &[r.clone(), s.clone()]), Progress::Complete);
        assert_eq!(run(&exp, &[r.clone(), r.clone(), s.clone()]), Progress::Complete);
        assert!(matches!(run(&exp, &[r.clone(), r.clone(), r.clone()]), Progress::Mismatch { index: 2, .. }));
        assert!(matches!(run(&exp, std::slice::from_ref(&s)), Progress::Mismatch { index: 0, .. }));
        assert_eq!(run(&exp, &[]), Progress::Incomplete { waiting_for: vec!["RESET".into(), "SHUTDOWN".into()] });
    }

    #[test]
    fn optional_and_ambiguous() {
        // RESET ×1..2 then RESET: needs two or three RESETs in total.
        let exp = [ExpectEntry { min: 1, max: 2, ..e("RESET") }, e("RESET")];
        let r = ("RESET", Value::Null);
        assert_eq!(run(&exp, std::slice::from_ref(&r)), Progress::Incomplete { waiting_for: vec!["RESET".into()] });
        assert_eq!(run(&exp, &[r.clone(), r.clone()]), Progress::Complete);
        assert_eq!(run(&exp, &[r.clone(), r.clone(), r.clone()]), Progress::Complete);
        assert!(matches!(
            run(&exp, &[r.clone(), r.clone(), r.clone(), r.clone()]),
            Progress::Mismatch { index: 3, .. }
        ));

        let exp = [e("GUEST_PANICKED"), ExpectEntry { min: 0, ..e("STOP") }, e("SHUTDOWN")];
        let p = ("GUEST_PANICKED", Value::Null);
        assert_eq!(run(&exp, &[p.clone(), ("SHUTDOWN", Value::Null)]), Progress::Complete);
        assert_eq!(run(&exp, &[p.clone(), ("STOP", Value::Null), ("SHUTDOWN", Value::Null)]), Progress::Complete);
        assert!(matches!(
            run(&exp, &[p.clone(), ("STOP", Value::Null), ("STOP", Value::Null)]),
            Progress::Mismatch { index: 2, .. }
        ));
    }
}
