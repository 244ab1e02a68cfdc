//! Prerequisites: the Rust targets and a recent enough QEMU (installed from
//! Debian bookworm-backports on bookworm, from the distribution elsewhere).
//! Quick and silent-ish when everything is present.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::config::Board;
use crate::qemu;
use crate::util::{Version, fmt_min_version};

/// QEMU version the whole scenario table needs (older: those rows are skipped).
pub const WANTED_QEMU: Version = Version::new(9, 1, 0);

/// File this tool writes to enable bookworm-backports.
pub const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/pvagent-backports.sources";

/// One apt source (a deb822 stanza or a one-line entry).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AptSource {
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
    pub enabled: bool,
}

/// Parses a deb822 `.sources` file.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let flush = |fields: &mut Vec<(String, String)>, out: &mut Vec<AptSource>| {
        if fields.is_empty() {
            return;
        }
        let get = |k: &str| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
        let words = |k: &str| -> Vec<String> {
            get(k).map(|v| v.split_whitespace().map(String::from).collect()).unwrap_or_default()
        };
        let signed_by = get("Signed-By").map(|s| s.trim().to_string()).filter(|s| !s.is_empty() && !s.contains('\n'));
        out.push(AptSource {
            types: words("Types"),
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            signed_by,
            enabled: get("Enabled").map(|v| !v.trim().eq_ignore_ascii_case("no")).unwrap_or(true),
        });
        fields.clear();
    };
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut fields, &mut out);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut fields, &mut out);
    out
}

/// Parses one-line `sources.list` entries (`deb [opts] URI SUITE COMP…`).
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (ty, rest) = match line.split_once(char::is_whitespace) {
            Some(x) => x,
            None => continue,
        };
        if ty != "deb" && ty != "deb-src" {
            continue;
        }
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let Some((opts, after)) = r.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            types: vec![ty.to_string()],
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(String::from).collect(),
            signed_by,
            enabled: true,
        });
    }
    out
}

/// The Debian mirror the system already uses for `codename` (from a `deb`
/// source whose suites include exactly `codename`; security mirrors are
/// skipped). Returns the URI and the keyring, if one is named.
pub fn debian_mirror(sources: &[AptSource], codename: &str) -> Option<(String, Option<String>)> {
    sources
        .iter()
        .filter(|s| s.enabled && s.types.iter().any(|t| t == "deb"))
        .filter(|s| s.suites.iter().any(|x| x == codename))
        .flat_map(|s| s.uris.iter().map(move |u| (u, s)))
        .find(|(u, _)| !u.contains("security"))
        .map(|(u, s)| (u.trim_end_matches('/').to_string(), s.signed_by.clone()))
}

/// Is `suite` already configured (enabled, type deb) in any source?
pub fn has_suite(sources: &[AptSource], suite: &str) -> bool {
    sources.iter().any(|s| s.enabled && s.types.iter().any(|t| t == "deb") && s.suites.iter().any(|x| x == suite))
}

/// The deb822 stanza for `<codename>-backports` on `uri`.
pub fn backports_stanza(uri: &str, codename: &str, signed_by: Option<&str>) -> String {
    let mut s = format!(
        "# Written by `cargo xtask setup` (pvagent): QEMU >= {} from {codename}-backports.\n\
         Types: deb\nURIs: {uri}\nSuites: {codename}-backports\nComponents: main\n",
        fmt_min_version(WANTED_QEMU)
    );
    if let Some(k) = signed_by {
        s.push_str(&format!("Signed-By: {k}\n"));
    }
    s
}

/// All apt sources of this system.
fn system_sources() -> Vec<AptSource> {
    let mut v = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        v.extend(parse_one_line(&t));
    }
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let Ok(t) = std::fs::read_to_string(&f) else {
                continue;
            };
            match f.extension().and_then(|e| e.to_str()) {
                Some("sources") => v.extend(parse_deb822(&t)),
                Some("list") => v.extend(parse_one_line(&t)),
                _ => {}
            }
        }
    }
    v
}

/// `/etc/os-release` fields we care about.
#[derive(Debug, Default)]
pub struct OsRelease {
    pub id: String,
    pub id_like: String,
    pub codename: String,
}

pub fn parse_os_release(text: &str) -> OsRelease {
    let mut o = OsRelease::default();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "ID" => o.id = v,
                "ID_LIKE" => o.id_like = v,
                "VERSION_CODENAME" => o.codename = v,
                _ => {}
            }
        }
    }
    o
}

