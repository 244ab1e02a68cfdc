//! The host-side log decoder (`cargo xtask decode`, `xtask::defmt_log`) on
//! arbitrary bytes, with a real image's defmt table: the x86_64 image at
//! `$PVAGENT_FUZZ_ELF`, by default the workspace's release image
//! (`cargo xtask build`; `cargo xtask fuzz decode` builds it and sets the
//! variable). Checked: decoding returns, keeps its bounds, prints no
//! control character, says "this build" only for a log that names it, and
//! the s390x form (`D:<hex>` lines) of the same bytes decodes to the same
//! lines.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use xtask::defmt_log::{BuildCheck, LogTable, MAX_LINES};

static TABLE: LazyLock<LogTable> = LazyLock::new(|| {
    let path = std::env::var_os("PVAGENT_FUZZ_ELF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/x86_64-unknown-none/release/pvagent"))
    });
    LogTable::from_file(&path).unwrap_or_else(|e| {
        panic!("the decode target needs an image (cargo xtask build, or PVAGENT_FUZZ_ELF=<image>): {e:#}")
    })
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let d = TABLE.decode_log(data);
    assert!(d.lines.len() <= MAX_LINES + 1);
    assert!(d.frames + d.malformed <= data.len());
    for line in &d.lines {
        assert!(!line.chars().any(|c| c.is_control() && c != '\t'), "a control character in {line:?}");
    }
    match &d.build {
        BuildCheck::Match => {
            let id = TABLE.build_id().expect("a match needs the image's id");
            assert!(d.lines.iter().any(|l| l.contains(id)), "a match without the id in the text");
        }
        BuildCheck::NoFrames => assert_eq!(d.frames + d.malformed, 0),
        _ => assert!(d.frames + d.malformed > 0),
    }
    if !data.trim_ascii_start().starts_with(b"D:") {
        let text = format!("D:{}\n", hex(data));
        let s390x = TABLE.decode_log(text.as_bytes());
        assert_eq!(s390x.lines, d.lines, "the D:<hex> form decodes differently");
        assert_eq!(s390x.build, d.build);
    }
});
