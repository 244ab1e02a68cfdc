//! Decoding the agent's log into text. The agent's console carries text
//! lines on every architecture: `D:<hex>` lines are the defmt frames (rzcobs,
//! each ended by a 0x00); `pvagent: <text>` lines (`pvagent: warning: …`,
//! `pvagent: error: …`) are the lines the agent writes as plain text for a
//! person reading the console without a decoder (the banner, the steps,
//! the outcome, the errors), shown among the frames' lines at their level;
//! any other line is kept as text. A log with no `D:` line at all is read
//! as raw frames (what images before the text console wrote on COM1).
//!
//! A log only means something with the table of the image that wrote it:
//! with another build's table the frames decode into confident, wrong text.
//! The agent's first line names its build id (`pvagent <version> build <id>
//! (…)`) and the image keeps the same id in the symbol `PVAGENT_BUILD_ID`;
//! [`DecodedLog::build`] compares them. A log is also untrusted input (any
//! file can be given to `cargo xtask decode`): at most [`MAX_LOG_BYTES`] of
//! it are read and at most [`MAX_LINES`] lines come out.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use defmt_decoder::{Encoding, Frame, Locations, Table};

/// Most bytes of a log that are read and decoded (real logs are a few KiB;
/// `/dev/zero` is endless).
pub const MAX_LOG_BYTES: usize = 16 << 20;
/// Most lines one log decodes into; the rest are counted in a last line.
pub const MAX_LINES: usize = 100_000;
/// The image's symbol holding its build id (16 ASCII hex digits).
pub const BUILD_ID_SYMBOL: &str = "PVAGENT_BUILD_ID";
/// Length of a build id.
pub const BUILD_ID_LEN: usize = 16;

/// The defmt table (and locations, when the image has debug info) of an
/// image, and its build id.
pub struct LogTable {
    table: Table,
    locations: Option<Locations>,
    /// `None`: the image predates build ids.
    build_id: Option<String>,
}

/// Does the log belong to the image whose table decoded it?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildCheck {
    /// The log's banner names the image's build id.
    Match,
    /// The log names another build (`log: None`: a build from before build
    /// ids): in its banner, or, when no frame reads as the banner with this
    /// table (the usual case for another build: its format strings sit at
    /// other indices), in the raw bytes of its first frames.
    Mismatch { log: Option<String>, image: String },
    /// No frame of the log reads as the agent's banner with this table: the
    /// log comes from another build, is not pvagent's, or lost its start.
    NoBanner,
    /// The image has no build id (built before build ids): not checked.
    ImageWithoutId { log: Option<String> },
    /// The log holds no defmt frame at all (not even a malformed one).
    NoFrames,
}

impl BuildCheck {
    /// Why the text of a log with this check should not be trusted, naming
    /// `serial` and `elf`; `None` when it can be.
    pub fn problem(&self, serial: &Path, elf: &Path) -> Option<String> {
        let (serial, elf) = (serial.display(), elf.display());
        match self {
            BuildCheck::Match | BuildCheck::ImageWithoutId { .. } | BuildCheck::NoFrames => None,
            BuildCheck::Mismatch { log, image } => Some(format!(
                "{serial} was written by pvagent build {}, but {elf} is build {image}: its defmt table would \
                 decode this log into wrong text. Decode it with the image that wrote it (`--elf <image>`), or \
                 run the agent again with this image",
                log.as_deref().unwrap_or("(none: a build from before build ids)")
            )),
            BuildCheck::NoBanner => Some(format!(
                "{serial} does not hold the agent's first line (`pvagent <version> build <id> …`) as {elf} reads it: \
                 the log was written by another build (its frames would decode into wrong text), is not a \
                 pvagent log, or lost its start. Decode it with the image that wrote it (`--elf <image>`)"
            )),
        }
    }
}

/// A decoded log.
#[derive(Clone, Debug)]
pub struct DecodedLog {
    /// `LEVEL message` lines, text lines (`TEXT  …`) and notes (`<…>`).
    pub lines: Vec<String>,
    /// Frames that decoded.
    pub frames: usize,
    /// Frames that did not (one `<… malformed …>` line per run of them).
    pub malformed: usize,
    /// Plain text lines (s390x).
    pub text_lines: usize,
    /// Bytes after the last frame's end (a frame cut off).
    pub truncated_tail: usize,
    pub build: BuildCheck,
}

impl DecodedLog {
    /// Nothing in the log was a frame or a line of text.
    pub fn is_empty(&self) -> bool {
        self.frames == 0 && self.malformed == 0 && self.text_lines == 0 && self.truncated_tail == 0
    }
}

impl LogTable {
    pub fn from_elf(elf: &[u8]) -> Result<LogTable> {
        let table = Table::parse(elf)
            .context("reading the defmt table")?
            .context("the image has no .defmt section (is it a defmt build?)")?;
        if table.encoding() != Encoding::Rzcobs {
            bail!("the image's defmt encoding is {:?}; pvagent images use rzcobs", table.encoding());
        }
        let locations = table.get_locations(elf).ok().filter(|l: &Locations| !l.is_empty());
        let build_id = read_build_id(elf)?;
        Ok(LogTable { table, locations, build_id })
    }

