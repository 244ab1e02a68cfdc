//! `cargo xtask fuzz [TARGET] [--time 60s]`: coverage-guided fuzzing
//! (cargo-fuzz, libFuzzer) of every parser of untrusted input, the targets of
//! `fuzz/` (its own crate and workspace, on the nightly pinned in
//! `fuzz/rust-toolchain.toml`; the project stays on stable).
//!
//! Each target runs for `--time` on its corpus (`fuzz/corpus/<target>/`,
//! generated, gitignored) plus the seeds kept in the repository
//! (`fuzz/seeds/<target>/`). What fuzzing needs is installed when asked to
//! fuzz: the pinned nightly (`rustup toolchain install <channel> --profile
//! minimal`) and cargo-fuzz (`cargo install cargo-fuzz --locked`). A crash
//! leaves its input in `fuzz/artifacts/<target>/` and fails the command
//! with the command that reproduces it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::images::{self, Arch};

/// The targets, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: [&str; 4] = ["script", "fw_cfg", "decode", "qmp"];

/// The variable naming the image whose defmt table the `decode` target
/// decodes with.
pub const ELF_ENV: &str = "PVAGENT_FUZZ_ELF";

/// Seconds libFuzzer gives one input before calling it a hang (a crash).
const INPUT_TIMEOUT_S: u64 = 10;

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// The target to run (script, fw_cfg, decode, qmp) [default: all, one after the other]
    #[arg(value_parser = TARGETS)]
    pub target: Option<String>,
    /// How long to run each target (e.g. 60s, 10m)
    #[arg(long, default_value = "60s", value_parser = parse_time)]
    pub time: Duration,
    /// Build the targets with AddressSanitizer (about 4x fewer executions a second; the targets are
    /// safe Rust, so it only watches the unsafe code of their dependencies)
    #[arg(long)]
    pub asan: bool,
    /// More libFuzzer options, after `--` (e.g. `-- -max_len=8192`)
    #[arg(last = true)]
    pub libfuzzer_args: Vec<String>,
}

fn parse_time(s: &str) -> Result<Duration, String> {
    let d = crate::util::parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("`{s}` is less than a second"));
    }
    Ok(d)
}

/// What one target's run came to, from libFuzzer's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Inputs executed (`Done N runs`, or the last status line).
    pub runs: Option<u64>,
    /// Coverage of the last status line: edges (`cov`) and features (`ft`).
    pub cov: Option<u64>,
    pub ft: Option<u64>,
    /// Corpus size in inputs (`corp`).
    pub corpus: Option<u64>,
    /// libFuzzer's seconds (`Done N runs in S second(s)`).
    pub seconds: Option<u64>,
    /// When libFuzzer started (its `INFO: Seed:` line): the build is not
    /// fuzzing time.
    pub started: Option<Instant>,
    /// The input that crashed (or hung) the target.
    pub artifact: Option<PathBuf>,
    /// libFuzzer's one-line reason (`deadly signal`, `timeout`, …).
    pub crash: Option<String>,
}

impl Outcome {
    /// Takes in one line of libFuzzer's (or cargo-fuzz's) output.
    pub fn scan(&mut self, line: &str) {
        let line = line.trim();
        if line.starts_with("INFO: Seed:") {
            self.started.get_or_insert_with(Instant::now);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            let mut words = rest.split_whitespace();
            if let (Some(n), Some("runs"), Some("in"), Some(s)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                self.runs = n.parse().ok().or(self.runs);
                self.seconds = s.parse().ok().or(self.seconds);
            }
        } else if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = n.trim().parse().ok().or(self.runs);
        } else if let Some(status) = line.strip_prefix('#') {
            // `#123456 pulse  cov: 1234 ft: 5678 corp: 90/1234b lim: 4096 exec/s: 100 rss: 50Mb`
            let mut words = status.split_whitespace();
            let Some(Ok(n)) = words.next().map(str::parse::<u64>) else {
                return;
            };
            self.runs = Some(n);
            let words: Vec<&str> = words.collect();
            for pair in words.windows(2) {
                let value = pair[1].split('/').next().unwrap_or("");
                match pair[0] {
                    "cov:" => self.cov = value.parse().ok().or(self.cov),
                    "ft:" => self.ft = value.parse().ok().or(self.ft),
                    "corp:" => self.corpus = value.parse().ok().or(self.corpus),
                    _ => {}
                }
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.artifact = Some(PathBuf::from(path.trim()));
        } else if let Some((_, what)) = line.split_once("ERROR: libFuzzer: ") {
            self.crash.get_or_insert_with(|| what.trim().to_string());
        } else if line.starts_with("thread '") && line.contains("panicked at") {
            self.crash.get_or_insert_with(|| line.to_string());
        }
    }

