//! What a row expects (`expect = [...]`, `ignore = [...]` in
//! scenarios.toml): the types the matcher runs on, and their validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::error::{ConfigError, Place};

/// Events that decide a verdict. Everything else QEMU sends is recorded in
/// the transcript only.
pub const WATCHED_EVENTS: &[&str] = &[
    "GUEST_PANICKED",
    "GUEST_CRASHLOADED",
    "GUEST_PVSHUTDOWN",
    "WATCHDOG",
    "SHUTDOWN",
    "RESET",
    "POWERDOWN",
    "STOP",
    "RESUME",
    "SUSPEND",
    "WAKEUP",
];

/// Expected payload value: a recursive subset of the actual JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    Bool(bool),
    Int(i64),
    /// A string; it also matches a JSON integer when it spells that integer in
    /// decimal or `0x` hex (TOML has no integers above `i64::MAX`).
    Str(String),
    Array(Vec<Expected>),
    Table(BTreeMap<String, Expected>),
}

impl Expected {
    pub fn from_toml(v: &toml::Value) -> Result<Expected, String> {
        Ok(match v {
            toml::Value::Boolean(b) => Expected::Bool(*b),
            toml::Value::Integer(i) => Expected::Int(*i),
            toml::Value::String(s) => Expected::Str(s.clone()),
            toml::Value::Array(a) => Expected::Array(a.iter().map(Expected::from_toml).collect::<Result<_, _>>()?),
            toml::Value::Table(t) => Expected::Table(
                t.iter().map(|(k, v)| Ok((k.clone(), Expected::from_toml(v)?))).collect::<Result<_, String>>()?,
            ),
            toml::Value::Float(f) => {
                return Err(format!(
                    "float {f} cannot be matched exactly (QMP event payloads carry integers; write an integer or a \"0x…\" string)"
                ));
            }
            toml::Value::Datetime(d) => {
                return Err(format!("datetime {d} is not a QMP value"));
            }
        })
    }

