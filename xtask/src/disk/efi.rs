//! The UEFI loader (`uefi-boot/`, package pvagent-uefi): built by cargo
//! for the agent's architecture (x86_64-unknown-uefi, aarch64-unknown-uefi)
//! with the agent's ELF embedded (`PVAGENT_ELF`), and checked to carry
//! exactly that ELF's bytes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use object::{Object, ObjectSegment, ObjectSymbol};

use crate::arch::Arch;
use crate::util::target_dir;

/// The loader's package.
pub const PACKAGE: &str = "pvagent-uefi";
/// What `uefi-boot/build.rs` puts before the embedded image.
const PAYLOAD_MAGIC: &[u8; 16] = b"PVAGENT:PAYLOAD1";

/// The Rust target of the loader around the agent of `arch`, and the name
/// UEFI boots from removable media on `arch` (`\EFI\BOOT\<name>`); `None`:
/// no UEFI loader for `arch` (s390x has no UEFI).
pub const fn uefi(arch: Arch) -> Option<(&'static str, &'static str)> {
    match arch {
        Arch::X86_64 => Some(("x86_64-unknown-uefi", "BOOTX64.EFI")),
        Arch::Aarch64 => Some(("aarch64-unknown-uefi", "BOOTAA64.EFI")),
        Arch::S390x => None,
    }
}

/// The loader's Rust target for `arch`, or why there is none.
pub fn target(arch: Arch) -> Result<&'static str> {
    match uefi(arch) {
        Some((target, _)) => Ok(target),
        None => bail!("there is no UEFI on {arch}, so no UEFI loader and no disk of its agent"),
    }
}

/// Where cargo puts the loader of `arch`.
pub fn efi_path(root: &Path, arch: Arch) -> Result<PathBuf> {
    Ok(target_dir(root).join(target(arch)?).join("release").join(format!("{PACKAGE}.efi")))
}

/// One build at a time in this process (the e2e harness's threads).
static BUILDING: Mutex<()> = Mutex::new(());

/// Builds the loader around the agent `elf` of `arch` (`cargo build
/// --release -p pvagent-uefi --target <arch>-unknown-uefi`, with
/// `PVAGENT_ELF`; a no-op when it is up to date) and returns its bytes,
/// checked to embed `elf`. `quiet`: cargo's `--quiet`.
pub fn build(root: &Path, arch: Arch, elf: &Path, quiet: bool) -> Result<Vec<u8>> {
    let target = target(arch)?;
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let elf = std::path::absolute(elf).with_context(|| format!("the path of {}", elf.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "--release", "-p", PACKAGE, "--target", target];
    if quiet {
        args.push("--quiet");
    } else {
        eprintln!("$ PVAGENT_ELF={} cargo {}", elf.display(), args.join(" "));
    }
    let st =
        Command::new(cargo).args(&args).env("PVAGENT_ELF", &elf).current_dir(root).status().context("running cargo")?;
    if !st.success() {
        bail!(
            "building the UEFI loader ({PACKAGE}, {target}) failed ({st}); is the target installed (rustup target add {target})?"
        );
    }
    let path = efi_path(root, arch)?;
    let efi = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let agent = std::fs::read(&elf).with_context(|| format!("reading {}", elf.display()))?;
    check_embeds(&efi, &agent).with_context(|| format!("{} does not embed {}", path.display(), elf.display()))?;
    Ok(efi)
}

/// The agent's file-backed bytes from `__image_start` to `__file_end`, as
/// uefi-boot/build.rs embeds them (and the ROM carries them).
pub fn image_bytes(elf: &[u8]) -> Result<Vec<u8>> {
    let file = object::File::parse(elf).context("parsing the agent image (ELF)")?;
    let symbol = |name: &str| -> Result<u64> {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .with_context(|| format!("the image has no symbol {name} (is it the agent?)"))
    };
    let (start, end) = (symbol("__image_start")?, symbol("__file_end")?);
    ensure!(start < end, "__image_start {start:#x} is not below __file_end {end:#x}");
    let mut bytes = vec![0u8; usize::try_from(end - start)?];
    for segment in file.segments() {
        let (offset, size) = segment.file_range();
        let address = segment.address();
        if size == 0 || address < start || address >= end {
            continue;
        }
        let data =
            elf.get(usize::try_from(offset)?..usize::try_from(offset + size)?).context("a segment outside the file")?;
        let at = usize::try_from(address - start)?;
        let n = data.len().min(bytes.len() - at);
        bytes[at..at + n].copy_from_slice(&data[..n]);
    }
    Ok(bytes)
}

/// Checks that the loader `efi` embeds the agent `elf` (its payload is that
/// ELF's image bytes): a loader built around another build of the agent
/// would boot that other agent from the ESP.
pub fn check_embeds(efi: &[u8], elf: &[u8]) -> Result<()> {
    let want = image_bytes(elf)?;
    let at = efi
        .windows(PAYLOAD_MAGIC.len())
        .position(|w| w == PAYLOAD_MAGIC)
        .context("the loader holds no agent payload (PVAGENT:PAYLOAD1)")?;
    let len = u32::from_le_bytes(efi.get(at + 20..at + 24).context("a cut payload header")?.try_into()?) as usize;
    let got = efi.get(at + 32..at + 32 + len).context("a cut payload")?;
    ensure!(got == &want[..], "its payload is another build of the agent ({len} bytes, the ELF's {})", want.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_of_other_bytes_is_refused() {
        let e = check_embeds(b"MZ....", b"not an elf").unwrap_err();
        assert!(format!("{e:#}").contains("ELF"), "{e:#}");
        let path = |a| efi_path(Path::new("/w"), a).unwrap();
        assert!(path(Arch::X86_64).ends_with("x86_64-unknown-uefi/release/pvagent-uefi.efi"));
        assert!(path(Arch::Aarch64).ends_with("aarch64-unknown-uefi/release/pvagent-uefi.efi"));
        let e = efi_path(Path::new("/w"), Arch::S390x).unwrap_err().to_string();
        assert!(e.contains("no UEFI on s390x"), "{e}");
    }
}
