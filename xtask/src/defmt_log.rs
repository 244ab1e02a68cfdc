//! Decoding the agent's log into text. On x86_64 COM1 carries raw defmt
//! frames (rzcobs); s390x's SCLP console is an ASCII console, so there each
//! frame travels as text lines `D:<hex>` (other lines are kept as text).

use std::path::Path;

use anyhow::{Context, Result, bail};
use defmt_decoder::{DecodeError, Locations, Table};

/// The defmt table (and locations, when the image has debug info) of an image.
pub struct LogTable {
    table: Table,
    locations: Option<Locations>,
}

impl LogTable {
    pub fn from_elf(elf: &[u8]) -> Result<LogTable> {
        let table = Table::parse(elf)
            .context("reading the defmt table")?
            .context("the image has no .defmt section (is it a defmt build?)")?;
        let locations = table.get_locations(elf).ok().filter(|l: &Locations| !l.is_empty());
        Ok(LogTable { table, locations })
    }

    pub fn from_file(path: &Path) -> Result<LogTable> {
        let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        LogTable::from_elf(&elf).with_context(|| format!("decoding {}", path.display()))
    }

    /// Decodes a complete log into lines `LEVEL message`. A truncated last
    /// frame and malformed frames are reported as lines of their own.
    pub fn decode(&self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut dec = self.table.new_stream_decoder();
        let mut raw = Vec::new();
        for chunk in split_log(bytes) {
            match chunk {
                Chunk::Frames(frames) => {
                    raw.extend_from_slice(&frames);
                    dec.received(&frames);
                    self.drain(&mut *dec, &mut lines);
                }
                Chunk::Text(text) => lines.push(format!("TEXT  {text}")),
            }
        }
        // rzcobs frames end with 0x00; bytes after the last one are a frame
        // cut off (e.g. QEMU was killed mid-write).
        let tail = raw.iter().rev().take_while(|&&b| b != 0).count();
        if tail > 0 {
            lines.push(format!("<truncated defmt frame at end of log: {tail} bytes>"));
        }
        lines
    }

    fn drain(&self, dec: &mut dyn defmt_decoder::StreamDecoder, lines: &mut Vec<String>) {
        loop {
            match dec.decode() {
                Ok(frame) => {
                    let level =
                        frame.level().map(|l| l.as_str().to_ascii_uppercase()).unwrap_or_else(|| "PRINT".into());
                    let mut line = String::new();
                    if let Some(ts) = frame.display_timestamp() {
                        line.push_str(&format!("{ts} "));
                    }
                    line.push_str(&format!("{level:<5} {}", frame.display_message()));
                    if let Some(loc) = self.locations.as_ref().and_then(|l| l.get(&frame.index())) {
                        line.push_str(&format!("  ({}:{})", loc.file.display(), loc.line));
                    }
                    lines.push(line);
                }
                Err(DecodeError::UnexpectedEof) => break,
                Err(DecodeError::Malformed) => {
                    lines.push("<malformed defmt frame skipped>".into());
                }
            }
        }
    }
}

/// A piece of the log: frame bytes, or a line of plain text.
#[derive(Debug, PartialEq)]
enum Chunk {
    Frames(Vec<u8>),
    Text(String),
}

/// Line prefix of a hex-encoded frame piece (s390x's SCLP console).
const HEX_PREFIX: &[u8] = b"D:";

/// Splits a log into frame bytes and text. A log that does not start with a
/// `D:` line is raw frames (x86_64's COM1) and is returned whole.
fn split_log(bytes: &[u8]) -> Vec<Chunk> {
    let trimmed = bytes.iter().position(|b| !b.is_ascii_whitespace()).map_or(&bytes[..0], |p| &bytes[p..]);
    if !trimmed.starts_with(HEX_PREFIX) {
        return vec![Chunk::Frames(bytes.to_vec())];
    }
    let mut chunks = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        match line.strip_prefix(HEX_PREFIX).and_then(unhex) {
            Some(frames) => chunks.push(Chunk::Frames(frames)),
            None => chunks.push(Chunk::Text(String::from_utf8_lossy(line).into_owned())),
        }
    }
    chunks
}

fn unhex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect()
}

/// Decodes `serial` with the table of `elf` into lines.
pub fn decode_file(serial: &Path, elf: &Path) -> Result<Vec<String>> {
    let table = LogTable::from_file(elf)?;
    let bytes = std::fs::read(serial).with_context(|| format!("reading {}", serial.display()))?;
    Ok(table.decode(&bytes))
}

/// Writes `agent.log` next to `serial.bin`. On failure the log file says why
/// (serial.bin is kept either way). Returns the decoded text ("" on failure).
pub fn write_agent_log(table: Option<&LogTable>, serial: &Path, out: &Path, elf: &Path) -> String {
    let result = (|| -> Result<Vec<String>> {
        let Some(table) = table else {
            bail!("no defmt table for {}", elf.display());
        };
        let bytes = std::fs::read(serial).with_context(|| format!("reading {}", serial.display()))?;
        Ok(table.decode(&bytes))
    })();
    match result {
        Ok(lines) => {
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            let _ = std::fs::write(out, &text);
            text
        }
        Err(e) => {
            let _ =
                std::fs::write(out, format!("defmt decoding failed: {e:#}\nraw output kept in {}\n", serial.display()));
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_pass_through_whole() {
        assert_eq!(split_log(&[0x01, 0x0a, 0x00]), vec![Chunk::Frames(vec![0x01, 0x0a, 0x00])]);
    }

    #[test]
    fn hex_lines_become_frames_and_other_lines_text() {
        let log = b"D:0102\nD:ff00\nhello\r\nD:zz\n";
        assert_eq!(
            split_log(log),
            vec![
                Chunk::Frames(vec![1, 2]),
                Chunk::Frames(vec![0xff, 0]),
                Chunk::Text("hello".into()),
                Chunk::Text("D:zz".into()),
            ]
        );
    }
}
