//! The QMP message reader (`xtask::qmp::Reader`: line splitting, JSON,
//! `Message::classify`, `QmpEvent::from_json`) fed arbitrary bytes in
//! arbitrary chunks.
//!
//! Input: four bytes that pick the chunk size and small limits (so the
//! fuzzer reaches the long-line and flood paths), then the stream QEMU would
//! send. Checked: the same bytes give the same messages and errors however
//! they are chunked; errors are short single lines; no more events than
//! the limit get through; complete lines split like `take_line`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtask::qmp::{self, Limits, Message, Reader};

/// The Debug text of every message, or the error, until a fatal one.
fn read_all<'a>(limits: Limits, chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<String>, usize) {
    let mut reader = Reader::new(limits);
    let mut out = Vec::new();
    for chunk in chunks {
        reader.push(chunk);
        loop {
            match reader.next_message() {
                Ok(Some((_, Ok(message)))) => {
                    match &message {
                        Message::Event(ev) => {
                            let _ = ev.short();
                        }
                        Message::Greeting(v) => {
                            let _ = qmp::greeting_version(v);
                        }
                        _ => {}
                    }
                    out.push(format!("{message:?}"));
                }
                Ok(Some((_, Err(e)))) => out.push(checked_error(e)),
                Ok(None) => break,
                Err(e) => {
                    out.push(checked_error(e));
                    return (out, reader.events());
                }
            }
        }
    }
    (out, reader.events())
}

fn checked_error(e: anyhow::Error) -> String {
    let text = format!("error: {e:#}");
    assert!(text.len() < 700, "an error of {} bytes: {text}", text.len());
    assert!(!text.chars().any(char::is_control), "control characters in {text:?}");
    text
}

fuzz_target!(|data: &[u8]| {
    let Some((&[chunk, line, event, count], stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let limits = Limits {
        max_line: 8 + usize::from(line) * 4,
        max_event: 8 + usize::from(event) * 4,
        max_events: 1 + usize::from(count & 0x0f),
        max_event_bytes: 32 + usize::from(count >> 4) * 64,
    };
    let (whole, events) = read_all(limits, std::iter::once(stream));
    let delivered = whole.iter().filter(|m| m.starts_with("Event(")).count();
    assert!(delivered <= limits.max_events && events <= limits.max_events + 1, "{delivered} events");
    let (chunked, _) = read_all(limits, stream.chunks(1 + usize::from(chunk % 31)));
    assert_eq!(whole, chunked, "chunking changed what was read");

    // With the default limits every complete line comes out as take_line
    // splits it (blank ones skipped).
    let mut reader = Reader::default();
    reader.push(stream);
    let mut buf = stream.to_vec();
    while let Some(line) = qmp::take_line(&mut buf) {
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.trim().is_empty() {
            continue;
        }
        assert_eq!(reader.next_line().expect("no limit is near").as_deref(), Some(text.as_str()));
    }
    assert_eq!(reader.next_line().expect("no limit is near"), None);
});
