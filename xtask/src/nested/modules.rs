//! The kernel modules L1 loads, with their dependencies, decompressed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use super::run;

/// `kvm-amd` and `kvm_amd` are the same module.
pub(super) fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name → file, for every `*.ko[.xz|.zst|.gz]` under `dir`.
pub(super) fn module_index(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                if let Some(stem) = name.strip_suffix(ext) {
                    out.insert(normalize_module(stem), p.clone());
                }
            }
        }
    }
    Ok(out)
}

/// A module's bytes, decompressed (busybox insmod hands them to
/// init_module(2) as they are).
pub(super) fn read_module(p: &Path) -> Result<Vec<u8>> {
    let name = p.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => Ok(fs::read(p)?),
        Some(t) => Ok(run(Command::new(t).arg("-dc").arg(p)).with_context(|| format!("decompressing {name}"))?.stdout),
    }
}

/// The `depends=` of a module's `.modinfo`.
fn module_depends(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(b"depends="))
        .flat_map(|d| String::from_utf8_lossy(d).split(',').map(|x| normalize_module(x.trim())).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Appends `name` after its dependencies (depth-first).
pub(super) fn module_order(
    index: &BTreeMap<String, PathBuf>,
    name: &str,
    order: &mut Vec<String>,
    depth: u32,
) -> Result<()> {
    if order.iter().any(|m| m == name) {
        return Ok(());
    }
    if depth > 32 {
        bail!("module dependency loop at {name}");
    }
    let file = index.get(name).ok_or_else(|| anyhow!("the L1 kernel has no module {name}"))?;
    for dep in module_depends(&read_module(file)?) {
        module_order(index, &dep, order, depth + 1)?;
    }
    order.push(name.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_depends_parsing() {
        let modinfo = b"\0license=GPL\0depends=kvm,irq-bypass\0name=kvm_amd\0";
        assert_eq!(module_depends(modinfo), vec!["kvm".to_string(), "irq_bypass".to_string()]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }
}
