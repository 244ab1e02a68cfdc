//! A small QMP client over a unix socket that QEMU connects to
//! (`-chardev socket,server=off`): line framing, greeting, commands with
//! `id` correlation, events, deadlines on every read and a full transcript.

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::util::{unix_micros, unix_secs_f64};

/// What one connection may bring in before the reader refuses it. Bad
/// input never costs more than these: a garbage line is quoted in an error
/// message cut to [`MAX_QUOTED`] characters, and a flood of events (which the
/// runner keeps in memory and in `result.json`) ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest single message, in bytes (QEMU's answers to `query-qmp-schema`
    /// are a few hundred KiB; its events under 1 KiB).
    pub max_line: usize,
    /// Longest single event, in bytes.
    pub max_event: usize,
    /// Most events per connection (a whole watchdog row sees a few dozen).
    pub max_events: usize,
    /// Most bytes of events per connection.
    pub max_event_bytes: usize,
}

impl Limits {
    pub const DEFAULT: Limits =
        Limits { max_line: 16 << 20, max_event: 64 << 10, max_events: 2000, max_event_bytes: 1 << 20 };
}

/// Longest piece of a bad message quoted in an error, in characters.
pub const MAX_QUOTED: usize = 200;

/// Most bytes written to one `qmp.jsonl` transcript; later messages are
/// counted in a last note.
pub const MAX_TRANSCRIPT_BYTES: usize = 8 << 20;
/// Longest non-JSON line stored in the transcript, in characters.
const MAX_TRANSCRIPT_GARBAGE: usize = 4096;

/// `bytes` for an error message, in double quotes: at most about `max`
/// bytes of it (invalid UTF-8 replaced; quotes, backslashes and control
/// characters escaped, so a terminal or a log shows it as one line), then
/// how much was cut.
pub fn quote(bytes: &[u8], max: usize) -> String {
    let (text, cut) = escape(bytes, max, true);
    format!("\"{text}\"{cut}")
}

/// [`quote`] without the quotes, for text QEMU meant as prose (an error's
/// `desc`).
pub fn clip(bytes: &[u8], max: usize) -> String {
    let (text, cut) = escape(bytes, max, false);
    text + &cut
}

fn escape(bytes: &[u8], max: usize, quotes: bool) -> (String, String) {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut shown = 0;
    for c in text.chars() {
        if out.len() >= max {
            break;
        }
        match c {
            '"' | '\\' if quotes => out.extend(['\\', c]),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
        shown += c.len_utf8();
    }
    let cut = if shown < text.len() { format!("… ({} bytes in all)", bytes.len()) } else { String::new() };
    (out, cut)
}

/// One QMP event as received.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QmpEvent {
    pub event: String,
    /// `data` member, `Null` when absent.
    pub data: Value,
    /// QEMU's timestamp (host realtime) in µs since the epoch.
    pub timestamp_us: Option<i128>,
}

impl QmpEvent {
    /// Parses an event message; `None` if `v` is not an event.
    pub fn from_json(v: &Value) -> Option<QmpEvent> {
        let name = v.get("event")?.as_str()?.to_string();
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let timestamp_us = v.get("timestamp").and_then(|t| {
            let s = t.get("seconds")?.as_i64()?;
            let us = t.get("microseconds")?.as_i64()?;
            Some(i128::from(s) * 1_000_000 + i128::from(us))
        });
        Some(QmpEvent { event: name, data, timestamp_us })
    }

    /// Compact form for tables: `GUEST_PANICKED(pause)`, `SHUTDOWN(guest-panic)`.
    pub fn short(&self) -> String {
        let detail = self.data.get("action").or_else(|| self.data.get("reason")).and_then(|v| v.as_str());
        match detail {
            Some(d) => format!("{}({d})", self.event),
            None => self.event.clone(),
        }
    }
}

/// What one QMP message is.
#[derive(Debug)]
pub enum Message {
    Greeting(Value),
    Event(QmpEvent),
    Return { id: Option<Value>, value: Value },
    Error { id: Option<Value>, class: String, desc: String },
    Other(Value),
}

