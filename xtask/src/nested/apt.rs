//! The Debian packages L1 is made of (the cloud kernel and busybox):
//! resolved with `apt-cache`, fetched with `apt-get download` (never
//! installed), unpacked with `dpkg-deb -x` into the cache.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use super::modules::{module_index, module_order, normalize_module, read_module};
use super::{BUSYBOX_PACKAGE, KERNEL_META_PACKAGE, MODULES, fnv1a, is_root, remove_others, run, stat_line};
use crate::util::find_program;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Resolution {
    stamp: String,
    kernel: (String, String),
    busybox: (String, String),
}

impl Resolution {
    fn render(&self) -> String {
        format!("stamp {}\nkernel {}\nbusybox {}\n", self.stamp, self.kernel_line(), self.busybox_line())
    }

    fn parse(text: &str) -> Option<Resolution> {
        let mut stamp = None;
        let mut kernel = None;
        let mut busybox = None;
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("stamp"), Some(s), None) => stamp = Some(s.to_string()),
                (Some("kernel"), Some(p), Some(v)) => kernel = Some((p.to_string(), v.to_string())),
                (Some("busybox"), Some(p), Some(v)) => busybox = Some((p.to_string(), v.to_string())),
                _ => {}
            }
        }
        Some(Resolution { stamp: stamp?, kernel: kernel?, busybox: busybox? })
    }

    pub(super) fn kernel_line(&self) -> String {
        format!("{} {}", self.kernel.0, self.kernel.1)
    }

    pub(super) fn busybox_line(&self) -> String {
        format!("{} {}", self.busybox.0, self.busybox.1)
    }

    fn kernel_dir(&self) -> String {
        dir_name(&format!("{}_{}", self.kernel.0, self.kernel.1))
    }

    fn busybox_dir(&self) -> String {
        dir_name(&self.busybox.1)
    }
}

/// A version as a directory name (`:` of epochs → `%3a`, as apt does).
fn dir_name(s: &str) -> String {
    s.replace(':', "%3a").replace('/', "_")
}

/// Can apt give L1's packages? Yes when the cache holds a resolved and
/// unpacked kernel, or apt knows the packages (or we are root, and
/// [`resolve_packages`] may run `apt-get update`). Never downloads.
pub(super) fn probe(cache_root: &Path) -> std::result::Result<(), String> {
    let cached = fs::read_to_string(cache_root.join("apt-resolution.txt"))
        .ok()
        .and_then(|t| Resolution::parse(&t))
        .is_some_and(|r| cache_root.join("kernel").join(r.kernel_dir()).join("complete").exists());
    if cached {
        return Ok(());
    }
    for tool in ["apt-get", "apt-cache"] {
        if find_program(tool).is_none() {
            return Err(format!(
                "`{tool}` not found: the nested board fetches {KERNEL_META_PACKAGE} and {BUSYBOX_PACKAGE} with apt"
            ));
        }
    }
    match apt_show(&[KERNEL_META_PACKAGE]) {
        Ok(s) if !s.is_empty() => Ok(()),
        _ if is_root() => Ok(()), // resolve_packages runs `apt-get update` first
        _ => Err(format!(
            "apt knows no {KERNEL_META_PACKAGE} (run `apt-get update` as root; \
             the nested board needs Debian's cloud kernel for L1)"
        )),
    }
}

/// Names, sizes and mtimes of apt's lists and configuration: changes exactly
/// when a candidate version may have changed.
fn apt_stamp() -> String {
    let mut s = String::new();
    for dir in ["/var/lib/apt/lists", "/etc/apt/sources.list.d", "/etc/apt/preferences.d"] {
        let Ok(rd) = fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            if let Ok(m) = fs::metadata(&p) {
                s.push_str(&format!("{} {} {}.{}\n", p.display(), m.size(), m.mtime(), m.mtime_nsec()));
            }
        }
    }
    for f in ["/etc/apt/sources.list", "/etc/apt/preferences"] {
        if let Ok(l) = stat_line(Path::new(f)) {
            s.push_str(&l);
            s.push('\n');
        }
    }
    format!("{:016x}", fnv1a(s.as_bytes()))
}

