//! The host QEMU's files that L1 carries: the libraries `ldd` lists and the
//! firmware L2 may load.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use super::{FIRMWARE, run};

/// The libraries `ldd` lists for `binary` (including the dynamic loader).
pub(super) fn ldd(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(binary))?;
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("=> not found") {
            bail!("ldd: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 (and `statically linked`) have no file.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The [`FIRMWARE`] files present in QEMU's data directories.
pub(super) fn find_firmware(qemu: &Path) -> Result<Vec<PathBuf>> {
    let dirs = firmware_dirs(qemu)?;
    let mut found = Vec::new();
    for (name, required) in FIRMWARE {
        match dirs.iter().map(|d| d.join(name)).find(|p| p.exists()) {
            Some(p) => found.push(p),
            None if required => bail!(
                "{name} not found in {}'s data directories ({})",
                qemu.display(),
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
            None => {}
        }
    }
    Ok(found)
}

/// QEMU's firmware search path (`-L help`).
fn firmware_dirs(qemu: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new(qemu).args(["-L", "help"]).stderr(Stdio::piped()))?;
    let dirs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    if dirs.is_empty() {
        bail!("{} -L help listed no data directory", qemu.display());
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_parsing() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x1)\n\
                 \t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(t).unwrap(),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }
}