    pub fn from_file(path: &Path) -> Result<LogTable> {
        let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        LogTable::from_elf(&elf).with_context(|| format!("decoding {}", path.display()))
    }

    /// The image's build id (`None`: built before build ids).
    pub fn build_id(&self) -> Option<&str> {
        self.build_id.as_deref()
    }

    /// Decodes a complete log into lines `LEVEL message`. A truncated last
    /// frame and malformed frames are reported as lines of their own.
    pub fn decode(&self, bytes: &[u8]) -> Vec<String> {
        self.decode_log(bytes).lines
    }

    /// Decodes the first [`MAX_LOG_BYTES`] of a log, and checks that it
    /// belongs to this image.
    pub fn decode_log(&self, bytes: &[u8]) -> DecodedLog {
        let bytes = &bytes[..bytes.len().min(MAX_LOG_BYTES)];
        let mut out = Output::default();
        let mut banner: Option<Option<String>> = None;
        let mut raw_id: Option<String> = None;
        // One frame at a time: the stream decoder keeps what it was given
        // and moves the rest down after each frame, which is quadratic on a
        // log of many frames given at once.
        let mut dec = self.table.new_stream_decoder();
        let mut frame = Vec::new();
        for chunk in split_log(bytes) {
            match chunk {
                Chunk::Frames(data) => {
                    for piece in data.split_inclusive(|&b| b == 0) {
                        let (body, ended) = match piece.split_last() {
                            Some((0, body)) => (body, true),
                            _ => (piece, false),
                        };
                        frame.extend_from_slice(body);
                        if ended && !frame.is_empty() {
                            // With a foreign table the banner may not decode
                            // at all: its raw bytes still name the build.
                            if banner.is_none() && raw_id.is_none() && out.frames + out.malformed < RAW_ID_FRAMES {
                                raw_id = unrzcobs(&frame).as_deref().and_then(find_build_id);
                            }
                            dec.received(&frame);
                            dec.received(&[0]);
                            match dec.decode() {
                                Ok(f) => {
                                    let message = f.display_message().to_string();
                                    if banner.is_none() {
                                        banner = banner_build_id(&message);
                                    }
                                    out.frame(self.format(&f, &message));
                                }
                                Err(_) => out.malformed(),
                            }
                            frame.clear();
                        }
                    }
                }
                Chunk::Text(text) => out.text(format!("TEXT  {}", escape_controls(&text))),
                Chunk::Say(level, text) => {
                    if banner.is_none() {
                        banner = banner_build_id(&text);
                    }
                    out.frame(format!("{level:<5} {}", escape_controls(&text)));
                }
            }
        }
        // Bytes after the last 0x00 are a frame cut off (e.g. QEMU was
        // killed mid-write).
        if !frame.is_empty() {
            out.note(format!("<truncated defmt frame at end of log: {} bytes>", frame.len()));
        }
        let build = match (banner, &self.build_id) {
            _ if out.frames == 0 && out.malformed == 0 => BuildCheck::NoFrames,
            (None, Some(image)) => match raw_id {
                Some(log) if log != *image => BuildCheck::Mismatch { log: Some(log), image: image.clone() },
                _ => BuildCheck::NoBanner,
            },
            (None, None) => BuildCheck::NoBanner,
            (Some(log), None) => BuildCheck::ImageWithoutId { log },
            (Some(Some(log)), Some(image)) if log == *image => BuildCheck::Match,
            (Some(log), Some(image)) => BuildCheck::Mismatch { log, image: image.clone() },
        };
        out.finish(frame.len(), build)
    }

    fn format(&self, frame: &Frame<'_>, message: &str) -> String {
        let level = frame.level().map(|l| l.as_str().to_ascii_uppercase()).unwrap_or_else(|| "PRINT".into());
        let mut line = String::new();
        if let Some(ts) = frame.display_timestamp() {
            line.push_str(&format!("{ts} "));
        }
        line.push_str(&format!("{level:<5} {}", escape_controls(message)));
        if let Some(loc) = self.locations.as_ref().and_then(|l| l.get(&frame.index())) {
            line.push_str(&format!("  ({}:{})", loc.file.display(), loc.line));
        }
        line
    }
}

/// `text` with its control characters but tabs escaped (`\u{1b}`): a log
/// line (a `log:` step's text, a string from a foreign table) must not
/// drive the terminal it is printed on.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Collects the lines of a log, at most [`MAX_LINES`]; a run of malformed
/// frames becomes one line.
#[derive(Default)]
struct Output {
    lines: Vec<String>,
    not_shown: usize,
    frames: usize,
    malformed: usize,
    text_lines: usize,
    malformed_run: usize,
}

impl Output {
    fn frame(&mut self, line: String) {
        self.frames += 1;
        self.note(line);
    }

    fn text(&mut self, line: String) {
        self.text_lines += 1;
        self.note(line);
    }

    fn malformed(&mut self) {
        self.malformed += 1;
        self.malformed_run += 1;
    }

