//! When the firmware hands over to the agent, seen from the host: the guest's
//! serial port on a unix socket that QEMU connects to (`-chardev
//! socket,server=off`), read as it arrives, and the host time (wall clock,
//! the clock of QMP's timestamps) of the read that completes the agent's
//! first `pvagent:` line start. QEMU writes each byte the guest puts in the
//! UART to the socket at once, so the read follows the guest's write by
//! microseconds. Firmware output before it (OVMF's console) does not count.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::qemu_cmd::Chardev;
use crate::util::unix_micros;

/// What starts the agent's first line.
pub const MARKER: &[u8] = b"pvagent:";

/// What the serial port carried.
#[derive(Debug, Default)]
pub struct Seen {
    /// Host wall clock (µs since the epoch) of the read that completed the
    /// first [`MARKER`] at a line's start.
    pub first_agent_line_us: Option<i128>,
    /// Everything read.
    pub bytes: Vec<u8>,
}

/// A serial port being watched (see the module).
pub struct SerialWatch {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Seen>>,
}

/// Where [`MARKER`] first starts a line in `bytes`, looking from `from`.
pub fn marker_at(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(MARKER.len() - 1))
        .find(|&i| bytes[i..].starts_with(MARKER) && (i == 0 || bytes[i - 1] == b'\n'))
}

impl SerialWatch {
    /// Listens on `path` (removed first if it exists) and reads what the
    /// first connection sends until [`SerialWatch::finish`].
    pub fn listen(path: &Path) -> Result<SerialWatch> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock && !stopped.load(Ordering::Relaxed) => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => return seen,
                }
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_millis(20)));
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let now = unix_micros(SystemTime::now());
                        let from = seen.bytes.len().saturating_sub(MARKER.len());
                        seen.bytes.extend_from_slice(&buf[..n]);
                        if seen.first_agent_line_us.is_none() && marker_at(&seen.bytes, from).is_some() {
                            seen.first_agent_line_us = Some(now);
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if stopped.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            seen
        });
        Ok(SerialWatch { path: path.to_path_buf(), stop, thread: Some(thread) })
    }

    /// The chardev QEMU connects to.
    pub fn chardev(&self) -> Chardev {
        Chardev::Socket(self.path.clone())
    }

    /// Stops reading and returns what was seen.
    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        seen
    }
}

impl Drop for SerialWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn the_marker_starts_a_line() {
        assert_eq!(marker_at(b"pvagent: boot 1", 0), Some(0));
        assert_eq!(marker_at(b"\x1b[2J BdsDxe: x\r\npvagent: boot 1", 0), Some(16));
        assert_eq!(marker_at(b"say pvagent: no", 0), None);
        assert_eq!(marker_at(b"\npvagent", 0), None, "not complete yet");
        assert_eq!(marker_at(b"\npvagent:\npvagent:", 2), Some(10));
    }

    #[test]
    fn the_first_agent_line_is_timed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("serial.sock");
        let watch = SerialWatch::listen(&path).unwrap();
        assert_eq!(watch.chardev(), Chardev::Socket(path.clone()));
        let mut guest = UnixStream::connect(&path).unwrap();
        guest.write_all(b"firmware says hello\r\npvag").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let before = unix_micros(SystemTime::now());
        guest.write_all(b"ent: boot 1\r\nD:0102\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let seen = watch.finish();
        let at = seen.first_agent_line_us.unwrap();
        assert!(at >= before, "timed at the read that completed the marker");
        assert!(seen.bytes.ends_with(b"D:0102\r\n"));
        assert!(!path.exists());
        // Nobody connects: nothing seen, no hang.
        let watch = SerialWatch::listen(&path).unwrap();
        let seen = watch.finish();
        assert!(seen.first_agent_line_us.is_none() && seen.bytes.is_empty());
    }
}