    /// Does this expectation require the field at `path` (dot-separated keys)?
    fn requires(&self, path: &str) -> bool {
        let mut e = self;
        path.split('.').all(|k| match e {
            Expected::Table(t) => t.get(k).map(|x| e = x).is_some(),
            _ => false,
        })
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Bool(b) => write!(f, "{b}"),
            Expected::Int(i) => write!(f, "{i}"),
            Expected::Str(s) => write!(f, "{s:?}"),
            Expected::Array(a) => {
                write!(f, "[")?;
                for (i, e) in a.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{e}")?;
                }
                write!(f, "]")
            }
            Expected::Table(t) => {
                write!(f, "{{")?;
                for (i, (k, v)) in t.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// One entry of a scenario's `expect` list.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectEntry {
    pub event: String,
    pub data: Option<Expected>,
    pub min: u32,
    pub max: u32,
    /// Payload fields (dot-separated paths, e.g. `info`) that must not be
    /// present.
    pub absent: Vec<String>,
}

impl ExpectEntry {
    /// Exactly one `event`, any payload.
    pub fn new(event: &str) -> Self {
        ExpectEntry { event: event.to_string(), data: None, min: 1, max: 1, absent: Vec::new() }
    }
}

impl fmt::Display for ExpectEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.event)?;
        if let Some(d) = &self.data {
            write!(f, "{d}")?;
        }
        if !self.absent.is_empty() {
            write!(f, " without {}", self.absent.join(", "))?;
        }
        match (self.min, self.max) {
            (1, 1) => Ok(()),
            (0, 1) => write!(f, " (optional)"),
            (a, b) if a == b => write!(f, " ×{a}"),
            (a, b) => write!(f, " ×{a}..{b}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDef {
    event: String,
    data: Option<toml::Value>,
    min: Option<u32>,
    max: Option<u32>,
    optional: Option<bool>,
    #[serde(default)]
    absent: Vec<String>,
}

/// The fix for an event name that is not watched.
pub fn watched_fix() -> String {
    format!("use one of the watched events: {}", WATCHED_EVENTS.join(", "))
}

/// Validates a row's `expect` list (`row` is the scenario's place); the
/// valid entries are returned, the errors pushed to `errors`.
pub fn validate_expect(row: &Place, defs: Vec<toml::Value>, errors: &mut Vec<ConfigError>) -> Vec<ExpectEntry> {
    let mut expect = Vec::new();
    for (i, e) in defs.into_iter().enumerate() {
        let at = row.within(format!("field `expect` entry {}", i + 1));
        match validate_entry(&at, e) {
            Ok(entry) => expect.push(entry),
            Err(mut e) => errors.append(&mut e),
        }
    }
    expect
}

fn validate_entry(at: &Place, value: toml::Value) -> Result<ExpectEntry, Vec<ConfigError>> {
    let d: ExpectDef = at
        .deserialize(
            value,
            "write { event = \"NAME\", data = { ... }, min = N, max = N, optional = BOOL } (only `event` is required)",
        )
        .map_err(|e| vec![e])?;
    if !WATCHED_EVENTS.contains(&d.event.as_str()) {
        return Err(vec![at.error(format!("unknown or unwatched event `{}`", d.event), watched_fix())]);
    }
    if d.optional.is_some() && d.min.is_some() {
        return Err(vec![at.error("both `optional` and `min` are set", "keep one (optional = true is min = 0)")]);
    }
    let min = match (d.optional, d.min) {
        (Some(true), _) => 0,
        (_, Some(m)) => m,
        _ => 1,
    };
    let max = d.max.unwrap_or(min.max(1));
    if max == 0 || max < min {
        return Err(vec![
            at.error(format!("min = {min}, max = {max} can never match"), "use 0 <= min <= max and max >= 1"),
        ]);
    }
    let data = match d.data.as_ref().map(|v| {
        if v.is_table() {
            Expected::from_toml(v)
        } else {
            Err("`data` must be a table of expected payload fields".to_string())
        }
    }) {
        None => None,
        Some(Ok(x)) => Some(x),
        Some(Err(m)) => return Err(vec![at.field("data", m, "write data = { field = value, ... }")]),
    };
    let mut errors = Vec::new();
    for p in &d.absent {
        if p.split('.').any(str::is_empty) {
            errors.push(at.field(
                "absent",
                format!("\"{p}\" is not a payload field"),
                "name fields of the event's data, dot-separated inside tables, e.g. absent = [\"info\"]",
            ));
        } else if data.as_ref().is_some_and(|d| d.requires(p)) {
            errors.push(at.field(
                "absent",
                format!("\"{p}\" is also required by `data`, so the entry can never match"),
                "remove it from `data` or from `absent`",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ExpectEntry { event: d.event, data, min, max, absent: d.absent })
}

/// Validates a row's `ignore` list against its `expect` entries.
pub fn validate_ignore(row: &Place, ignore: &[String], expect: &[ExpectEntry], errors: &mut Vec<ConfigError>) {
    for ev in ignore {
        if !WATCHED_EVENTS.contains(&ev.as_str()) {
            errors.push(row.field(
                "ignore",
                format!("unknown or unwatched event `{ev}` (unwatched events are ignored anyway)"),
                watched_fix(),
            ));
        } else if expect.iter().any(|e| &e.event == ev) {
            errors.push(row.field(
                "ignore",
                format!("`{ev}` is both expected and ignored"),
                format!("remove `{ev}` from `ignore` or from `expect`"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(entry: &str) -> Result<Vec<ExpectEntry>, String> {
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("e = {entry}")).unwrap()["e"].clone();
        let mut errors = Vec::new();
        let v = validate_expect(&Place::new("s.toml").within("scenario `x`"), vec![value], &mut errors);
        if errors.is_empty() { Ok(v) } else { Err(crate::error::join(&errors)) }
    }

    #[test]
    fn entries_and_their_errors() {
        let e = &check(r#"{ event = "RESET", min = 1, max = 2 }"#).unwrap()[0];
        assert_eq!((e.min, e.max, e.to_string().as_str()), (1, 2, "RESET ×1..2"));
        assert_eq!(check(r#"{ event = "STOP", optional = true }"#).unwrap()[0].to_string(), "STOP (optional)");
        let e = check(r#"{ event = "STOP", optional = true, min = 1 }"#).unwrap_err();
        assert_eq!(
            e,
            "s.toml: scenario `x`: field `expect` entry 1: both `optional` and `min` are set\n  \
             fix: keep one (optional = true is min = 0)"
        );
        let e = check(r#"{ event = "STOP", data = 1 }"#).unwrap_err();
        assert!(e.contains("entry 1: field `data`: `data` must be a table"), "{e}");
        let e = check(r#"{ event = "STOPP" }"#).unwrap_err();
        assert!(e.contains("unknown or unwatched event `STOPP`") && e.contains("fix: use one of the watched"), "{e}");
        let mut errors = Vec::new();
        validate_ignore(&Place::new("s.toml"), &["STOP".into(), "X".into()], &[ExpectEntry::new("STOP")], &mut errors);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].to_string().contains("`STOP` is both expected and ignored"), "{}", errors[0]);
    }
}
