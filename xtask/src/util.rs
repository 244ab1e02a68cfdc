//! Small helpers: QEMU option escaping, shell quoting, globs, durations,
//! versions, timestamps; where cargo builds and where programs are found.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Escapes a value for QEMU's `key=value,key=value` option syntax: every `,`
/// inside a value must be written as `,,`.
pub fn escape_qemu_opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// Quotes one argument for a POSIX shell (for copy-paste of command lines).
pub fn shell_quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%^".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) { arg.to_string() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}

/// A whole command line, shell-quoted.
pub fn shell_join<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(|a| shell_quote(a.as_ref())).collect::<Vec<_>>().join(" ")
}

/// Glob match with `*` (any run of characters, including `/`) and `?` (one
/// character). Everything else matches literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Parses a duration such as `300ms`, `10s`, `2m`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit (write e.g. \"300ms\", \"10s\" or \"2m\")"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
        return Err(format!("`{s}` is not a duration (write e.g. \"300ms\", \"10s\" or \"2m\")"));
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let factor_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        _ => {
            return Err(format!("`{s}` has unknown unit `{unit}` (use ms, s or m)"));
        }
    };
    let int: u64 = int_part.parse().map_err(|_| format!("`{s}` is out of range"))?;
    let mut ms = int.checked_mul(factor_ms).ok_or_else(|| format!("`{s}` is out of range"))?;
    if !frac_part.is_empty() {
        // Fractions are exact to the millisecond.
        let digits = frac_part.len().min(9) as u32;
        let frac: u64 = frac_part[..digits as usize].parse().map_err(|_| format!("`{s}` is not a duration"))?;
        ms += frac * factor_ms / 10u64.pow(digits);
    }
    Ok(Duration::from_millis(ms))
}

/// Parses a `--timeout`: a duration ([`parse_duration`]) greater than zero
/// (a zero timeout would stop QEMU before it could even connect).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "`{}` is no time at all: a timeout must be greater than zero (write e.g. \"10s\")",
            s.trim()
        ));
    }
    Ok(d)
}

/// Checks that `path` can be an agent image: an existing, non-empty regular
/// file. The error says what the path is instead (missing, a directory, a
/// device, …) and what is expected.
pub fn image_file(path: PathBuf) -> Result<PathBuf, String> {
    use std::os::unix::fs::FileTypeExt;
    const EXPECTED: &str =
        "an image is the agent's ELF file, e.g. target/x86_64-unknown-none/release/pvagent (cargo xtask build)";
    let shown = path.display();
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{shown} does not exist; {EXPECTED}"));
        }
        Err(e) => return Err(format!("cannot read {shown}: {e}; {EXPECTED}")),
    };
    let t = meta.file_type();
    let what = if t.is_file() {
        if meta.len() > 0 {
            return Ok(path);
        }
        "an empty file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(format!("{shown} is {what}, not an image file; {EXPECTED}"))
}