    fn note(&mut self, line: String) {
        self.end_malformed_run();
        self.push(line);
    }

    fn push(&mut self, line: String) {
        if self.lines.len() < MAX_LINES {
            self.lines.push(line);
        } else {
            self.not_shown += 1;
        }
    }

    fn end_malformed_run(&mut self) {
        match std::mem::take(&mut self.malformed_run) {
            0 => {}
            1 => self.push("<malformed defmt frame skipped>".into()),
            n => self.push(format!("<{n} malformed defmt frames skipped>")),
        }
    }

    fn finish(mut self, truncated_tail: usize, build: BuildCheck) -> DecodedLog {
        self.end_malformed_run();
        if self.not_shown > 0 {
            self.lines.push(format!("<{} more lines not shown (at most {MAX_LINES})>", self.not_shown));
        }
        DecodedLog {
            lines: self.lines,
            frames: self.frames,
            malformed: self.malformed,
            text_lines: self.text_lines,
            truncated_tail,
            build,
        }
    }
}

/// The build id in the agent's first line `pvagent <version> build <id>
/// (<machine>), boot <n>`: `Some(Some(id))`; `Some(None)` for the first line
/// of a build from before build ids (`pvagent <version> (<machine>), …`);
/// `None` when `message` is not that line.
pub fn banner_build_id(message: &str) -> Option<Option<String>> {
    let rest = message.strip_prefix("pvagent ")?;
    let (version, rest) = rest.split_once(' ')?;
    if version.is_empty() || !version.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if rest.starts_with('(') {
        return Some(None);
    }
    let id = rest.strip_prefix("build ")?.split(' ').next()?;
    Some(Some(id.to_string()))
}

/// How many of a log's first frames are searched for a build id when none
/// decodes as the banner (the banner comes first, after at most a few
/// device warnings).
const RAW_ID_FRAMES: usize = 8;

/// Undoes rzCOBS on one frame (without its 0x00): read from the end, a
/// byte below 0x80 covers seven bytes, one bit per zero byte among them
/// (most significant bit first); 0x80 + n is a zero then n + 7 bytes as they
/// are; 0xff is 134 bytes as they are. Trailing zeros come out as padding.
fn unrzcobs(frame: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(frame.len() * 2);
    let mut rest = frame;
    while let Some((&code, before)) = rest.split_last() {
        rest = before;
        let mut take = |out: &mut Vec<u8>| -> Option<()> {
            let (&b, before) = rest.split_last()?;
            rest = before;
            out.push(b);
            Some(())
        };
        match code {
            0 => return None,
            0x01..=0x7f => {
                for bit in (0..7).rev() {
                    if code & (1 << bit) != 0 {
                        out.push(0);
                    } else {
                        take(&mut out)?;
                    }
                }
            }
            0x80..=0xfe => {
                out.push(0);
                for _ in 0..(code & 0x7f) + 7 {
                    take(&mut out)?;
                }
            }
            0xff => {
                for _ in 0..134 {
                    take(&mut out)?;
                }
            }
        }
    }
    out.reverse();
    Some(out)
}

/// A build id as the banner's `{=str}` argument carries it on the wire: a
/// little-endian u32 length of 16, then 16 hex digits.
fn find_build_id(raw: &[u8]) -> Option<String> {
    const LEN: [u8; 4] = (BUILD_ID_LEN as u32).to_le_bytes();
    raw.windows(4 + BUILD_ID_LEN)
        .find(|w| w[..4] == LEN && w[4..].iter().all(u8::is_ascii_hexdigit))
        .map(|w| String::from_utf8_lossy(&w[4..]).into_owned())
}

/// The build id kept in `elf`'s [`BUILD_ID_SYMBOL`]; `None` if the image has
/// no such symbol (built before build ids).
pub fn read_build_id(elf: &[u8]) -> Result<Option<String>> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = object::File::parse(elf).context("reading the image's ELF")?;
    let Some(symbol) = file.symbols().find(|s| s.name() == Ok(BUILD_ID_SYMBOL)) else {
        return Ok(None);
    };
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .with_context(|| format!("the image's {BUILD_ID_SYMBOL} symbol is not in a section"))?;
    let bytes = section
        .data_range(symbol.address(), BUILD_ID_LEN as u64)
        .ok()
        .flatten()
        .with_context(|| format!("the image's {BUILD_ID_SYMBOL} symbol has no {BUILD_ID_LEN} bytes of data"))?;
    if !bytes.iter().all(u8::is_ascii_hexdigit) {
        bail!("the image's {BUILD_ID_SYMBOL} is not {BUILD_ID_LEN} hex digits: {bytes:02x?}");
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A piece of the log: frame bytes, or a line of plain text.
#[derive(Debug, PartialEq)]
enum Chunk {
    Frames(Vec<u8>),
    Text(String),
    /// A `pvagent:` line: its level and text.
    Say(&'static str, String),
}

/// Line prefix of a hex-encoded frame piece.
const HEX_PREFIX: &[u8] = b"D:";
/// Line prefix of the lines the agent writes for a person.
pub const SAY_PREFIX: &str = "pvagent: ";

/// Whether a log is the text form: a line of its first 4 KiB starts with
/// `D:` or `pvagent: ` (a run whose lines were all for a person has no `D:`
/// line at all), or the whole log is printable text (a firmware's console
/// before the agent ran, or instead of it: no frame is that).
fn is_text_form(bytes: &[u8]) -> bool {
    let start = &bytes[..bytes.len().min(4096)];
    let agent_line = start.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii_start();
        line.starts_with(HEX_PREFIX) || line.starts_with(SAY_PREFIX.as_bytes())
    });
    let printable = |b: &u8| matches!(b, b'\n' | b'\r' | b'\t' | 0x1b | 0x20..=0x7e);
    agent_line || (bytes.contains(&b'\n') && bytes.iter().any(u8::is_ascii_graphic) && bytes.iter().all(printable))
}