    /// The line of the summary table.
    pub fn summary(&self, target: &str, ok: bool) -> String {
        let n = |v: Option<u64>| v.map_or("?".to_string(), group_digits);
        format!(
            "{target:<7} {:>14} runs in {:>5}s  cov {:>5}  ft {:>6}  corpus {:>5}  {}",
            n(self.runs),
            self.seconds.map_or("?".into(), |s| s.to_string()),
            n(self.cov),
            n(self.ft),
            n(self.corpus),
            match (&self.artifact, ok) {
                (Some(a), _) => format!("CRASH {}", a.display()),
                (None, true) => "ok, no crash".into(),
                (None, false) => "FAILED".into(),
            }
        )
    }
}

/// `1234567` → `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The nightly channel pinned in `fuzz/rust-toolchain.toml`.
pub fn pinned_toolchain(fuzz_dir: &Path) -> Result<String> {
    let path = fuzz_dir.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value: toml::Value = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    value
        .get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(String::from)
        .with_context(|| format!("{} has no [toolchain] channel", path.display()))
}

/// A command of rustup's, cargo's or cargo-fuzz's, without the toolchain
/// choice this tool itself runs under (rustup passes it on to children).
fn tool(program: &str, root: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(root);
    for var in ["RUSTUP_TOOLCHAIN", "RUSTUP_TOOLCHAIN_SOURCE", "CARGO", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Installs the pinned nightly when rustup does not have it.
fn ensure_toolchain(root: &Path, channel: &str) -> Result<()> {
    let listed = tool("rustup", root).args(["toolchain", "list"]).output();
    let out = match listed {
        Ok(out) if out.status.success() => out,
        Ok(out) => bail!("`rustup toolchain list` failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => bail!(
            "fuzzing needs rustup, to install the toolchain {channel} it is pinned to (fuzz/rust-toolchain.toml): \
             running rustup failed: {e}. Install rustup (https://rustup.rs), then run this again"
        ),
    };
    let installed = String::from_utf8_lossy(&out.stdout);
    if installed.lines().any(|l| l.split_whitespace().next().is_some_and(|name| name.starts_with(channel))) {
        return Ok(());
    }
    eprintln!("fuzz: installing the pinned toolchain {channel}");
    let args = ["toolchain", "install", channel, "--profile", "minimal"];
    let st = tool("rustup", root).args(args).status().context("running rustup")?;
    if !st.success() {
        bail!("`rustup {}` failed ({st}); fuzzing needs that toolchain", args.join(" "));
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo fuzz` is missing.
fn ensure_cargo_fuzz(root: &Path, channel: &str) -> Result<()> {
    let probe = tool("cargo", root).args([&format!("+{channel}"), "fuzz", "--version"]).output();
    if probe.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("fuzz: `cargo fuzz` is missing: installing cargo-fuzz");
    let st = tool("cargo", root)
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running `cargo install cargo-fuzz --locked`")?;
    if !st.success() {
        bail!(
            "`cargo install cargo-fuzz --locked` failed ({st}); fuzzing needs cargo-fuzz, a crate of crates.io: \
             install it where crates.io is reachable (the same command), then run this again"
        );
    }
    Ok(())
}

/// `cargo +<channel> fuzz run` with the build options of `asan`, up to the
/// target's name.
fn fuzz_run(channel: &str, asan: bool, target: &str) -> Vec<String> {
    let sanitizer = if asan { "address" } else { "none" };
    [&format!("+{channel}"), "fuzz", "run", "--fuzz-dir", "fuzz", "--sanitizer", sanitizer, target]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The `cargo fuzz run` command line of `target`.
pub fn run_command(channel: &str, asan: bool, target: &str, time: Duration, extra: &[String]) -> Vec<String> {
    let mut argv = fuzz_run(channel, asan, target);
    argv.push(format!("fuzz/corpus/{target}"));
    argv.push(format!("fuzz/seeds/{target}"));
    argv.push("--".into());
    argv.push(format!("-max_total_time={}", time.as_secs_f64().ceil() as u64));
    argv.push(format!("-timeout={INPUT_TIMEOUT_S}"));
    argv.push("-print_final_stats=1".into());
    argv.extend(extra.iter().cloned());
    argv
}

/// Runs the selected targets one after the other; prints a summary line per
/// target. `Ok(false)` when one crashed or failed.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<bool> {
    let fuzz_dir = root.join("fuzz");
    let channel = pinned_toolchain(&fuzz_dir)?;
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    ensure_toolchain(root, &channel)?;
    ensure_cargo_fuzz(root, &channel)?;
    // The decode target reads an image's defmt table.
    let elf = if targets.contains(&"decode") {
        let built = images::build(root, &[Arch::X86_64].into())?;
        Some(built.get(&Arch::X86_64).cloned().context("the x86_64 image was not built")?)
    } else {
        None
    };
    let mut results = Vec::new();
    for target in targets {
        std::fs::create_dir_all(fuzz_dir.join("corpus").join(target))?;
        let argv = run_command(&channel, args.asan, target, args.time, &args.libfuzzer_args);
        let mut cmd = tool("cargo", root);
        cmd.args(&argv);
        // Errors are the targets' everyday results: no backtrace capture
        // for each (panics keep theirs, RUST_BACKTRACE).
        cmd.env("RUST_LIB_BACKTRACE", "0");
        let env_shown = match (&elf, target) {
            (Some(elf), "decode") => {
                cmd.env(ELF_ENV, elf);
                format!("{ELF_ENV}={} ", crate::util::shell_quote(&elf.to_string_lossy()))
            }
            _ => String::new(),
        };
        eprintln!("$ {env_shown}cargo {}", crate::util::shell_join(&argv));
        let (mut outcome, ok) = run_one(cmd).with_context(|| format!("running the {target} target"))?;
        if let Some(started) = outcome.started {
            outcome.seconds.get_or_insert(started.elapsed().as_secs());
        }
        if let (Some(artifact), Some(elf), "decode") = (&outcome.artifact, &elf, target) {
            // The crash depends on the table it was decoded with: keep it.
            let copy = artifact.with_extension("elf");
            if std::fs::copy(elf, &copy).is_ok() {
                eprintln!("fuzz: the image it was decoded with is kept as {}", copy.display());
            }
        }
        results.push((target, outcome, ok, env_shown));
    }
    eprintln!();
    let mut all_ok = true;
    for (target, outcome, ok, env_shown) in &results {
        println!("{}", outcome.summary(target, *ok));
        if let Some(a) = &outcome.artifact {
            all_ok = false;
            let reason = outcome.crash.as_deref().unwrap_or("crash").trim_end_matches(':');
            let elf_env = if *target == "decode" {
                format!("{ELF_ENV}={} ", a.with_extension("elf").display())
            } else {
                env_shown.clone()
            };
            let mut repro = fuzz_run(&channel, args.asan, target);
            repro.push(a.display().to_string());
            println!(
                "  {reason}: input in {}\n  reproduce: {elf_env}cargo {}",
                a.display(),
                crate::util::shell_join(&repro)
            );
        } else if !ok {
            all_ok = false;
            println!("  cargo fuzz failed without a crash input (see its output above)");
        }
    }
    Ok(all_ok)
}

/// Runs one `cargo fuzz run`, passing its output through and reading it.
fn run_one(mut cmd: Command) -> Result<(Outcome, bool)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo fuzz")?;
    let stdout = child.stdout.take().context("cargo fuzz stdout")?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    // libFuzzer writes to stderr, cargo-fuzz's own crash report to stdout.
    let out_thread = std::thread::spawn(move || pass_through(BufReader::new(stdout), false));
    let mut outcome = pass_through(BufReader::new(stderr), true);
    let other = out_thread.join().unwrap_or_default();
    outcome.started = outcome.started.or(other.started);
    outcome.artifact = outcome.artifact.or(other.artifact);
    outcome.crash = outcome.crash.or(other.crash);
    let status = child.wait().context("waiting for cargo fuzz")?;
    Ok((outcome, status.success()))
}

fn pass_through(reader: impl BufRead, to_stderr: bool) -> Outcome {
    let mut outcome = Outcome::default();
    for line in reader.split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        outcome.scan(&line);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_and_end() {
        let mut o = Outcome::default();
        for line in [
            "INFO: Seed: 1234",
            "#2\tINITED cov: 120 ft: 130 corp: 30/1234b exec/s: 0 rss: 40Mb",
            "#1048576\tpulse  cov: 812 ft: 3904 corp: 611/41Kb lim: 4096 exec/s: 349525 rss: 420Mb",
            "#12345678\tREDUCE cov: 815 ft: 3911 corp: 615/41Kb lim: 4096 exec/s: 205761 rss: 430Mb L: 12/40 MS: 1 EraseBytes-",
            "Done 12400000 runs in 61 second(s)",
            "stat::number_of_executed_units: 12400001",
        ] {
            o.scan(line);
        }
        assert_eq!(o.runs, Some(12_400_001));
        assert_eq!((o.cov, o.ft, o.corpus, o.seconds), (Some(815), Some(3911), Some(615), Some(61)));
        assert_eq!(o.artifact, None);
        assert!(o.summary("script", true).ends_with("ok, no crash"), "{}", o.summary("script", true));
        assert!(o.summary("script", true).contains("12,400,001 runs in    61s"));
    }

    #[test]
    fn reads_a_crash() {
        let mut o = Outcome::default();
        for line in [
            "#300\tNEW    cov: 10 ft: 11 corp: 3/30b lim: 4 exec/s: 0 rss: 30Mb L: 4/4 MS: 1 ChangeBit-",
            "thread '<unnamed>' panicked at fuzz_targets/script.rs:20:13:",
            "==4242== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='/w/fuzz/artifacts/script/'; Test unit written to /w/fuzz/artifacts/script/crash-da39a3ee",
        ] {
            o.scan(line);
        }
        assert_eq!(o.runs, Some(300));
        assert_eq!(o.artifact, Some(PathBuf::from("/w/fuzz/artifacts/script/crash-da39a3ee")));
        assert_eq!(o.crash.as_deref(), Some("thread '<unnamed>' panicked at fuzz_targets/script.rs:20:13:"));
        assert!(o.summary("script", false).ends_with("CRASH /w/fuzz/artifacts/script/crash-da39a3ee"));
        let mut hang = Outcome::default();
        hang.scan("==1== ERROR: libFuzzer: timeout after 10 seconds");
        assert_eq!(hang.crash.as_deref(), Some("timeout after 10 seconds"));
        assert!(hang.summary("qmp", false).ends_with("FAILED"));
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(12_345_678), "12,345,678");
    }

    #[test]
    fn the_command_line_names_corpus_seeds_and_time() {
        let argv = run_command("nightly-2026-05-20", false, "qmp", Duration::from_millis(90_500), &["-jobs=1".into()]);
        assert_eq!(
            argv.join(" "),
            "+nightly-2026-05-20 fuzz run --fuzz-dir fuzz --sanitizer none qmp fuzz/corpus/qmp fuzz/seeds/qmp -- \
             -max_total_time=91 -timeout=10 -print_final_stats=1 -jobs=1"
        );
        let asan = run_command("n", true, "script", Duration::from_secs(1), &[]);
        assert_eq!(asan[..8].join(" "), "+n fuzz run --fuzz-dir fuzz --sanitizer address script");
    }

    #[test]
    fn the_pinned_toolchain_is_the_fuzz_crates() {
        let root = crate::agent::workspace_root();
        let channel = pinned_toolchain(&root.join("fuzz")).unwrap();
        assert!(channel.starts_with("nightly-20"), "{channel}");
        let dir = tempfile::tempdir().unwrap();
        assert!(pinned_toolchain(dir.path()).is_err());
        std::fs::write(dir.path().join("rust-toolchain.toml"), "[toolchain]\nprofile = \"minimal\"\n").unwrap();
        assert!(pinned_toolchain(dir.path()).unwrap_err().to_string().contains("no [toolchain] channel"));
    }

    #[test]
    fn time_is_whole_seconds_or_more() {
        assert_eq!(parse_time("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_time("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_time("500ms").is_err());
        assert!(parse_time("soon").is_err());
    }
}
