//! What the two `virsh` watchers print, and `virsh domstate --reason`, as
//! data: libvirt's own events under short names (`crashed:panicked`,
//! `watchdog:reset`, `reboot`), the QMP events libvirt passes through, and
//! the domain's state (`crashed:panicked`, `shutoff:destroyed`).
//!
//! Names are virsh's English words, lowercase, spaces as `-`: the lifecycle
//! event `Shutdown Finished after guest request` is
//! `shutdown:finished-after-guest-request`, the watchdog event `inject-nmi`
//! is `watchdog:inject-nmi`, any other event type is its virsh name
//! (`reboot`, `metadata-change`). virsh runs with `LC_ALL=C`, so the words do
//! not depend on the host's locale.

use serde_json::Value;

use crate::qmp::QmpEvent;

/// Lifecycle events and their details, as virsh names them
/// (`tools/virsh-domain-event.c`), normalized.
pub const LIFECYCLE: &[(&str, &[&str])] = &[
    ("defined", &["added", "updated", "renamed", "snapshot"]),
    ("undefined", &["removed", "renamed"]),
    ("started", &["booted", "migrated", "restored", "snapshot", "event-wakeup"]),
    (
        "suspended",
        &[
            "paused",
            "migrated",
            "i/o-error",
            "watchdog",
            "restored",
            "snapshot",
            "api-error",
            "post-copy",
            "post-copy-error",
        ],
    ),
    ("resumed", &["unpaused", "migrated", "snapshot", "post-copy", "post-copy-error"]),
    ("stopped", &["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "snapshot"]),
    ("shutdown", &["finished", "finished-after-guest-request", "finished-after-host-request"]),
    ("pmsuspended", &["memory", "disk"]),
    ("crashed", &["panicked", "crashloaded"]),
];

/// The watchdog event's actions.
pub const WATCHDOG_ACTIONS: &[&str] = &["none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi"];

/// The other event types of `virsh event --all`, named by their type alone.
pub const OTHER_EVENTS: &[&str] = &[
    "reboot",
    "rtc-change",
    "io-error",
    "graphics",
    "control-error",
    "block-job",
    "disk-change",
    "tray-change",
    "pm-wakeup",
    "pm-suspend",
    "balloon-change",
    "pm-suspend-disk",
    "device-removed",
    "block-job-2",
    "tunable",
    "agent-lifecycle",
    "device-added",
    "migration-iteration",
    "job-completed",
    "device-removal-failed",
    "metadata-change",
    "block-threshold",
    "memory-failure",
    "memory-device-size-change",
    "nic-mac-change",
];

/// Domain states and their reasons, as `virsh domstate --reason` names them
/// (`tools/virsh-domain-monitor.c`), normalized.
pub const STATES: &[(&str, &[&str])] = &[
    ("nostate", &["unknown"]),
    (
        "running",
        &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from-snapshot",
            "unpaused",
            "migration-canceled",
            "save-canceled",
            "event-wakeup",
            "crashed",
            "post-copy",
            "post-copy-failed",
        ],
    ),
    ("idle", &["unknown"]),
    (
        "paused",
        &[
            "unknown",
            "user",
            "migrating",
            "saving",
            "dumping",
            "i/o-error",
            "watchdog",
            "from-snapshot",
            "shutting-down",
            "creating-snapshot",
            "crashed",
            "starting-up",
            "post-copy",
            "post-copy-failed",
            "api-error",
        ],
    ),
    ("in-shutdown", &["unknown", "user"]),
    (
        "shutoff",
        &["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot", "daemon"],
    ),
    ("crashed", &["unknown", "panicked"]),
    ("pmsuspended", &["unknown"]),
];

/// The state of a transient domain that no longer exists (libvirt stopped
/// it; its last lifecycle event says why).
pub const GONE: &str = "gone";

/// Lowercase, spaces as `-`.
fn norm(words: &str) -> String {
    words.trim().to_ascii_lowercase().split_whitespace().collect::<Vec<_>>().join("-")
}

/// Why `name` is not an event `virsh event --all` can print (`None`: it is).
pub fn event_name_problem(name: &str) -> Option<String> {
    if let Some((kind, detail)) = name.split_once(':') {
        if kind == "watchdog" {
            return (!WATCHDOG_ACTIONS.contains(&detail))
                .then(|| format!("watchdog action `{detail}` (libvirt's are {})", WATCHDOG_ACTIONS.join(", ")));
        }
        return match LIFECYCLE.iter().find(|(e, _)| *e == kind) {
            None => Some(format!(
                "lifecycle event `{kind}` (libvirt's are {})",
                LIFECYCLE.iter().map(|(e, _)| *e).collect::<Vec<_>>().join(", ")
            )),
            Some((_, details)) if !details.contains(&detail) => {
                Some(format!("`{kind}` detail `{detail}` (libvirt's are {})", details.join(", ")))
            }
            Some(_) => None,
        };
    }
    (!OTHER_EVENTS.contains(&name)).then(|| {
        format!(
            "event `{name}`: write lifecycle events as EVENT:DETAIL (e.g. crashed:panicked), the watchdog's as \
             watchdog:ACTION, the others by their virsh name ({})",
            OTHER_EVENTS.join(", ")
        )
    })
}

/// Why `state` is not a state `virsh domstate --reason` can print, or
/// [`GONE`] (`None`: it is).
pub fn state_problem(state: &str) -> Option<String> {
    if state == GONE {
        return None;
    }
    let Some((s, reason)) = state.split_once(':') else {
        return Some(format!("`{state}` is not STATE:REASON (e.g. crashed:panicked) or \"{GONE}\""));
    };
    match STATES.iter().find(|(x, _)| *x == s) {
        None => Some(format!(
            "state `{s}` (libvirt's are {})",
            STATES.iter().map(|(x, _)| *x).collect::<Vec<_>>().join(", ")
        )),
        Some((_, reasons)) if !reasons.contains(&reason) => {
            Some(format!("`{s}` reason `{reason}` (libvirt's are {})", reasons.join(", ")))
        }
        Some(_) => None,
    }
}

/// One line of `virsh event --all --loop --timestamp`, or of
/// `virsh qemu-monitor-event --loop`, split up.
#[derive(Clone, Debug, PartialEq)]
pub struct EventLine {
    /// virsh's `--timestamp` prefix (when the host got it), if any.
    pub stamp: Option<String>,
    /// The event's type: `lifecycle`, `watchdog`, `reboot`, … (for a QMP
    /// event its name).
    pub kind: String,
    pub domain: String,
    /// What follows the domain (`Crashed Panicked`, `inject-nmi`, a QMP
    /// event's JSON), `""` when nothing does.
    pub detail: String,
    /// A QMP event's own timestamp (`at S.U`), in µs since the epoch.
    pub qmp_us: Option<i128>,
}

impl EventLine {
    /// The event's short name (see the module docs).
    pub fn name(&self) -> String {
        match self.kind.as_str() {
            "lifecycle" => match self.detail.split_once(' ') {
                Some((ev, detail)) => format!("{}:{}", norm(ev), norm(detail)),
                None => norm(&self.detail),
            },
            "watchdog" => format!("watchdog:{}", norm(&self.detail)),
            other => other.to_string(),
        }
    }

    /// The line as a QMP event (for `qemu-monitor-event` lines): its
    /// payload (`<null>`: none) and its own timestamp.
    pub fn qmp_event(&self) -> Option<QmpEvent> {
        let data = match self.detail.as_str() {
            "" | "<null>" => Value::Null,
            json => serde_json::from_str(json).ok()?,
        };
        Some(QmpEvent { event: self.kind.clone(), data, timestamp_us: self.qmp_us })
    }
}

/// Parses one line: `[<stamp>: ]event '<kind>' for domain '<name>'[: <detail>]`
/// (`virsh event`) or `[<stamp>: ]event <NAME> [at <s>.<us> ]for domain
/// '<name>': <detail>` (`virsh qemu-monitor-event`). `None`: not an event
/// line (virsh's `events received: N` at the end, a continuation line).
pub fn parse_line(line: &str) -> Option<EventLine> {
    let line = line.trim_end_matches(['\r', '\n']);
    let start = if line.starts_with("event ") { 0 } else { line.find(": event ")? + 2 };
    let stamp = (start > 0).then(|| line[..start - 2].to_string());
    let rest = &line[start + "event ".len()..];
    let (kind, rest) = if let Some(r) = rest.strip_prefix('\'') {
        let end = r.find('\'')?;
        (r[..end].to_string(), &r[end + 1..])
    } else {
        let end = rest.find(' ')?;
        (rest[..end].to_string(), &rest[end..])
    };
    let mut rest = rest.trim_start();
    let mut qmp_us = None;
    if let Some(r) = rest.strip_prefix("at ") {
        let end = r.find(' ')?;
        let (secs, micros) = r[..end].split_once('.')?;
        qmp_us = Some(secs.parse::<i128>().ok()? * 1_000_000 + micros.parse::<i128>().ok()?);
        rest = r[end..].trim_start();
    }
    let r = rest.strip_prefix("for domain '")?;
    // Domain names are ours (no quote inside); the detail may quote.
    let end = r.find('\'')?;
    let domain = r[..end].to_string();
    let detail = r[end + 1..].strip_prefix(':').unwrap_or(&r[end + 1..]).trim().to_string();
    Some(EventLine { stamp, kind, domain, detail, qmp_us })
}

/// `virsh domstate --reason` output (`crashed (panicked)`, `shut off
/// (destroyed)`) as `crashed:panicked`, `shutoff:destroyed`.
pub fn parse_domstate(text: &str) -> Option<String> {
    let text = text.trim();
    let (state, reason) = match text.split_once(" (") {
        Some((s, r)) => (s, r.strip_suffix(')')?),
        None => (text, "unknown"),
    };
    let state = match norm(state).as_str() {
        "shut-off" => "shutoff".to_string(),
        "no-state" => "nostate".to_string(),
        s => s.to_string(),
    };
    (!state.is_empty()).then(|| format!("{state}:{}", norm(reason)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_watchdog_lines() {
        let l = parse_line(
            "2026-11-30 04:40:46.612+0000: event 'lifecycle' for domain 'pvagent-1-2-x': Crashed Panicked\n",
        )
        .unwrap();
        assert_eq!(l.stamp.as_deref(), Some("2026-11-30 04:40:46.612+0000"));
        assert_eq!(
            (l.kind.as_str(), l.domain.as_str(), l.name().as_str()),
            ("lifecycle", "pvagent-1-2-x", "crashed:panicked")
        );
        let l = parse_line(
            "2026-11-30 04:40:50.016+0000: event 'lifecycle' for domain 'd': Shutdown Finished after guest request",
        )
        .unwrap();
        assert_eq!(l.name(), "shutdown:finished-after-guest-request");
        let l = parse_line("2026-11-30 04:41:06.277+0000: event 'watchdog' for domain 'd': inject-nmi").unwrap();
        assert_eq!(l.name(), "watchdog:inject-nmi");
        let l = parse_line("2026-11-30 04:44:12.365+0000: event 'reboot' for domain 'pvx-restart'").unwrap();
        assert_eq!((l.name().as_str(), l.detail.as_str()), ("reboot", ""));
        let l =
            parse_line("2026-11-30 04:41:05.283+0000: event 'metadata-change' for domain 'd': type title, uri <null>")
                .unwrap();
        assert_eq!((l.name().as_str(), l.detail.as_str()), ("metadata-change", "type title, uri <null>"));
        let l = parse_line("event 'lifecycle' for domain 'd': Suspended I/O Error").unwrap();
        assert_eq!((l.stamp.as_deref(), l.name().as_str()), (None, "suspended:i/o-error"));
        assert_eq!(parse_line("events received: 4"), None);
        assert_eq!(parse_line("\tcpu_shares: 1024"), None);
        assert_eq!(parse_line(""), None);
        for n in ["crashed:panicked", "watchdog:inject-nmi", "reboot", "shutdown:finished-after-guest-request"] {
            assert_eq!(event_name_problem(n), None, "{n}");
        }
        assert!(event_name_problem("crashed:exploded").unwrap().contains("panicked, crashloaded"));
        assert!(event_name_problem("watchdog:bite").unwrap().contains("inject-nmi"));
        assert!(event_name_problem("crash:panicked").unwrap().contains("lifecycle event `crash`"));
        assert!(event_name_problem("panicked").unwrap().contains("EVENT:DETAIL"));
    }

    #[test]
    fn qmp_passthrough_lines() {
        let l =
            parse_line("event GUEST_PANICKED at 1796013852.348863 for domain 'pvx': {\"action\":\"pause\"}").unwrap();
        let ev = l.qmp_event().unwrap();
        assert_eq!(ev.event, "GUEST_PANICKED");
        assert_eq!(ev.data, serde_json::json!({"action": "pause"}));
        assert_eq!(ev.timestamp_us, Some(1_796_013_852_348_863));
        let l = parse_line("event RESUME at 1796013852.000007 for domain 'pvx': <null>").unwrap();
        let ev = l.qmp_event().unwrap();
        assert_eq!((ev.data, ev.timestamp_us), (Value::Null, Some(1_796_013_852_000_007)));
        // With --timestamp virsh prints when it got the event instead of QEMU's time.
        let l = parse_line("2026-11-30 04:40:46.109+0000: event RESUME for domain 'p': <null>").unwrap();
        assert_eq!((l.kind.as_str(), l.qmp_us), ("RESUME", None));
        // A payload quoting a domain-like string stays whole.
        let l = parse_line("event X at 1.000001 for domain 'p': {\"a\":\"b 'c'\"}").unwrap();
        assert_eq!(l.qmp_event().unwrap().data, serde_json::json!({"a": "b 'c'"}));
        let l = parse_line("event X at 1.000001 for domain 'p': {broken").unwrap();
        assert!(l.qmp_event().is_none());
    }

    #[test]
    fn domain_states() {
        assert_eq!(parse_domstate("crashed (panicked)\n\n").as_deref(), Some("crashed:panicked"));
        assert_eq!(parse_domstate("shut off (destroyed)").as_deref(), Some("shutoff:destroyed"));
        assert_eq!(parse_domstate("paused (I/O error)").as_deref(), Some("paused:i/o-error"));
        assert_eq!(parse_domstate("running (unpaused)").as_deref(), Some("running:unpaused"));
        assert_eq!(parse_domstate("paused (starting up)").as_deref(), Some("paused:starting-up"));
        assert_eq!(parse_domstate("in shutdown (user)").as_deref(), Some("in-shutdown:user"));
        assert_eq!(parse_domstate("running").as_deref(), Some("running:unknown"));
        assert_eq!(parse_domstate(""), None);
        for s in ["crashed:panicked", "paused:watchdog", "running:crashed", GONE, "shutoff:daemon"] {
            assert_eq!(state_problem(s), None, "{s}");
        }
        assert!(state_problem("crashed").unwrap().contains("STATE:REASON"));
        assert!(state_problem("shut-off:destroyed").unwrap().contains("state `shut-off`"));
        assert!(state_problem("paused:nap").unwrap().contains("reason `nap`"));
    }
}