/// Splits a log into frame bytes and text. A log without `D:` lines is raw
/// frames and is returned whole.
fn split_log(bytes: &[u8]) -> Vec<Chunk> {
    if !is_text_form(bytes) {
        return vec![Chunk::Frames(bytes.to_vec())];
    }
    let mut chunks = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if let Some(said) = line.strip_prefix(SAY_PREFIX.as_bytes()) {
            let said = String::from_utf8_lossy(said);
            let (level, text) = match (said.strip_prefix("warning: "), said.strip_prefix("error: ")) {
                (Some(text), _) => ("WARN", text),
                (_, Some(text)) => ("ERROR", text),
                _ => ("INFO", &*said),
            };
            chunks.push(Chunk::Say(level, text.to_string()));
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

/// The start of a log file, at most [`MAX_LOG_BYTES`].
pub struct LogFile {
    pub bytes: Vec<u8>,
    /// The file is longer (or endless): only its start was read.
    pub cut: bool,
}

/// Reads at most [`MAX_LOG_BYTES`] of `path` (a FIFO or `/dev/zero` too).
pub fn read_log_file(path: &Path) -> Result<LogFile> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_LOG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    let cut = bytes.len() > MAX_LOG_BYTES;
    bytes.truncate(MAX_LOG_BYTES);
    Ok(LogFile { bytes, cut })
}

/// Whether the log at `path` is the text form, from its first 4 KiB.
pub fn is_text_log(path: &Path) -> bool {
    let mut start = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut start));
    read.is_ok() && is_text_form(&start)
}

/// The lines the agent wrote for a person (`pvagent: <text>`), without the
/// prefix: what `virsh console` shows.
pub fn console_lines(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter_map(|line| line.strip_prefix(SAY_PREFIX.as_bytes()))
        .map(|line| escape_controls(&String::from_utf8_lossy(line)))
        .collect()
}

/// `cargo xtask decode`: decodes `serial` with the table of `elf` and
/// returns the lines. Errors when there is nothing to decode, and (unless
/// `any_build`) when the log was not written by this image; warnings (a cut
/// log, an image without build id) go to stderr.
pub fn decode_command(serial: &Path, elf: &Path, any_build: bool) -> Result<Vec<String>> {
    decode_with(&LogTable::from_file(elf)?, serial, elf, any_build)
}

/// [`decode_command`] with the table of `elf` already read.
pub fn decode_with(table: &LogTable, serial: &Path, elf: &Path, any_build: bool) -> Result<Vec<String>> {
    let log = read_log_file(serial)?;
    let shown = serial.display();
    if log.bytes.is_empty() {
        bail!(
            "{shown} is empty: nothing to decode (no agent output reached it: the agent logs to the serial \
             port, which QEMU writes where `-serial` says, e.g. `-serial file:agent.bin`)"
        );
    }
    let decoded = table.decode_log(&log.bytes);
    if decoded.build == BuildCheck::NoFrames && decoded.text_lines == 0 {
        bail!(
            "{shown} holds no defmt frame ({}{} bytes{}): nothing to decode",
            if log.cut { "the first " } else { "" },
            log.bytes.len(),
            if log.bytes.iter().all(|&b| b == 0) { ", all zero" } else { "" }
        );
    }
    if let Some(problem) = decoded.build.problem(serial, elf) {
        if !any_build {
            bail!("{problem} (or pass --any-build to decode it anyway)");
        }
        eprintln!("warning: {problem}");
    }
    if let BuildCheck::ImageWithoutId { .. } = decoded.build {
        eprintln!(
            "warning: {} has no {BUILD_ID_SYMBOL} (built before build ids): cannot check that {shown} was written \
             by it",
            elf.display()
        );
    }
    if log.cut {
        eprintln!("note: {shown} is longer than {MAX_LOG_BYTES} bytes: only its start was decoded");
    }
    Ok(decoded.lines)
}