/// `apt-cache show --no-all-versions PKG…` (candidate stanzas).
fn apt_show(pkgs: &[&str]) -> Result<String> {
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions"]).args(pkgs))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses deb822 stanzas into (Package, Version, Depends).
fn parse_stanzas(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The concrete kernel package the meta package depends on.
fn kernel_dependency(meta_stanza: &BTreeMap<String, String>) -> Option<String> {
    meta_stanza
        .get("Depends")?
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .map(String::from)
}

fn resolve_now() -> Result<Resolution> {
    let stamp = apt_stamp();
    let meta = parse_stanzas(&apt_show(&[KERNEL_META_PACKAGE])?);
    let kpkg = meta
        .first()
        .and_then(kernel_dependency)
        .ok_or_else(|| anyhow!("{KERNEL_META_PACKAGE} has no linux-image-* dependency"))?;
    let stanzas = parse_stanzas(&apt_show(&[&kpkg, BUSYBOX_PACKAGE])?);
    let version = |p: &str| -> Result<(String, String)> {
        let s = stanzas
            .iter()
            .find(|s| s.get("Package").map(String::as_str) == Some(p))
            .ok_or_else(|| anyhow!("apt-cache show lists no {p}"))?;
        let v = s.get("Version").ok_or_else(|| anyhow!("{p} has no Version"))?;
        Ok((p.to_string(), v.clone()))
    };
    Ok(Resolution { stamp, kernel: version(&kpkg)?, busybox: version(BUSYBOX_PACKAGE)? })
}

fn apt_update(log: &mut dyn FnMut(&str)) -> Result<()> {
    if !is_root() {
        bail!("apt-get update needs root (run it once: `sudo apt-get update`)");
    }
    log("nested: apt-get update");
    run(Command::new("apt-get").args(["-q", "update"]))?;
    Ok(())
}

/// The package versions to use: the cached resolution while apt's state is
/// unchanged, else the current candidates (`apt-get update` first if apt
/// knows nothing about them).
pub(super) fn resolve_packages(cache_root: &Path, log: &mut dyn FnMut(&str)) -> Result<Resolution> {
    let file = cache_root.join("apt-resolution.txt");
    let stamp = apt_stamp();
    if let Some(r) = fs::read_to_string(&file).ok().and_then(|t| Resolution::parse(&t))
        && r.stamp == stamp
    {
        return Ok(r);
    }
    let r = match resolve_now() {
        Ok(r) => r,
        Err(first) => {
            apt_update(log).with_context(|| format!("{first:#}"))?;
            resolve_now()?
        }
    };
    fs::write(&file, r.render())?;
    Ok(r)
}

/// Downloads `pkg=version` into `dir`; on failure (stale lists) updates once.
fn download(dir: &Path, pkg: &str, version: &str, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    log(&format!("nested: downloading {pkg} {version}"));
    let get = || {
        run(Command::new("apt-get")
            .current_dir(dir)
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{pkg}={version}")))
    };
    if let Err(e) = get() {
        apt_update(log).with_context(|| format!("{e:#}"))?;
        get()?;
    }
    fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .ok_or_else(|| anyhow!("apt-get download {pkg} produced no .deb"))
}

fn extract_deb(deb: &Path, into: &Path) -> Result<()> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into))?;
    Ok(())
}

/// One package of the cache, unpacked into `<kind>/<dir_name>/`: reused when
/// its `complete` marker is there, else downloaded, extracted into a
/// staging directory, filled by `fill(extracted, out)`, marked complete and
/// moved into place (older generations removed).
fn cached_package(
    cache_root: &Path,
    kind: &str,
    dir_name: String,
    package: &(String, String),
    complete_line: String,
    log: &mut dyn FnMut(&str),
    fill: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let parent = cache_root.join(kind);
    let dir = parent.join(dir_name);
    if dir.join("complete").exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&parent)?;
    let dl = tmp.path().join("deb");
    let x = tmp.path().join("x");
    let out = tmp.path().join("out");
    for d in [&dl, &x, &out] {
        fs::create_dir_all(d)?;
    }
    let deb = download(&dl, &package.0, &package.1, log)?;
    extract_deb(&deb, &x)?;
    fill(&x, &out)?;
    fs::write(out.join("complete"), format!("{complete_line}\n"))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&out, &dir)?;
    remove_others_except(&parent, &dir);
    Ok(dir)
}

