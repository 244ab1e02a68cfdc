//! Decoding the agent's COM1 output (raw defmt frames, rzcobs) into text.

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

    /// Decodes a complete byte stream into lines `LEVEL message`. A truncated
    /// last frame and malformed frames are reported as lines of their own.
    pub fn decode(&self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut dec = self.table.new_stream_decoder();
        dec.received(bytes);
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
        // rzcobs frames end with 0x00; bytes after the last one are a frame
        // cut off (e.g. QEMU was killed mid-write).
        let tail = bytes.iter().rev().take_while(|&&b| b != 0).count();
        if tail > 0 {
            lines.push(format!("<truncated defmt frame at end of log: {tail} bytes>"));
        }
        lines
    }
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