/// Writes `agent.log` next to `serial.bin`. On failure the log file says why
/// (serial.bin is kept either way); a log from another build, a cut log and
/// an empty one get a note at the top. Returns the decoded text ("" on
/// failure), without the notes.
pub fn write_agent_log(table: Option<&LogTable>, serial: &Path, out: &Path, elf: &Path) -> String {
    let result = (|| -> Result<(LogFile, DecodedLog)> {
        let Some(table) = table else {
            bail!("no defmt table for {}", elf.display());
        };
        let log = read_log_file(serial)?;
        let decoded = table.decode_log(&log.bytes);
        Ok((log, decoded))
    })();
    match result {
        Ok((log, decoded)) => {
            let mut text = decoded.lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            let mut notes = String::new();
            if log.bytes.is_empty() {
                notes.push_str("NOTE  the agent wrote nothing to the serial port (serial.bin is empty)\n");
            } else if decoded.build == BuildCheck::NoFrames {
                notes.push_str("NOTE  serial.bin holds no defmt frame\n");
            } else if let Some(problem) = decoded.build.problem(Path::new("serial.bin"), elf) {
                notes.push_str(&format!("NOTE  {problem}\n"));
            }
            if log.cut {
                notes.push_str(&format!(
                    "NOTE  serial.bin is longer than {MAX_LOG_BYTES} bytes: only its start is decoded\n"
                ));
            }
            let _ = std::fs::write(out, notes + &text);
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
    fn person_lines_keep_their_place_and_level() {
        let log = b"D:0102\r\npvagent: step 1: halt\r\nSeaBIOS\r\nD:ff00\r\npvagent: error: \x1b[2Jx\r\npvagent: warning: w\r\n";
        assert_eq!(
            split_log(log),
            [
                Chunk::Frames(vec![1, 2]),
                Chunk::Say("INFO", "step 1: halt".into()),
                Chunk::Text("SeaBIOS".into()),
                Chunk::Frames(vec![0xff, 0]),
                Chunk::Say("ERROR", "\x1b[2Jx".into()),
                Chunk::Say("WARN", "w".into()),
            ]
        );
        assert_eq!(console_lines(log), ["step 1: halt", "error: \\u{1b}[2Jx", "warning: w"]);
        // Only a firmware's console text (no agent line): text, not frames.
        assert!(is_text_form(b"\x1b[2JBdsDxe: failed to load Boot0001: Access Denied\r\nBdsDxe: x\r\n"));
        assert!(!is_text_form(b"\x01\x02abc\n"), "not printable");
        assert!(!is_text_form(b"abc"), "no line");
        // A D: line after other text still makes the log the text form.
        assert!(is_text_form(b"SeaBIOS (version 1.16)\r\nD:00\r\n"));
        assert!(!is_text_form(b"\x01\x02\x00"));
        // Only a person's lines (every line of the run was one).
        assert!(is_text_form(b"pvagent: pvagent 0.1.0 build 0123456789abcdef (s390x), boot 1\n"));
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

    const ID: &str = "0123456789abcdef";

    /// A table like an image's: the banner, a warning, a message and an
    /// old-style banner.
    fn table(build_id: Option<&str>) -> LogTable {
        let entry = |tag: &str, string: &str| serde_json::json!({"string": {"tag": tag, "string": string}, "raw_symbol": "<test>"});
        let json = serde_json::json!({
            "timestamp": null,
            "entries": {
                "0": entry("Info", "pvagent {=str} build {=str} ({=str}), boot {=u8}"),
                "1": entry("Warn", "pvpanic-pci at {=u8}: BAR0 unusable"),
                "2": entry("Info", "step {=u8} done"),
                "3": entry("Info", "pvagent {=str} ({=str}), boot {=u8}"),
            },
            "bitflags": {},
            "encoding": "Rzcobs",
        });
        let table: Table = serde_json::from_value(json).unwrap();
        LogTable { table, locations: None, build_id: build_id.map(String::from) }
    }

    /// rzCOBS as the agent's encoder writes it: groups of seven bytes with a
    /// bit per zero byte after them, long runs of non-zero bytes with a
    /// length byte; then the 0x00 separator.
    fn rzcobs(frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut run, mut zeros) = (0u8, 0u8);
        for &b in frame {
            if run < 7 {
                if b == 0 {
                    zeros |= 1 << run;
                } else {
                    out.push(b);
                }
                run += 1;
                if run == 7 && zeros != 0 {
                    out.push(zeros);
                    (run, zeros) = (0, 0);
                }
            } else if b == 0 {
                out.push(0x80 | (run - 7));
                (run, zeros) = (0, 0);
            } else {
                out.push(b);
                run += 1;
                if run == 134 {
                    out.push(0xff);
                    (run, zeros) = (0, 0);
                }
            }
        }
        match run {
            0 => {}
            1..=6 => out.push((zeros | (0xff << run)) & 0x7f),
            _ => out.push(0x80 | (run - 7)),
        }
        out.push(0);
        out
    }

    /// One frame: the index, then each argument (`{=str}`: u32 length and
    /// bytes; `{=u8}`: the byte).
    enum Arg<'a> {
        S(&'a str),
        B(u8),
    }

    fn frame(index: u16, args: &[Arg<'_>]) -> Vec<u8> {
        let mut f = index.to_le_bytes().to_vec();
        for a in args {
            match a {
                Arg::S(s) => {
                    f.extend((s.len() as u32).to_le_bytes());
                    f.extend(s.as_bytes());
                }
                Arg::B(b) => f.push(*b),
            }
        }
        rzcobs(&f)
    }

    fn banner(id: &str) -> Vec<u8> {
        frame(0, &[Arg::S("0.1.0"), Arg::S(id), Arg::S("x86_64, PVH"), Arg::B(1)])
    }

    #[test]
    fn a_log_of_this_build_decodes_and_matches() {
        let log = [vec![0], frame(1, &[Arg::B(3)]), banner(ID), frame(2, &[Arg::B(1)])].concat();
        let d = table(Some(ID)).decode_log(&log);
        assert_eq!(
            d.lines,
            [
                "WARN  pvpanic-pci at 3: BAR0 unusable",
                "INFO  pvagent 0.1.0 build 0123456789abcdef (x86_64, PVH), boot 1",
                "INFO  step 1 done"
            ]
        );
        assert_eq!((d.frames, d.malformed, d.truncated_tail), (3, 0, 0));
        assert_eq!(d.build, BuildCheck::Match);
    }

    #[test]
    fn a_log_of_another_build_is_named() {
        let other = "fedcba9876543210";
        let d = table(Some(ID)).decode_log(&banner(other));
        assert_eq!(d.build, BuildCheck::Mismatch { log: Some(other.into()), image: ID.into() });
        let old = frame(3, &[Arg::S("0.1.0"), Arg::S("x86_64"), Arg::B(1)]);
        assert_eq!(table(Some(ID)).decode_log(&old).build, BuildCheck::Mismatch { log: None, image: ID.into() });
        assert_eq!(table(None).decode_log(&banner(ID)).build, BuildCheck::ImageWithoutId { log: Some(ID.into()) });
        // Frames that decode, but no banner among them.
        assert_eq!(table(Some(ID)).decode_log(&frame(2, &[Arg::B(7)])).build, BuildCheck::NoBanner);
        // Frames that do not decode at all (an index this table lacks).
        let d = table(Some(ID)).decode_log(&[frame(9, &[]), frame(9, &[])].concat());
        assert_eq!((d.build, d.malformed), (BuildCheck::NoBanner, 2));
        assert_eq!(d.lines, ["<2 malformed defmt frames skipped>"]);
        // Another build's banner under an index this table reads as
        // something else, or not at all: its bytes still name the build.
        for index in [2, 9] {
            let foreign = [frame(index, &[Arg::S("0.1.0"), Arg::S(other), Arg::S("x86_64"), Arg::B(1)]), frame(2, &[])];
            let d = table(Some(ID)).decode_log(&foreign.concat());
            assert_eq!(d.build, BuildCheck::Mismatch { log: Some(other.into()), image: ID.into() }, "index {index}");
        }
        // The same id in a frame that is not the banner proves nothing.
        let ours = frame(9, &[Arg::S(ID)]);
        assert_eq!(table(Some(ID)).decode_log(&ours).build, BuildCheck::NoBanner);
    }

    #[test]
    fn control_characters_are_escaped() {
        let hex: String = banner("0123456789abcdef\u{1b}[2J").iter().map(|b| format!("{b:02x}")).collect();
        let log = format!("D:{hex}\n\u{1b}]0;x\u{7}\n");
        let d = table(Some(ID)).decode_log(log.as_bytes());
        assert_eq!(
            d.lines,
            ["INFO  pvagent 0.1.0 build 0123456789abcdef\\u{1b}[2J (x86_64, PVH), boot 1", "TEXT  \\u{1b}]0;x\\u{7}"]
        );
        assert_eq!(escape_controls("a\tb\u{0}c\r"), "a\tb\\u{0}c\\r");
        assert_eq!(escape_controls("plain"), "plain");
    }

    #[test]
    fn the_s390x_text_form_decodes_the_same() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let f = banner(ID);
        let (a, b) = f.split_at(10);
        let log = format!(
            "D:{}
console text
D:{}
D:{}
",
            hex(a),
            hex(b),
            hex(&frame(2, &[Arg::B(4)]))
        );
        let d = table(Some(ID)).decode_log(log.as_bytes());
        assert_eq!(
            d.lines,
            [
                "TEXT  console text",
                "INFO  pvagent 0.1.0 build 0123456789abcdef (x86_64, PVH), boot 1",
                "INFO  step 4 done"
            ]
        );
        assert_eq!((d.build, d.text_lines), (BuildCheck::Match, 1));
    }

    #[test]
    fn garbage_is_bounded_and_summarised() {
        let t = table(Some(ID));
        let zeros = t.decode_log(&vec![0; 1 << 20]);
        assert_eq!((zeros.build, zeros.lines.len()), (BuildCheck::NoFrames, 0));
        // A cut frame at the end.
        let d = t.decode_log(&[banner(ID), vec![0x11, 0x22]].concat());
        assert_eq!(d.truncated_tail, 2);
        assert_eq!(d.lines.last().unwrap(), "<truncated defmt frame at end of log: 2 bytes>");
        // Many frames: at most MAX_LINES lines, then a count.
        let many = [banner(ID), frame(2, &[Arg::B(0)]).repeat(MAX_LINES + 10)].concat();
        let d = t.decode_log(&many);
        assert_eq!(d.frames, MAX_LINES + 11);
        assert_eq!(d.lines.len(), MAX_LINES + 1);
        assert_eq!(d.lines.last().unwrap(), &format!("<11 more lines not shown (at most {MAX_LINES})>"));
        // Beyond MAX_LOG_BYTES nothing is looked at.
        let mut huge = vec![0; MAX_LOG_BYTES];
        huge.extend(banner(ID));
        assert_eq!(t.decode_log(&huge).build, BuildCheck::NoFrames);
    }

    #[test]
    fn decode_refuses_empty_foreign_and_frameless_logs() {
        let t = table(Some(ID));
        let dir = tempfile::tempdir().unwrap();
        let elf = Path::new("pvagent.elf");
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let e = decode_with(&t, &file("empty", b""), elf, false).unwrap_err().to_string();
        assert!(e.contains("is empty: nothing to decode"), "{e}");
        let e = decode_with(&t, &file("zeros", &[0; 100]), elf, false).unwrap_err().to_string();
        assert!(e.contains("holds no defmt frame (100 bytes, all zero): nothing to decode"), "{e}");
        let e = decode_with(&t, &file("blank", b" \n"), elf, false).unwrap_err().to_string();
        assert!(e.contains("holds no defmt frame"), "{e}");
        let foreign = file("foreign", &banner("fedcba9876543210"));
        let e = decode_with(&t, &foreign, elf, false).unwrap_err().to_string();
        assert!(e.contains("build fedcba9876543210") && e.contains("pvagent.elf is build 0123456789abcdef"), "{e}");
        assert!(e.contains("--any-build"), "{e}");
        let lines = decode_with(&t, &foreign, elf, true).unwrap();
        assert_eq!(lines, ["INFO  pvagent 0.1.0 build fedcba9876543210 (x86_64, PVH), boot 1"]);
        let ours = file("ours", &banner(ID));
        assert_eq!(decode_with(&t, &ours, elf, false).unwrap().len(), 1);
    }

    #[test]
    fn the_run_log_notes_a_foreign_build_instead_of_failing() {
        let t = table(Some(ID));
        let dir = tempfile::tempdir().unwrap();
        let serial = dir.path().join("serial.bin");
        let out = dir.path().join("agent.log");
        std::fs::write(&serial, banner("fedcba9876543210")).unwrap();
        let text = write_agent_log(Some(&t), &serial, &out, Path::new("img"));
        assert_eq!(text, "INFO  pvagent 0.1.0 build fedcba9876543210 (x86_64, PVH), boot 1\n");
        let written = std::fs::read_to_string(&out).unwrap();
        assert!(written.starts_with("NOTE  serial.bin was written by pvagent build fedcba9876543210"), "{written}");
        assert!(written.ends_with(&text));
        std::fs::write(&serial, b"").unwrap();
        assert_eq!(write_agent_log(Some(&t), &serial, &out, Path::new("img")), "");
        assert!(std::fs::read_to_string(&out).unwrap().contains("wrote nothing to the serial port"));
        std::fs::write(&serial, banner(ID)).unwrap();
        write_agent_log(Some(&t), &serial, &out, Path::new("img"));
        assert!(!std::fs::read_to_string(&out).unwrap().contains("NOTE"));
    }

    /// A minimal ELF64 (little-endian) with one data section and a symbol
    /// `name` over `data`.
    fn tiny_elf(name: &str, data: &[u8]) -> Vec<u8> {
        const ADDR: u64 = 0x10_0000;
        let strtab = [b"\0", name.as_bytes(), b"\0"].concat();
        let shstrtab = b"\0.data\0.symtab\0.strtab\0.shstrtab\0".to_vec();
        let mut symtab = vec![0u8; 24];
        symtab.extend(1u32.to_le_bytes()); // st_name
        symtab.extend([0x11, 0]); // global object, default visibility
        symtab.extend(1u16.to_le_bytes()); // .data
        symtab.extend(ADDR.to_le_bytes());
        symtab.extend((data.len() as u64).to_le_bytes());
        let mut body = vec![0u8; 64];
        let mut place = |bytes: &[u8]| {
            while !body.len().is_multiple_of(8) {
                body.push(0);
            }
            let at = body.len() as u64;
            body.extend(bytes);
            at
        };
        let offsets = [place(data), place(&symtab), place(&strtab), place(&shstrtab)];
        let shoff = place(&[]);
        // (name, type, flags, addr, offset, size, link, info, entsize)
        type Header = (u32, u32, u64, u64, u64, u64, u32, u32, u64);
        let sections: [Header; 5] = [
            (0, 0, 0, 0, 0, 0, 0, 0, 0),
            (1, 1, 3, ADDR, offsets[0], data.len() as u64, 0, 0, 0),
            (7, 2, 0, 0, offsets[1], symtab.len() as u64, 3, 1, 24),
            (15, 3, 0, 0, offsets[2], strtab.len() as u64, 0, 0, 0),
            (23, 3, 0, 0, offsets[3], shstrtab.len() as u64, 0, 0, 0),
        ];
        for (name, kind, flags, addr, offset, size, link, info, entsize) in sections {
            body.extend(name.to_le_bytes());
            body.extend(kind.to_le_bytes());
            body.extend(flags.to_le_bytes());
            body.extend(addr.to_le_bytes());
            body.extend(offset.to_le_bytes());
            body.extend(size.to_le_bytes());
            body.extend(link.to_le_bytes());
            body.extend(info.to_le_bytes());
            body.extend(1u64.to_le_bytes());
            body.extend(entsize.to_le_bytes());
        }
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h.extend(2u16.to_le_bytes()); // ET_EXEC
        h.extend(62u16.to_le_bytes()); // EM_X86_64
        h.extend(1u32.to_le_bytes());
        h.extend(0u64.to_le_bytes()); // entry
        h.extend(0u64.to_le_bytes()); // phoff
        h.extend(shoff.to_le_bytes());
        h.extend(0u32.to_le_bytes()); // flags
        h.extend([64, 0, 0, 0, 0, 0, 64, 0, 5, 0, 4, 0]); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        body[..64].copy_from_slice(&h);
        body
    }

    #[test]
    fn the_build_id_is_read_from_the_image_symbol() {
        assert_eq!(read_build_id(&tiny_elf(BUILD_ID_SYMBOL, ID.as_bytes())).unwrap(), Some(ID.to_string()));
        assert_eq!(read_build_id(&tiny_elf("OTHER_SYMBOL", ID.as_bytes())).unwrap(), None);
        let e = read_build_id(&tiny_elf(BUILD_ID_SYMBOL, b"not-hex-at-all!!")).unwrap_err();
        assert!(e.to_string().contains("is not 16 hex digits"), "{e}");
        assert!(read_build_id(&tiny_elf(BUILD_ID_SYMBOL, b"0123")).is_err(), "too short");
        assert!(read_build_id(b"not an elf").is_err());
    }

    #[test]
    fn rzcobs_round_trips() {
        let cases: [Vec<u8>; 6] = [
            vec![1],
            vec![0, 1, 0, 2],
            (1..=20).collect(),
            (1..=200).collect(),
            [vec![7; 140], vec![0, 0, 9]].concat(),
            b"\x10\x00\x00\x000123456789abcdef".to_vec(),
        ];
        for raw in cases {
            let encoded = rzcobs(&raw);
            let decoded = unrzcobs(&encoded[..encoded.len() - 1]).unwrap();
            // Trailing zeros are padding.
            assert_eq!(decoded[..raw.len()], raw[..]);
            assert!(decoded[raw.len()..].iter().all(|&b| b == 0));
        }
        assert_eq!(unrzcobs(&[0x01]), None, "a group with its bytes missing");
        assert_eq!(unrzcobs(&[5, 0]), None, "a zero inside a frame");
        assert_eq!(
            find_build_id(b"\x05\x00\x00\x000.1.0\x10\x00\x00\x00fedcba9876543210\x06"),
            Some("fedcba9876543210".into())
        );
        assert_eq!(find_build_id(b"\x10\x00\x00\x00fedcba987654321x"), None);
    }

    #[test]
    fn the_banner_names_the_build() {
        let id = |m: &str| banner_build_id(m);
        assert_eq!(
            id("pvagent 0.1.0 build 0123456789abcdef (x86_64, PVH), boot 1"),
            Some(Some("0123456789abcdef".into()))
        );
        assert_eq!(id("pvagent 0.1.0 (x86_64, PVH), boot 1"), Some(None));
        assert_eq!(id("pvpanic-isa at 0x505"), None);
        assert_eq!(id("pvagent x build 1"), None);
        assert_eq!(id("pvagent 0.1.0"), None);
        assert_eq!(id(""), None);
    }

    #[test]
    fn a_log_file_is_read_up_to_the_limit() {
        let zero = read_log_file(Path::new("/dev/zero")).unwrap();
        assert!(zero.cut);
        assert_eq!(zero.bytes.len(), MAX_LOG_BYTES);
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.bin");
        std::fs::write(&small, b"D:00\n").unwrap();
        let log = read_log_file(&small).unwrap();
        assert!(!log.cut);
        assert_eq!(log.bytes, b"D:00\n");
        assert!(is_text_log(&small));
        assert!(!is_text_log(Path::new("/dev/zero")));
        assert!(read_log_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn mismatch_messages_name_both_ids_and_the_fix() {
        let check = BuildCheck::Mismatch { log: Some("1111111111111111".into()), image: "2222222222222222".into() };
        let p = check.problem(Path::new("agent.bin"), Path::new("img")).unwrap();
        assert!(p.contains("1111111111111111") && p.contains("2222222222222222") && p.contains("--elf"), "{p}");
        assert!(BuildCheck::Match.problem(Path::new("a"), Path::new("b")).is_none());
        assert!(BuildCheck::NoBanner.problem(Path::new("a"), Path::new("b")).unwrap().contains("another build"));
    }
}