impl OsRelease {
    pub fn debian_like(&self) -> bool {
        let like = |w: &str| self.id == w || self.id_like.split_whitespace().any(|x| x == w);
        like("debian") || like("ubuntu")
    }
}

fn run(cmd: &[&str]) -> Result<()> {
    eprintln!("setup: $ {}", cmd.join(" "));
    let st = Command::new(cmd[0])
        .args(&cmd[1..])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running {}", cmd[0]))?;
    if !st.success() {
        bail!("`{}` failed ({st})", cmd.join(" "));
    }
    Ok(())
}

/// The Rust targets that build the images `boards` boot, each once (a disk
/// board also needs its UEFI loader's, x86_64-unknown-uefi or
/// aarch64-unknown-uefi).
pub fn rust_targets(boards: &[&Board]) -> Vec<&'static str> {
    let mut t: Vec<&'static str> =
        boards.iter().map(|b| b.arch).collect::<BTreeSet<_>>().into_iter().map(|a| a.target()).collect();
    let disks: BTreeSet<_> = boards.iter().filter(|b| b.boot == crate::config::Boot::Disk).map(|b| b.arch).collect();
    t.extend(disks.into_iter().filter_map(|a| Some(crate::disk::efi::uefi(a)?.0)));
    t
}

/// What the disk boards need besides QEMU: (what must exist, the Debian
/// package that has it). Their UEFI firmware files; `qemu-img` (qcow2 for
/// `cargo xtask image`); `skopeo` (the test that reads the containerDisk).
pub fn disk_packages(boards: &[&Board]) -> Vec<(String, String)> {
    let mut want: Vec<(String, String)> = Vec::new();
    let mut add = |what: String, pkg: &str| {
        if !want.iter().any(|(w, _)| *w == what) {
            want.push((what, pkg.to_string()));
        }
    };
    for u in boards.iter().filter_map(|b| b.disk.as_ref()?.uefi.as_ref()) {
        add(u.code.display().to_string(), &u.package);
        add(u.vars.display().to_string(), &u.package);
    }
    if boards.iter().any(|b| b.boot == crate::config::Boot::Disk) {
        add("qemu-img".into(), "qemu-utils");
        add("skopeo".into(), "skopeo");
    }
    want
}