impl Message {
    pub fn classify(v: Value) -> Message {
        if v.get("QMP").is_some() {
            return Message::Greeting(v);
        }
        if let Some(ev) = QmpEvent::from_json(&v) {
            return Message::Event(ev);
        }
        let id = v.get("id").cloned();
        if let Some(r) = v.get("return") {
            return Message::Return { id, value: r.clone() };
        }
        if let Some(e) = v.get("error") {
            let class = e.get("class").and_then(|c| c.as_str()).unwrap_or("GenericError").to_string();
            let desc = e.get("desc").and_then(|c| c.as_str()).unwrap_or("(no description)").to_string();
            return Message::Error { id, class, desc };
        }
        Message::Other(v)
    }
}

/// QEMU's version from the greeting (`QMP.version.qemu`).
pub fn greeting_version(v: &Value) -> Option<crate::util::Version> {
    let q = v.get("QMP")?.get("version")?.get("qemu")?;
    let n = |k: &str| q.get(k).and_then(|x| x.as_u64()).map(|x| x as u32);
    Some(crate::util::Version::new(n("major")?, n("minor")?, n("micro")?))
}

/// The receiving half of a QMP connection without the socket: bytes in,
/// messages out, with every [`Limits`] enforced. The same bytes give the
/// same messages and errors however they are split into chunks.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
    limits: Limits,
    events: usize,
    event_bytes: usize,
    /// Set by an error the stream cannot recover from (a line too long, a
    /// flood): every later call returns it again.
    failed: Option<String>,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new(Limits::DEFAULT)
    }
}

impl Reader {
    pub fn new(limits: Limits) -> Reader {
        Reader { buf: Vec::new(), scanned: 0, limits, events: 0, event_bytes: 0, failed: None }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received that do not yet form a whole line.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Events handed out so far.
    pub fn events(&self) -> usize {
        self.events
    }

    /// The next non-blank line (lossy UTF-8, without its line end), `Ok(None)`
    /// while none is complete, or the error of a line over the limit.
    pub fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(e) = &self.failed {
                bail!("{e}");
            }
            let end = match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(p) => self.scanned + p,
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.limits.max_line {
                        self.fail_long_line();
                        continue;
                    }
                    return Ok(None);
                }
            };
            if end > self.limits.max_line {
                self.fail_long_line();
                continue;
            }
            let line = take_line(&mut self.buf).unwrap_or_default();
            self.scanned = 0;
            let text = String::from_utf8_lossy(&line).into_owned();
            if !text.trim().is_empty() {
                return Ok(Some(text));
            }
        }
    }

    fn fail_long_line(&mut self) {
        // The line has at least max_line + 1 bytes however it arrived.
        let shown = self.buf.len().min(MAX_QUOTED).min(self.limits.max_line + 1);
        self.failed = Some(format!(
            "QEMU sent a QMP message longer than {} bytes (starting {}); stopped reading QMP",
            self.limits.max_line,
            quote(&self.buf[..shown], MAX_QUOTED)
        ));
        self.buf = Vec::new();
        self.scanned = 0;
    }

    /// Parses one line from [`Reader::next_line`]: JSON, then what kind of
    /// message. Events count against the flood limits.
    pub fn parse(&mut self, text: &str) -> Result<Message> {
        if let Some(e) = &self.failed {
            bail!("{e}");
        }
        let v: Value = serde_json::from_str(text).map_err(|e| {
            anyhow!("QEMU sent a QMP line that is not JSON ({e}): {}", quote(text.as_bytes(), MAX_QUOTED))
        })?;
        let msg = Message::classify(v);
        if let Message::Event(ev) = &msg {
            if text.len() > self.limits.max_event {
                bail!(
                    "QEMU sent a {} event of {} bytes (the limit is {}): {}",
                    quote(ev.event.as_bytes(), 64),
                    text.len(),
                    self.limits.max_event,
                    quote(text.as_bytes(), MAX_QUOTED)
                );
            }
            self.events += 1;
            self.event_bytes += text.len();
            if self.events > self.limits.max_events || self.event_bytes > self.limits.max_event_bytes {
                let e = format!(
                    "QMP event flood: QEMU sent more than {} events or {} bytes of them; the first {} were kept, \
                     the rest of the connection was not read",
                    self.limits.max_events,
                    self.limits.max_event_bytes,
                    self.events - 1
                );
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                bail!("{e}");
            }
        }
        Ok(msg)
    }

    /// [`Reader::next_line`] then [`Reader::parse`]; `Ok(None)` while no
    /// whole line is there. The line's text comes along for the transcript.
    pub fn next_message(&mut self) -> Result<Option<(String, Result<Message>)>> {
        let Some(text) = self.next_line()? else {
            return Ok(None);
        };
        let msg = self.parse(&text);
        Ok(Some((text, msg)))
    }
}

