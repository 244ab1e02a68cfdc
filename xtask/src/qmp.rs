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

/// Largest single QMP message we accept (QEMU's are far smaller).
const MAX_LINE: usize = 16 << 20;

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

/// Splits complete `\n`-terminated lines off the front of `buf`.
pub fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let pos = buf.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=pos).collect();
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Some(line)
}

/// Append-only JSON-lines transcript of both directions.
pub struct Transcript {
    out: BufWriter<File>,
    origin: SystemTime,
}

impl Transcript {
    pub fn create(path: &Path, origin: SystemTime) -> Result<Transcript> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Transcript { out: BufWriter::new(f), origin })
    }

    /// Records one message. `raw` must be one JSON text; anything else is
    /// stored as a string.
    pub fn record(&mut self, dir: &str, raw: &str) {
        let now = SystemTime::now();
        let msg: Box<serde_json::value::RawValue> =
            serde_json::from_str(raw).unwrap_or_else(|_| serde_json::value::to_raw_value(&raw).expect("string"));
        let rel_ms = (unix_micros(now) - unix_micros(self.origin)) as f64 / 1000.0;
        let line = format!(
            "{{\"t\":{:.6},\"rel_ms\":{rel_ms:.3},\"dir\":\"{dir}\",\"msg\":{}}}",
            unix_secs_f64(now),
            msg.get()
        );
        let _ = writeln!(self.out, "{line}");
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
    buf: Vec<u8>,
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
        Qmp { stream, buf: Vec::new(), next_id: 1, eof: false, transcript, no_more_commands: false }
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
            if let Some(line) = take_line(&mut self.buf) {
                let text = String::from_utf8_lossy(&line).into_owned();
                if text.trim().is_empty() {
                    continue;
                }
                if let Some(t) = &mut self.transcript {
                    t.record("recv", &text);
                }
                let v: Value =
                    serde_json::from_str(&text).with_context(|| format!("QEMU sent invalid JSON: {text}"))?;
                return Ok(Polled::Msg(Message::classify(v)));
            }
            if self.eof {
                return Ok(Polled::Eof);
            }
            if self.buf.len() > MAX_LINE {
                bail!("QMP message longer than {MAX_LINE} bytes");
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
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
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
            Polled::Msg(m) => bail!("expected the QMP greeting, got {m:?}"),
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
                    return Err(anyhow!("QMP `{execute}` failed: {class}: {desc}"));
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

    #[test]
    fn poll_times_out() {
        let (client, _server) = UnixStream::pair().unwrap();
        let mut q = Qmp::new(client, None);
        let start = Instant::now();
        assert!(matches!(q.poll(start + Duration::from_millis(30)).unwrap(), Polled::Timeout));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