/// Installs the packages of the `wanted` files and programs (absolute paths:
/// files; other names: programs in PATH) that are missing: as root on a
/// Debian-like system with apt-get, else an error with the command to run.
pub fn ensure_packages(wanted: &[(String, String)]) -> Result<()> {
    let present = |what: &str| {
        if what.starts_with('/') { Path::new(what).exists() } else { crate::util::find_program(what).is_some() }
    };
    let mut missing: Vec<&str> = Vec::new();
    for (what, pkg) in wanted {
        if !present(what) && !missing.contains(&pkg.as_str()) {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let os = parse_os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default());
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let what: Vec<&str> = wanted.iter().filter(|(w, _)| !present(w)).map(|(w, _)| w.as_str()).collect();
    if !os.debian_like() || !is_root {
        bail!(
            "missing {}. Install them with:\n  sudo apt-get update\n  sudo apt-get install -y {}",
            what.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: missing {}: installing {}", what.join(", "), missing.join(" "));
    run(&["apt-get", "update"])?;
    let mut cmd = vec!["apt-get", "install", "-y", "--no-install-recommends"];
    cmd.extend(&missing);
    run(&cmd)?;
    let still: Vec<&str> = wanted.iter().filter(|(w, _)| !present(w)).map(|(w, _)| w.as_str()).collect();
    if !still.is_empty() {
        bail!("installing {} did not provide {}", missing.join(" "), still.join(", "));
    }
    Ok(())
}

/// Ensures the Rust targets that build the images are installed
/// (`x86_64-unknown-none`, `s390x-unknown-linux-gnu`, `aarch64-unknown-none`).
pub fn ensure_rust_targets(root: &Path, targets: &[&str]) -> Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let out = match Command::new("rustup").args(["target", "list", "--installed"]).current_dir(root).output() {
        Ok(o) => o,
        Err(_) => {
            eprintln!("setup: rustup not found; assuming the toolchain has target(s) {}", targets.join(", "));
            return Ok(());
        }
    };
    if !out.status.success() {
        bail!("`rustup target list --installed` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = targets.iter().copied().filter(|t| !installed.lines().any(|l| l.trim() == *t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: Rust target(s) {} missing: installing", missing.join(", "));
    let st = Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .current_dir(root)
        .status()
        .context("running rustup")?;
    if !st.success() {
        bail!("`rustup target add {}` failed", missing.join(" "));
    }
    Ok(())
}

/// What probing a board's QEMU binary found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QemuProbe {
    /// No such binary in `PATH`: the only case this tool installs QEMU.
    Missing,
    /// The binary exists but its version probe failed (the probe's own
    /// error: command, exit status, stderr). Never installed over.
    Broken(String),
    Found(Version),
}

/// Probes `binary` ([`qemu::qemu_version`], cached).
pub fn probe_qemu(binary: &str) -> QemuProbe {
    if crate::util::find_program(binary).is_none() {
        return QemuProbe::Missing;
    }
    match qemu::qemu_version(binary) {
        Ok(v) => QemuProbe::Found(v),
        Err(e) => QemuProbe::Broken(e),
    }
}

/// Ensures each board's QEMU binary exists and is ≥ 9.1 where this tool can
/// install it; returns the versions found (binary → version).
pub fn ensure_qemu(boards: &[&Board]) -> Result<Vec<(String, Version)>> {
    ensure_qemu_with(boards, probe_qemu, |board, have| {
        let r = install_qemu(board, have);
        qemu::forget_version(&board.binary);
        r
    })
}

/// [`ensure_qemu`] with the probe and the installer given (tests use fakes):
///
/// * a binary that is there and new enough is used;
/// * a binary that is there but fails its probe is an error naming the
///   probe's failure, and nothing is installed over it;
/// * a missing binary is installed (an error if that fails);
/// * an older binary is upgraded where possible; when that fails the older
///   one is used with a warning (the rows needing a newer QEMU are SKIPPED).
pub fn ensure_qemu_with(
    boards: &[&Board],
    mut probe: impl FnMut(&str) -> QemuProbe,
    mut install: impl FnMut(&Board, Option<Version>) -> Result<()>,
) -> Result<Vec<(String, Version)>> {
    let want = fmt_min_version(WANTED_QEMU);
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for b in boards {
        if !done.insert(b.binary.clone()) {
            continue;
        }
        let have = match probe(&b.binary) {
            QemuProbe::Found(v) if v >= WANTED_QEMU => {
                found.push((b.binary.clone(), v));
                continue;
            }
            QemuProbe::Found(v) => Some(v),
            QemuProbe::Missing => None,
            QemuProbe::Broken(e) => bail!(
                "{} is installed but does not work: {e}\n\
                 Not installing over it: repair or remove it (Debian: `apt-get install --reinstall {}`), \
                 or put a working {} first in PATH.",
                b.binary,
                b.package,
                b.binary
            ),
        };
        if let Err(e) = install(b, have) {
            match have {
                Some(v) => {
                    eprintln!(
                        "setup: warning: could not install a newer {}: {e:#}\n\
                         setup: continuing with {} {v}; scenarios needing QEMU ≥ {want} will be SKIPPED",
                        b.package, b.binary
                    );
                    found.push((b.binary.clone(), v));
                    continue;
                }
                None => return Err(e),
            }
        }
        match probe(&b.binary) {
            QemuProbe::Found(v) => {
                if v < WANTED_QEMU {
                    eprintln!("setup: warning: {} is {v}; scenarios needing QEMU ≥ {want} will be SKIPPED", b.binary);
                }
                found.push((b.binary.clone(), v));
            }
            QemuProbe::Missing => bail!("installing {} did not provide {} in PATH", b.package, b.binary),
            QemuProbe::Broken(e) => bail!("{} still unusable after installing {}: {e}", b.binary, b.package),
        }
    }
    Ok(found)
}

fn install_qemu(board: &Board, have: Option<Version>) -> Result<()> {
    let want = fmt_min_version(WANTED_QEMU);
    let problem = match have {
        None => format!("{} is not installed", board.binary),
        Some(v) => format!("{} is {v}, older than {want}", board.binary),
    };
    // With an older QEMU that works, a QEMU this tool cannot install is a
    // warning: the scenarios that need a newer one are SKIPPED.
    let keep =
        have.map(|_| format!("scenarios needing QEMU ≥ {want} will be SKIPPED (install a newer {})", board.package));
    let what = format!("QEMU ≥ {want} providing `{}`", board.binary);
    install_packages(&problem, &[board.package.as_str()], &what, keep.as_deref())
}

/// The Debian packages of libvirt the libvirt boards need: the daemons
/// (libvirtd, virtlogd, the QEMU driver) and `virsh`.
pub const LIBVIRT_PACKAGES: [&str; 2] = ["libvirt-daemon-system", "libvirt-clients"];

/// The programs of [`LIBVIRT_PACKAGES`] the harness runs.
const LIBVIRT_PROGRAMS: [&str; 3] = ["virsh", "libvirtd", "virtlogd"];

/// Ensures libvirt is installed when a libvirt board is among `boards`
/// (after QEMU: the QEMU driver depends on a qemu-system package), from
/// bookworm-backports on Debian bookworm as QEMU is. Never installs over a
/// libvirt that is there.
pub fn ensure_libvirt(boards: &[&Board]) -> Result<()> {
    let Some(board) = boards.iter().find(|b| b.launch.kind == crate::config::BoardKind::Libvirt) else {
        return Ok(());
    };
    let missing: Vec<&str> = LIBVIRT_PROGRAMS
        .into_iter()
        .filter(|p| crate::util::find_program(p).is_none() && !Path::new("/usr/sbin").join(p).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let problem = format!("libvirt is not installed ({} not found; board {} needs it)", missing.join(", "), board.name);
    install_packages(&problem, &LIBVIRT_PACKAGES, "libvirt's daemons and virsh", None)
}

/// Installs `pkgs` (`what`, for messages): on Debian bookworm from
/// bookworm-backports, adding that source with the system's own mirror; on
/// other Debian-like systems from the distribution; or says which commands
/// to run. With `keep` (a working older version is there), whatever this
/// tool cannot install itself is a warning ending in `keep`, not an error,
/// and other Debian-like systems keep what they have.
fn install_packages(problem: &str, pkgs: &[&str], what: &str, keep: Option<&str>) -> Result<()> {
    let os = parse_os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default());
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let list = pkgs.join(" ");
    let give_up = |msg: String| match keep {
        Some(keep) => {
            eprintln!("setup: warning: {msg}\nsetup: continuing; {keep}");
            Ok(())
        }
        None => Err(anyhow::anyhow!(msg)),
    };
    if os.id == "debian" && os.codename == "bookworm" {
        let sources = system_sources();
        let mirror = debian_mirror(&sources, "bookworm");
        let need_source = !has_suite(&sources, "bookworm-backports");
        let (uri, key) = mirror.clone().unwrap_or_else(|| ("<your Debian mirror>".into(), None));
        let stanza = backports_stanza(&uri, "bookworm", key.as_deref());
        if !is_root || mirror.is_none() {
            let mut msg = format!("{problem}. Install {what} from bookworm-backports:\n");
            if need_source {
                msg.push_str(&format!("  sudo tee {BACKPORTS_FILE} <<'EOF'\n{stanza}EOF\n"));
            }
            msg.push_str(&format!("  sudo apt-get update\n  sudo apt-get install -y -t bookworm-backports {list}"));
            return give_up(msg);
        }
        eprintln!("setup: {problem}: installing {list} from bookworm-backports");
        if need_source {
            eprintln!("setup: writing {BACKPORTS_FILE} (mirror {uri})");
            std::fs::write(BACKPORTS_FILE, &stanza).with_context(|| format!("writing {BACKPORTS_FILE}"))?;
        }
        run(&["apt-get", "update"])?;
        let mut cmd = vec!["apt-get", "install", "-y", "-t", "bookworm-backports"];
        cmd.extend(pkgs);
        return run(&cmd);
    }
    if os.debian_like() {
        if let Some(keep) = keep {
            eprintln!("setup: warning: {problem}; {keep}");
            return Ok(());
        }
        if !is_root {
            bail!("{problem}. Install it with:\n  sudo apt-get update\n  sudo apt-get install -y {list}");
        }
        eprintln!("setup: {problem}: installing {list}");
        run(&["apt-get", "update"])?;
        let mut cmd = vec!["apt-get", "install", "-y"];
        cmd.extend(pkgs);
        return run(&cmd);
    }
    give_up(format!(
        "{problem}, and this is not a Debian-like system this tool can install on. Install {what} with your \
         package manager (Debian: {list})."
    ))
}

/// Everything `qemu-run` and `test` need for `boards`: the Rust target of
/// each board's architecture, each board's QEMU, libvirt for the libvirt
/// boards and, for a nested board, L1's kernel and initramfs; the launchers'
/// own preparation (`launch::setup`: the libvirt boards' daemons, checked or
/// started).
pub fn setup(root: &Path, boards: &[&Board]) -> Result<Vec<(String, Version)>> {
    ensure_rust_targets(root, &rust_targets(boards))?;
    let versions = ensure_qemu(boards)?;
    ensure_libvirt(boards)?;
    ensure_packages(&disk_packages(boards))?;
    // Host probes of boards with `requires`, and the nested board's L1.
    crate::launch::setup(boards);
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_mirror() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].suites, vec!["bookworm", "bookworm-updates"]);
        assert_eq!(
            debian_mirror(&s, "bookworm"),
            Some((
                "http://mirror.example/debian".into(),
                Some("/usr/share/keyrings/debian-archive-keyring.gpg".into())
            ))
        );
        assert!(!has_suite(&s, "bookworm-backports"));
        assert!(has_suite(&s, "bookworm-security"));
    }

    #[test]
    fn security_first_and_disabled_are_skipped() {
        let text = "\
Types: deb
URIs: http://security.debian.org/debian-security
Suites: bookworm bookworm-security
Components: main

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Enabled: no

Types: deb-src deb
URIs: https://m.example/debian/
Suites: bookworm
Components: main
";
        let s = parse_deb822(text);
        assert_eq!(debian_mirror(&s, "bookworm"), Some(("https://m.example/debian".into(), None)));
    }

    #[test]
    fn one_line_sources() {
        let text = "\
# comment
deb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main contrib
deb http://ftp.example/debian-security bookworm-security main
deb-src http://src.example/debian bookworm main
deb http://ftp.example/debian bookworm-backports main  # trailing
";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 4);
        assert_eq!(debian_mirror(&s, "bookworm"), Some(("http://ftp.example/debian".into(), Some("/k.gpg".into()))));
        assert!(has_suite(&s, "bookworm-backports"));
        // Only a bookworm-updates stanza: no exact match.
        assert_eq!(debian_mirror(&parse_one_line("deb http://x bookworm-updates main"), "bookworm"), None);
    }

    #[test]
    fn continuation_lines_and_inline_keys() {
        let text = "Types: deb\nURIs: http://a.example/debian\n  http://b.example/debian\nSuites: bookworm\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n xyz\n";
        let s = parse_deb822(text);
        assert_eq!(s[0].uris.len(), 2);
        assert_eq!(s[0].signed_by, None, "inline key blocks are not copied");
        assert_eq!(debian_mirror(&s, "bookworm").unwrap().0, "http://a.example/debian");
    }

    #[test]
    fn stanza_text() {
        let st = backports_stanza("http://m/debian", "bookworm", Some("/k.gpg"));
        let parsed = parse_deb822(&st);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].uris, vec!["http://m/debian"]);
        assert_eq!(parsed[0].suites, vec!["bookworm-backports"]);
        assert_eq!(parsed[0].signed_by.as_deref(), Some("/k.gpg"));
    }

    fn board(binary: &str) -> Board {
        crate::config::parse_board(
            Path::new("boards/pc.toml"),
            &format!(
                "name = \"pc\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"{binary}\"\nmachine = \"pc\"\n\
                 accel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-x86\"\n"
            ),
            Path::new("/w"),
        )
        .unwrap()
    }

    /// Runs [`ensure_qemu_with`] with `probes` answered in turn; returns the
    /// result and how often the installer ran.
    fn ensure(probes: Vec<QemuProbe>, install: impl Fn() -> Result<()>) -> (Result<Vec<(String, Version)>>, usize) {
        let b = board("qemu-system-x86_64");
        let mut probes = probes.into_iter();
        let mut installs = 0;
        let r = ensure_qemu_with(
            &[&b],
            |_| probes.next().expect("no more probes expected"),
            |_, _| {
                installs += 1;
                install()
            },
        );
        (r, installs)
    }

    const OLD: Version = Version::new(7, 2, 0);
    const NEW: Version = Version::new(10, 0, 2);

    #[test]
    fn a_broken_qemu_is_reported_and_never_installed_over() {
        let why = "version probe `qemu-system-x86_64 -M none …` failed: it ended (exit status 1) before answering \
                   on QMP; stderr: qemu-system-x86_64: error while loading shared libraries: libfdt.so.1";
        let (r, installs) = ensure(vec![QemuProbe::Broken(why.into())], || panic!("must not install"));
        let e = format!("{:#}", r.unwrap_err());
        assert_eq!(installs, 0);
        assert!(e.contains("qemu-system-x86_64 is installed but does not work"), "{e}");
        assert!(e.contains("exit status 1") && e.contains("libfdt.so.1"), "{e}");
        assert!(e.contains("Not installing over it"), "{e}");
        assert!(!e.contains("not installed"), "{e}");
    }

    #[test]
    fn an_older_qemu_is_kept_when_installing_fails() {
        let (r, installs) = ensure(vec![QemuProbe::Found(OLD)], || bail!("`apt-get update` failed (exit status: 100)"));
        assert_eq!(installs, 1);
        assert_eq!(r.unwrap(), vec![("qemu-system-x86_64".to_string(), OLD)]);
        // Installing worked: the new version is probed again and used.
        let (r, installs) = ensure(vec![QemuProbe::Found(OLD), QemuProbe::Found(NEW)], || Ok(()));
        assert_eq!((r.unwrap()[0].1, installs), (NEW, 1));
    }

    #[test]
    fn a_missing_qemu_is_installed_and_failures_abort() {
        let (r, installs) = ensure(vec![QemuProbe::Missing], || bail!("`apt-get update` failed"));
        assert_eq!(installs, 1);
        assert!(format!("{:#}", r.unwrap_err()).contains("apt-get update"));
        let (r, _) = ensure(vec![QemuProbe::Missing, QemuProbe::Found(NEW)], || Ok(()));
        assert_eq!(r.unwrap()[0].1, NEW);
        let (r, _) = ensure(vec![QemuProbe::Missing, QemuProbe::Missing], || Ok(()));
        assert!(format!("{:#}", r.unwrap_err()).contains("did not provide qemu-system-x86_64"));
        // New enough from the start: nothing installed.
        let (r, installs) = ensure(vec![QemuProbe::Found(NEW)], || panic!("must not install"));
        assert_eq!((r.unwrap()[0].1, installs), (NEW, 0));
    }

    /// A real probe of a fake `qemu-system-*` that fails: `setup` reports
    /// the probe's own error and installs nothing.
    #[test]
    fn a_failing_fake_binary_is_broken_not_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = crate::qemu::tests::fake_binary(
            tmp.path(),
            "qemu-system-x86_64",
            "echo 'qemu-system-x86_64: fake: cannot load libslirp.so.0' >&2\nexit 1\n",
        );
        let bin = bin.to_str().unwrap();
        let probed = probe_qemu(bin);
        let QemuProbe::Broken(e) = &probed else { panic!("{probed:?}") };
        assert!(e.contains("-M none") && e.contains("exit status 1") && e.contains("libslirp.so.0"), "{e}");
        let b = board(bin);
        let e = ensure_qemu_with(&[&b], probe_qemu, |_, _| panic!("must not install")).unwrap_err();
        assert!(format!("{e:#}").contains("is installed but does not work"), "{e:#}");
        assert_eq!(probe_qemu(tmp.path().join("qemu-system-none").to_str().unwrap()), QemuProbe::Missing);
    }

    /// Each board's QEMU package and Rust target: what `setup --board`
    /// installs on a fresh machine (virt: qemu-system-arm, whose
    /// qemu-system-aarch64 `ensure_qemu` probes, and aarch64-unknown-none).
    #[test]
    fn packages_and_targets_of_the_workspace_boards() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let boards = crate::config::load_boards(&root.join("boards"), root).unwrap();
        let board = |n: &str| boards.iter().find(|b| b.name == n).unwrap();
        let virt = board("virt");
        assert_eq!((virt.binary.as_str(), virt.package.as_str()), ("qemu-system-aarch64", "qemu-system-arm"));
        assert_eq!(rust_targets(&[virt]), ["aarch64-unknown-none"]);
        assert_eq!(
            rust_targets(&[board("pc"), virt, board("q35"), board("s390-ccw-virtio")]),
            ["x86_64-unknown-none", "s390x-unknown-linux-gnu", "aarch64-unknown-none"]
        );
        // rust-toolchain.toml lists every target, so that rustup installs
        // them with the toolchain, before `setup` runs.
        let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
        let targets = toolchain.lines().find(|l| l.starts_with("targets")).unwrap();
        for a in crate::arch::Arch::ALL {
            assert!(targets.contains(&format!("\"{}\"", a.target())), "{} missing from {targets}", a.target());
        }
    }

    #[test]
    fn os_release() {
        let o = parse_os_release("ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n");
        assert!(o.debian_like());
        assert_eq!(o.codename, "noble");
        let o = parse_os_release("ID=\"fedora\"\n");
        assert!(!o.debian_like());
    }
}