/// Splits complete `\n`-terminated lines off the front of `buf`.
pub fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let pos = buf.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=pos).collect();
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Some(line)
}

/// Append-only JSON-lines transcript of both directions, at most
/// [`MAX_TRANSCRIPT_BYTES`].
pub struct Transcript {
    out: BufWriter<File>,
    origin: SystemTime,
    written: usize,
    /// Messages not written because the transcript was full.
    dropped: u64,
}

impl Transcript {
    pub fn create(path: &Path, origin: SystemTime) -> Result<Transcript> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Transcript { out: BufWriter::new(f), origin, written: 0, dropped: 0 })
    }

    /// Records one message. `raw` must be one JSON text; anything else is
    /// stored as a string (cut to 4096 characters, control bytes escaped).
    pub fn record(&mut self, dir: &str, raw: &str) {
        if self.written >= MAX_TRANSCRIPT_BYTES {
            self.dropped += 1;
            return;
        }
        let now = SystemTime::now();
        let msg: Box<serde_json::value::RawValue> = serde_json::from_str(raw).unwrap_or_else(|_| {
            let text = if raw.len() > MAX_TRANSCRIPT_GARBAGE {
                quote(raw.as_bytes(), MAX_TRANSCRIPT_GARBAGE)
            } else {
                raw.to_string()
            };
            serde_json::value::to_raw_value(&text).expect("a string serializes")
        });
        let rel_ms = (unix_micros(now) - unix_micros(self.origin)) as f64 / 1000.0;
        let line = format!(
            "{{\"t\":{:.6},\"rel_ms\":{rel_ms:.3},\"dir\":\"{dir}\",\"msg\":{}}}",
            unix_secs_f64(now),
            msg.get()
        );
        self.written += line.len() + 1;
        let _ = writeln!(self.out, "{line}");
        if self.written >= MAX_TRANSCRIPT_BYTES {
            let _ = writeln!(
                self.out,
                "{{\"dir\":\"note\",\"msg\":\"transcript full ({MAX_TRANSCRIPT_BYTES} bytes): later messages are not recorded\"}}"
            );
        }
        let _ = self.out.flush();
    }

    pub fn note(&mut self, text: &str) {
        self.record("note", &serde_json::to_string(text).expect("string"));
    }
}

/// Result of waiting for a message.
pub enum Polled {
    Msg(Message),
    /// Nothing arrived before the deadline.
    Timeout,
    /// QEMU closed the socket.
    Eof,
}

/// The QMP connection.
pub struct Qmp {
    stream: UnixStream,
    reader: Reader,
    next_id: u64,
    eof: bool,
    transcript: Option<Transcript>,
    /// Set after SHUTDOWN or EOF: QEMU may hang at exit if it gets a command
    /// while shutting down, so nothing more is sent.
    pub no_more_commands: bool,
}

/// Waits for QEMU to connect to `listener`. `alive` is called between
/// attempts and returns an error if QEMU died before connecting.
pub fn accept(listener: &UnixListener, deadline: Instant, mut alive: impl FnMut() -> Result<()>) -> Result<UnixStream> {
    use std::os::fd::AsRawFd;
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                alive()?;
                let now = Instant::now();
                if now >= deadline {
                    bail!("QEMU did not connect to the QMP socket in time");
                }
                // Sleep until a connection is pending, waking now and then
                // to notice a QEMU that died before connecting.
                let slice = (deadline - now).min(Duration::from_millis(20));
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as libc::c_int) };
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("accepting the QMP connection"),
        }
    }
}