/// The kernel package unpacked into `kernel/<pkg>_<ver>/`: vmlinuz, config,
/// the needed modules (decompressed) and their load order.
pub(super) fn ensure_kernel(cache_root: &Path, res: &Resolution, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    cached_package(cache_root, "kernel", res.kernel_dir(), &res.kernel, res.kernel_line(), log, |x, out| {
        fs::create_dir_all(out.join("modules"))?;
        let boot = x.join("boot");
        let find = |prefix: &str| -> Result<PathBuf> {
            fs::read_dir(&boot)
                .with_context(|| format!("{} has no /boot", res.kernel.0))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
                .ok_or_else(|| anyhow!("{} has no /boot/{prefix}*", res.kernel.0))
        };
        let vmlinuz = find("vmlinuz-")?;
        let config = find("config-")?;
        let config_text = fs::read_to_string(&config)?;
        if config_text.lines().any(|l| l.trim() == "# CONFIG_KVM_HYPERV is not set") {
            bail!("{} is built without CONFIG_KVM_HYPERV: L1 could not emulate the Hyper-V crash MSRs", res.kernel.0);
        }
        let kver =
            vmlinuz.file_name().and_then(|n| n.to_str()).unwrap_or("").trim_start_matches("vmlinuz-").to_string();
        let moddir = [x.join("lib/modules").join(&kver), x.join("usr/lib/modules").join(&kver)]
            .into_iter()
            .find(|p| p.is_dir())
            .ok_or_else(|| anyhow!("{} has no lib/modules/{kver}", res.kernel.0))?;
        let index = module_index(&moddir)?;
        let mut order = Vec::new();
        for m in MODULES {
            module_order(&index, &normalize_module(m), &mut order, 0)?;
        }
        for m in &order {
            let data = read_module(&index[m])?;
            fs::write(out.join(format!("modules/{m}.ko")), data)?;
        }
        fs::copy(&vmlinuz, out.join("vmlinuz"))?;
        fs::copy(&config, out.join("config"))?;
        fs::write(out.join("load-order"), order.join("\n") + "\n")?;
        Ok(())
    })
}

/// Removes sibling cache generations (not temp dirs of concurrent builders:
/// those are under the lock anyway).
fn remove_others_except(parent: &Path, keep: &Path) {
    if let Some(name) = keep.file_name().and_then(|n| n.to_str()) {
        remove_others(parent, name);
    }
}

/// busybox-static unpacked into `busybox/<ver>/`: the binary and its applet list.
pub(super) fn ensure_busybox(cache_root: &Path, res: &Resolution, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    cached_package(cache_root, "busybox", res.busybox_dir(), &res.busybox, res.busybox_line(), log, |x, out| {
        let bin = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| x.join(p))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("{} has no bin/busybox", res.busybox.0))?;
        fs::copy(&bin, out.join("busybox"))?;
        fs::set_permissions(out.join("busybox"), fs::Permissions::from_mode(0o755))?;
        let list = run(Command::new(out.join("busybox")).arg("--list-full"))?;
        fs::write(out.join("applets"), &list.stdout)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_parsing() {
        let s = parse_stanzas(
            "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n\n",
        );
        assert_eq!(kernel_dependency(&s[0]).as_deref(), Some("linux-image-6.1.0-56-cloud-amd64"));
        let r = Resolution {
            stamp: "ab".into(),
            kernel: ("linux-image-x".into(), "6.1-2".into()),
            busybox: ("busybox-static".into(), "1:1.35".into()),
        };
        assert_eq!(Resolution::parse(&r.render()), Some(r.clone()));
        assert_eq!(r.busybox_dir(), "1%3a1.35");
    }
}