/// Finds the executable `program` in `PATH`, or checks it directly if it
/// contains a `/` (relative to the current directory). The one PATH lookup
/// of the tool.
pub fn find_program(program: &str) -> Option<PathBuf> {
    which::which(program).ok()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` respected; relative values
/// are relative to the workspace root, where cargo is run).
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() { p } else { root.join(p) }
        }
        _ => root.join("target"),
    }
}

/// The name of a signal (`SIGKILL`), for messages; `None` for numbers
/// without a conventional name on Linux.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(sig).ok().and_then(|n| n.checked_sub(1)).and_then(|i| NAMES.get(i)).copied()
}

/// An excerpt of a program's output for one-line messages: the first
/// `lines` non-empty lines joined with ` | `, control characters replaced,
/// at most `max_chars` characters (an ellipsis says when more was cut).
pub fn excerpt(text: &str, lines: usize, max_chars: usize) -> String {
    let joined = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(lines).collect::<Vec<_>>().join(" | ");
    let clean: String = joined.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let more = text.lines().filter(|l| !l.trim().is_empty()).count() > lines;
    if clean.chars().count() > max_chars {
        format!("{}…", clean.chars().take(max_chars).collect::<String>())
    } else if more {
        format!("{clean} | …")
    } else {
        clean
    }
}

/// Human form of a duration, the inverse of [`parse_duration`] for whole ms.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

/// A QEMU version `major.minor.micro`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        Version { major, minor, micro }
    }

    /// Parses `9.1` or `9.1.0`.
    pub fn parse(s: &str) -> Result<Version, String> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "`{s}` is not a version (write \"MAJOR.MINOR\" or \"MAJOR.MINOR.MICRO\", e.g. \"9.1\")"
            ));
        }
        let mut nums = [0u32; 3];
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "`{s}` is not a version (write \"MAJOR.MINOR\" or \"MAJOR.MINOR.MICRO\", e.g. \"9.1\")"
                ));
            }
            nums[i] = p.parse().map_err(|_| format!("`{s}`: number too large"))?;
        }
        Ok(Version::new(nums[0], nums[1], nums[2]))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Short form used in messages such as "needs QEMU ≥ 9.1".
pub fn fmt_min_version(v: Version) -> String {
    if v.micro == 0 { format!("{}.{}", v.major, v.minor) } else { v.to_string() }
}

/// Seconds since the Unix epoch as f64 (for display only).
pub fn unix_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Microseconds since the Unix epoch.
pub fn unix_micros(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    }
}

/// `YYYYMMDD-HHMMSS` in UTC (no time-zone database needed).
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, (rem / 60) % 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_are_doubled() {
        assert_eq!(escape_qemu_opt("a,b,,c"), "a,,b,,,,c");
        assert_eq!(escape_qemu_opt("pvpanic.panicked"), "pvpanic.panicked");
        assert_eq!(format!("string={}", escape_qemu_opt("log:x,y; sleep:1ms")), "string=log:x,,y; sleep:1ms");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("-device"), "-device");
        assert_eq!(shell_quote("name=opt/x,string=a;b"), "'name=opt/x,string=a;b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_join(&["a b", "c"]), "'a b' c");
    }

    #[test]
    fn globs() {
        assert!(glob_match("panicked-*", "panicked-pause/pvpanic-isa"));
        assert!(glob_match("*pci", "panicked-pause/pvpanic-pci"));
        assert!(!glob_match("*pci", "panicked-pause/pvpanic-isa"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1..5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(fmt_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn timeouts_must_be_positive() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
        for zero in ["0s", "0ms", "0.0s", " 0m "] {
            let e = parse_timeout(zero).unwrap_err();
            assert!(e.contains("greater than zero") && e.contains(zero.trim()), "{zero}: {e}");
        }
        assert!(parse_timeout("10").unwrap_err().contains("no unit"));
    }

    #[test]
    fn image_paths_say_what_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = image_file(tmp.path().to_path_buf()).unwrap_err();
        assert!(dir.contains("is a directory, not an image file") && dir.contains("ELF"), "{dir}");
        let null = image_file("/dev/null".into()).unwrap_err();
        assert!(null.starts_with("/dev/null is a character device, not an image file"), "{null}");
        let missing = image_file(tmp.path().join("nope")).unwrap_err();
        assert!(missing.contains("nope does not exist"), "{missing}");
        let empty = tmp.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(image_file(empty.clone()).unwrap_err().contains("is an empty file"));
        std::fs::write(&empty, b"\x7fELF").unwrap();
        assert_eq!(image_file(empty.clone()), Ok(empty));
    }

    #[test]
    fn programs_are_found_in_path_or_by_path() {
        let sh = find_program("sh").expect("sh in PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_program(&sh.display().to_string()), Some(sh));
        assert_eq!(find_program("pvagent-no-such-program"), None);
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("not-executable");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        assert_eq!(find_program(&plain.display().to_string()), None);
        assert_eq!(find_program(&tmp.path().display().to_string()), None, "a directory is no program");
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGKILL), Some("SIGKILL"));
        assert_eq!(signal_name(libc::SIGTERM), Some("SIGTERM"));
        assert_eq!(signal_name(libc::SIGHUP), Some("SIGHUP"));
        assert_eq!(signal_name(libc::SIGINT), Some("SIGINT"));
        assert_eq!(signal_name(libc::SIGSYS), Some("SIGSYS"));
        assert_eq!(signal_name(libc::SIGSEGV), Some("SIGSEGV"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(-1), None);
        assert_eq!(signal_name(40), None);
    }

    #[test]
    fn excerpts() {
        assert_eq!(excerpt("\n a \n\nb\x1b[1m\n", 3, 100), "a | b [1m");
        assert_eq!(excerpt("1\n2\n3\n4\n", 2, 100), "1 | 2 | …");
        assert_eq!(excerpt(&"x".repeat(50), 3, 10), format!("{}…", "x".repeat(10)));
        assert_eq!(excerpt("", 3, 10), "");
    }

    #[test]
    fn versions() {
        assert_eq!(Version::parse("9.1"), Ok(Version::new(9, 1, 0)));
        assert_eq!(Version::parse("10.0.2"), Ok(Version::new(10, 0, 2)));
        assert!(Version::parse("9").is_err());
        assert!(Version::parse("9.x").is_err());
        assert!(Version::parse("9.1.2.3").is_err());
        assert!(Version::new(7, 2, 0) < Version::new(9, 1, 0));
        assert!(Version::new(10, 0, 2) >= Version::new(9, 1, 0));
        assert_eq!(fmt_min_version(Version::new(9, 1, 0)), "9.1");
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(utc_stamp(t), "20231114-221320");
    }
}