impl Qmp {
    pub fn new(stream: UnixStream, transcript: Option<Transcript>) -> Qmp {
        Qmp { stream, reader: Reader::default(), next_id: 1, eof: false, transcript, no_more_commands: false }
    }

    pub fn is_eof(&self) -> bool {
        self.eof
    }

    pub fn note(&mut self, text: &str) {
        if let Some(t) = &mut self.transcript {
            t.note(text);
        }
    }

    /// Waits until `deadline` for the next message.
    pub fn poll(&mut self, deadline: Instant) -> Result<Polled> {
        loop {
            if let Some((text, msg)) = self.reader.next_message()? {
                if let Some(t) = &mut self.transcript {
                    t.record("recv", &text);
                }
                return msg.map(Polled::Msg);
            }
            if self.eof {
                return Ok(Polled::Eof);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Polled::Timeout);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait))?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    self.no_more_commands = true;
                    if let Some(t) = &mut self.transcript {
                        t.note("EOF");
                    }
                }
                Ok(n) => self.reader.push(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    self.eof = true;
                    self.no_more_commands = true;
                }
                Err(e) => return Err(e).context("reading from QMP"),
            }
        }
    }

    /// Reads the greeting (the first message).
    pub fn greeting(&mut self, deadline: Instant) -> Result<Value> {
        match self.poll(deadline)? {
            Polled::Msg(Message::Greeting(v)) => Ok(v),
            Polled::Msg(m) => {
                bail!("expected the QMP greeting, got {}", quote(format!("{m:?}").as_bytes(), MAX_QUOTED))
            }
            Polled::Timeout => bail!("no QMP greeting before the deadline"),
            Polled::Eof => bail!("QEMU closed QMP before its greeting"),
        }
    }

    /// Sends a command without waiting; returns its id.
    pub fn send(&mut self, execute: &str, arguments: Option<&Value>) -> Result<u64> {
        if self.no_more_commands {
            bail!("refusing to send `{execute}`: QEMU is shutting down or gone");
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = serde_json::json!({ "execute": execute, "id": id });
        if let Some(a) = arguments {
            cmd["arguments"] = a.clone();
        }
        let text = cmd.to_string();
        if let Some(t) = &mut self.transcript {
            t.record("send", &text);
        }
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\r\n");
        self.stream.write_all(&bytes).with_context(|| format!("sending `{execute}`"))?;
        Ok(id)
    }

    /// Sends a command and waits for its answer; events that arrive meanwhile
    /// go to `on_event`. An `error` answer becomes an `Err` with QEMU's text.
    pub fn execute(
        &mut self,
        execute: &str,
        arguments: Option<&Value>,
        deadline: Instant,
        on_event: &mut dyn FnMut(&mut Qmp, QmpEvent),
    ) -> Result<Value> {
        let id = self.send(execute, arguments)?;
        let want = Value::from(id);
        loop {
            match self.poll(deadline)? {
                Polled::Msg(Message::Event(ev)) => on_event(self, ev),
                Polled::Msg(Message::Return { id: Some(i), value }) if i == want => {
                    return Ok(value);
                }
                Polled::Msg(Message::Error { id: Some(i), class, desc }) if i == want => {
                    return Err(anyhow!(
                        "QMP `{execute}` failed: {}: {}",
                        clip(class.as_bytes(), 64),
                        clip(desc.as_bytes(), MAX_QUOTED)
                    ));
                }
                Polled::Msg(_) => {}
                Polled::Timeout => bail!("no answer to QMP `{execute}` before the deadline"),
                Polled::Eof => bail!("QEMU closed QMP before answering `{execute}`"),
            }
        }
    }

    /// Reads (and hands out events) until EOF or `deadline`. Returns whether
    /// EOF was reached.
    pub fn drain_to_eof(&mut self, deadline: Instant, on_event: &mut dyn FnMut(&mut Qmp, QmpEvent)) -> bool {
        loop {
            match self.poll(deadline) {
                Ok(Polled::Msg(Message::Event(ev))) => on_event(self, ev),
                Ok(Polled::Msg(_)) => {}
                Ok(Polled::Eof) => return true,
                Ok(Polled::Timeout) | Err(_) => return self.eof,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn line_framing() {
        let mut buf = b"{\"a\":1}\r\n{\"b\"".to_vec();
        assert_eq!(take_line(&mut buf).unwrap(), b"{\"a\":1}");
        assert_eq!(take_line(&mut buf), None);
        buf.extend_from_slice(b":2}\n\n");
        assert_eq!(take_line(&mut buf).unwrap(), b"{\"b\":2}");
        assert_eq!(take_line(&mut buf).unwrap(), b"");
        assert!(buf.is_empty());
    }

    #[test]
    fn classify_messages() {
        let g = json!({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "x"}, "capabilities": ["oob"]}});
        assert_eq!(greeting_version(&g), Some(crate::util::Version::new(10, 0, 2)));
        assert!(matches!(Message::classify(g), Message::Greeting(_)));

        let ev: Value = serde_json::from_str(
            r#"{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "GUEST_PANICKED", "data": {"action": "pause", "new-field": 1}}"#,
        )
        .unwrap();
        match Message::classify(ev) {
            Message::Event(e) => {
                assert_eq!(e.event, "GUEST_PANICKED");
                assert_eq!(e.timestamp_us, Some(1_700_000_000_123_456));
                assert_eq!(e.short(), "GUEST_PANICKED(pause)");
            }
            m => panic!("{m:?}"),
        }
        let stop =
            QmpEvent::from_json(&json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}})).unwrap();
        assert_eq!(stop.data, Value::Null);
        assert_eq!(stop.short(), "STOP");
        let sd = QmpEvent::from_json(&json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-panic"}}))
            .unwrap();
        assert_eq!(sd.short(), "SHUTDOWN(guest-panic)");

        match Message::classify(json!({"return": {}, "id": 3})) {
            Message::Return { id, .. } => assert_eq!(id, Some(json!(3))),
            m => panic!("{m:?}"),
        }
        match Message::classify(json!({"error": {"class": "GenericError", "desc": "nope"}, "id": 4})) {
            Message::Error { class, desc, .. } => assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "nope")),
            m => panic!("{m:?}"),
        }
        assert!(matches!(Message::classify(json!({"whatever": 1})), Message::Other(_)));
    }

    #[test]
    fn u64_payload_parses_exactly() {
        let v: Value = serde_json::from_str(
            r#"{"event":"GUEST_PANICKED","data":{"info":{"arg1":18446744073709551615,"arg2":9007199254740993}}}"#,
        )
        .unwrap();
        let e = QmpEvent::from_json(&v).unwrap();
        assert_eq!(e.data["info"]["arg1"].as_u64(), Some(u64::MAX));
        assert_eq!(e.data["info"]["arg2"].as_u64(), Some(9_007_199_254_740_993));
    }

    /// A scripted fake QEMU on a socket pair: greeting, an interleaved event,
    /// an error answer, then EOF.
    #[test]
    fn execute_with_fake_server() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{BufRead, BufReader};
            server.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 1, \"major\": 9}}, \"capabilities\": []}}\r\n").unwrap();
            let mut r = BufReader::new(server.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let cmd: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(cmd["execute"], "qmp_capabilities");
            let id = cmd["id"].clone();
            // Split one message across two writes, and put an event first.
            server
                .write_all(
                    b"{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n{\"return\"",
                )
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            server.write_all(format!(": {{}}, \"id\": {id}}}\r\n").as_bytes()).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            let cmd: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(cmd["arguments"]["panic"], "pause");
            server
                .write_all(
                    format!(
                        "{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"bad\"}}, \"id\": {}}}\r\n",
                        cmd["id"]
                    )
                    .as_bytes(),
                )
                .unwrap();
        });
        let mut q = Qmp::new(client, None);
        let deadline = Instant::now() + Duration::from_secs(5);
        let g = q.greeting(deadline).unwrap();
        assert_eq!(greeting_version(&g), Some(crate::util::Version::new(9, 1, 0)));
        let mut events = Vec::new();
        q.execute("qmp_capabilities", None, deadline, &mut |_, e| events.push(e.event)).unwrap();
        assert_eq!(events, vec!["RESUME"]);
        let err = q.execute("set-action", Some(&json!({"panic": "pause"})), deadline, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("GenericError: bad"), "{err}");
        t.join().unwrap();
        assert!(q.drain_to_eof(deadline, &mut |_, _| {}));
        assert!(q.send("cont", None).is_err());
    }

    /// Every message (Debug text) or error a reader yields for `chunks`.
    fn read_all(limits: Limits, chunks: &[&[u8]]) -> Vec<String> {
        let mut r = Reader::new(limits);
        let mut out = Vec::new();
        for c in chunks {
            r.push(c);
            loop {
                match r.next_message() {
                    Ok(Some((_, Ok(m)))) => out.push(format!("{m:?}")),
                    Ok(Some((_, Err(e)))) => out.push(format!("error: {e}")),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(format!("fatal: {e}"));
                        return out;
                    }
                }
            }
        }
        out
    }

    const SMALL: Limits = Limits { max_line: 64, max_event: 60, max_events: 3, max_event_bytes: 150 };

    #[test]
    fn a_garbage_line_gives_a_short_one_line_error() {
        let mut line = vec![b'x'; 1 << 20];
        line[10] = 0x1b;
        line[20] = b'\r';
        line[30] = 0xff;
        line.push(b'\n');
        let mut r = Reader::default();
        r.push(&line);
        let (text, msg) = r.next_message().unwrap().unwrap();
        assert_eq!(text.len(), (1 << 20) + 2, "the transcript gets the whole (lossy) line");
        let e = msg.unwrap_err().to_string();
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.contains("\\u{1b}") && e.contains("\\r") && e.contains('\u{fffd}'), "{e}");
        assert!(e.contains(&format!("({} bytes in all)", (1 << 20) + 2)), "{e}");
        // Not fatal: the next line is read.
        r.push(b"{\"return\": {}}\n");
        assert!(matches!(r.next_message().unwrap().unwrap().1.unwrap(), Message::Return { .. }));
    }

    #[test]
    fn quote_escapes_and_cuts() {
        assert_eq!(quote(b"a\"b\\c\n", 100), r#""a\"b\\c\n""#);
        assert_eq!(clip(b"a\"b\tc", 100), r#"a"b\tc"#);
        assert_eq!(quote(b"abcdef", 3), "\"abc\"… (6 bytes in all)");
        assert_eq!(quote(b"", 3), "\"\"");
    }

    #[test]
    fn any_chunking_gives_the_same_messages() {
        let stream: &[u8] =
            b"{\"QMP\": {}}\r\n\n  \n{\"event\": \"STOP\"}\r\nnot json\n{\"return\": 1, \"id\": 2}\n{\"ev";
        let whole = read_all(Limits::DEFAULT, &[stream]);
        assert_eq!(whole.len(), 4, "{whole:?}");
        assert!(whole[2].starts_with("error: QEMU sent a QMP line that is not JSON"), "{whole:?}");
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(read_all(Limits::DEFAULT, &bytes), whole);
        let threes: Vec<&[u8]> = stream.chunks(3).collect();
        assert_eq!(read_all(Limits::DEFAULT, &threes), whole);
    }

    #[test]
    fn a_line_over_the_limit_ends_the_stream_however_it_arrives() {
        let long = [b"{\"return\": 1}\n".as_slice(), &[b'y'; 100], b"\n{\"return\": 2}\n"].concat();
        let whole = read_all(SMALL, &[&long]);
        let bytes: Vec<&[u8]> = long.chunks(1).collect();
        assert_eq!(read_all(SMALL, &bytes), whole);
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert!(whole[1].starts_with("fatal: QEMU sent a QMP message longer than 64 bytes"), "{whole:?}");
        // The error is sticky, and the buffer was dropped.
        let mut r = Reader::new(SMALL);
        r.push(&long[15..]);
        assert!(r.next_message().is_err());
        r.push(b"{\"return\": 3}\n");
        assert!(r.next_message().is_err());
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn an_event_flood_is_cut_and_says_so() {
        let ev: &[u8] = b"{\"event\": \"RESET\"}\n";
        let flood = ev.repeat(10);
        let out = read_all(SMALL, &[&flood]);
        assert_eq!(out.len(), 5, "{out:?}");
        assert!(out[..3].iter().all(|m| m.starts_with("Event")), "{out:?}");
        assert!(out[3].contains("QMP event flood") && out[3].contains("the first 3 were kept"), "{out:?}");
        assert!(out[4].starts_with("fatal: QMP event flood"), "{out:?}");
        // By bytes: 150 bytes of events are three of these (50 bytes each).
        let big: &[u8] = b"{\"event\": \"RESET\", \"data\": \"xxxxxxxxxxxxxxxxxxxx\"}\n";
        let limits = Limits { max_events: 100, ..SMALL };
        let out = read_all(limits, &[&big.repeat(10)]);
        assert_eq!(out.iter().filter(|m| m.starts_with("Event")).count(), 3, "{out:?}");
        assert!(out.last().unwrap().contains("QMP event flood"), "{out:?}");
        // One oversized event.
        let huge = format!("{{\"event\": \"X\", \"data\": \"{}\"}}\n", "z".repeat(60));
        let out = read_all(Limits::DEFAULT, &[]);
        assert!(out.is_empty());
        let out = read_all(Limits { max_line: 1000, ..SMALL }, &[huge.as_bytes()]);
        assert!(out[0].contains("event of 86 bytes (the limit is 60)"), "{out:?}");
    }

    #[test]
    fn the_transcript_stops_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.jsonl");
        let mut t = Transcript::create(&path, SystemTime::now()).unwrap();
        let msg = format!("{{\"return\": \"{}\"}}", "r".repeat(100_000));
        for _ in 0..100 {
            t.record("recv", &msg);
        }
        t.record("recv", "not json \u{1b}");
        drop(t);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < MAX_TRANSCRIPT_BYTES + 2 * msg.len(), "{}", text.len());
        assert!(text.len() >= MAX_TRANSCRIPT_BYTES);
        assert!(text.lines().last().unwrap().contains("transcript full"));
        // A garbage line is stored cut, as a JSON string.
        let mut t = Transcript::create(&path, SystemTime::now()).unwrap();
        t.record("recv", &"g".repeat(10_000));
        drop(t);
        let line: Value = serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        let stored = line["msg"].as_str().unwrap();
        assert!(stored.len() < 4200 && stored.ends_with("(10000 bytes in all)"), "{}", stored.len());
    }

    /// QEMU flooding events: poll hands out the first ones, then fails the
    /// connection with the flood error.
    #[test]
    fn poll_fails_on_an_event_flood() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let ev = b"{\"event\": \"WATCHDOG\", \"data\": {\"action\": \"none\"}}\r\n".repeat(2500);
            let _ = server.write_all(&ev);
        });
        let mut q = Qmp::new(client, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = 0;
        let err = loop {
            match q.poll(deadline) {
                Ok(Polled::Msg(Message::Event(_))) => events += 1,
                Ok(_) => panic!("unexpected poll result"),
                Err(e) => break e.to_string(),
            }
        };
        assert_eq!(events, Limits::DEFAULT.max_events);
        assert!(err.contains("QMP event flood"), "{err}");
        assert!(q.poll(deadline).is_err(), "the flood error is sticky");
        drop(q);
        t.join().unwrap();
    }

    #[test]
    fn poll_times_out() {
        let (client, _server) = UnixStream::pair().unwrap();
        let mut q = Qmp::new(client, None);
        let start = Instant::now();
        assert!(matches!(q.poll(start + Duration::from_millis(30)).unwrap(), Polled::Timeout));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
