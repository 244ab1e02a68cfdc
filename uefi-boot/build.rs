//! Embeds the agent of the loader's architecture: reads its ELF
//! (`PVAGENT_ELF`, which `cargo xtask build` sets) and writes the payload
//! the loader copies to memory: a 32-byte header (magic, load address, file
//! length, memory length, entry) and the image's file-backed bytes. The
//! entry is the agent's UEFI entry (`pvagent_entry64` on x86_64,
//! `pvagent_entry_uefi` on aarch64). Host builds (clippy, tests) embed
//! nothing.
use std::path::PathBuf;

use object::{Object, ObjectSegment, ObjectSymbol};

fn main() {
    println!("cargo::rerun-if-env-changed=PVAGENT_ELF");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("payload.bin");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("uefi") {
        std::fs::write(&out, []).expect("writing the empty payload");
        return;
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let entry = match arch.as_str() {
        "x86_64" => "pvagent_entry64",
        "aarch64" => "pvagent_entry_uefi",
        other => panic!("no agent for UEFI on {other}"),
    };
    let Ok(elf_path) = std::env::var("PVAGENT_ELF") else {
        panic!(
            "PVAGENT_ELF is not set: the UEFI loader embeds the {arch} agent. Build it with \
             `cargo xtask build` (or set PVAGENT_ELF to the agent's ELF, e.g. \
             target/{arch}-unknown-none/release/pvagent)"
        );
    };
    println!("cargo::rerun-if-changed={elf_path}");
    let elf = std::fs::read(&elf_path).unwrap_or_else(|e| panic!("reading {elf_path}: {e}"));
    std::fs::write(&out, payload(&elf, entry).unwrap_or_else(|e| panic!("{elf_path}: {e}")))
        .expect("writing the payload");
}

fn payload(elf: &[u8], entry: &str) -> Result<Vec<u8>, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF file: {e}"))?;
    let symbol = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .ok_or(format!("no symbol {name}: is it the agent of the loader's architecture?"))
    };
    let (start, file_end, end, entry) =
        (symbol("__image_start")?, symbol("__file_end")?, symbol("__image_end")?, symbol(entry)?);
    if !(start < file_end && file_end <= end && start <= entry && entry < file_end && end < 1 << 32) {
        return Err(format!("implausible layout: {start:#x} {file_end:#x} {end:#x}, entry {entry:#x}"));
    }
    let mut bytes = vec![0u8; (file_end - start) as usize];
    for segment in file.segments() {
        let (offset, size) = segment.file_range();
        let address = segment.address();
        if size == 0 || address < start || address >= file_end {
            continue;
        }
        let data = elf.get(offset as usize..(offset + size) as usize).ok_or("a segment outside the file")?;
        let at = (address - start) as usize;
        let n = data.len().min(bytes.len() - at);
        bytes[at..at + n].copy_from_slice(&data[..n]);
    }
    let mut out = Vec::with_capacity(32 + bytes.len());
    out.extend_from_slice(b"PVAGENT:PAYLOAD1");
    for v in [start, file_end - start, end - start, entry] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    out.extend_from_slice(&bytes);
    Ok(out)
}
