//! `boards/*.toml` and `scenarios.toml`: parsing and strict validation.
//!
//! Every error names the file, the board or scenario, the field and a fix, and
//! all of them are reported before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::timing::{Bound, DEFAULT_TOLERANCE, EventRef, TimingCheck, Tolerance};
use crate::util::{Version, parse_duration};

/// Events that decide a verdict. Everything else QEMU sends is recorded in
/// the transcript only.
pub const WATCHED_EVENTS: &[&str] = &[
    "GUEST_PANICKED",
    "GUEST_CRASHLOADED",
    "GUEST_PVSHUTDOWN",
    "WATCHDOG",
    "SHUTDOWN",
    "RESET",
    "POWERDOWN",
    "STOP",
    "RESUME",
    "SUSPEND",
    "WAKEUP",
];

/// QEMU `RunState` values (`query-status` → `status`).
pub const RUN_STATES: &[&str] = &[
    "debug",
    "inmigrate",
    "internal-error",
    "io-error",
    "paused",
    "postmigrate",
    "prelaunch",
    "finish-migrate",
    "restore-vm",
    "running",
    "save-vm",
    "shutdown",
    "suspended",
    "watchdog",
    "guest-panicked",
    "colo",
];

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(300);

/// Architectures the tool knows how to boot the agent on.
pub const SUPPORTED_ARCHES: &[&str] = &["x86_64", "s390x"];

// ---------------------------------------------------------------------------
// Boards
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardFile {
    name: String,
    description: String,
    arch: String,
    binary: String,
    machine: String,
    accel: String,
    memory: String,
    cpu: Option<String>,
    firmware: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    package: String,
    boot: Option<Boot>,
    script_via: Option<ScriptVia>,
    #[serde(default)]
    groups: Vec<String>,
    kind: Option<String>,
    #[serde(default)]
    requires: Vec<String>,
    instead_of: Option<String>,
}

/// One QEMU machine configuration (a `boards/<name>.toml`).
#[derive(Clone, Debug)]
pub struct Board {
    pub name: String,
    pub description: String,
    pub arch: String,
    /// QEMU executable (looked up in `PATH` unless it contains a `/`).
    pub binary: String,
    /// `-machine` value, may carry options (`q35,smm=off`).
    pub machine: String,
    pub accel: String,
    pub memory: String,
    pub cpu: Option<String>,
    /// `-bios` image, resolved against the workspace root.
    pub firmware: Option<PathBuf>,
    /// Arguments every run on this board gets (e.g. the isa-debug-exit device).
    pub args: Vec<String>,
    /// Debian package that provides `binary`.
    pub package: String,
    pub file: PathBuf,
    /// How the agent starts: `-kernel <ELF>` or as the firmware (`-bios <ROM>`).
    pub boot: Boot,
    /// How scripts reach the agent unless a scenario says otherwise.
    pub script_via: ScriptVia,
    /// Board groups (`@name` in a scenario's or variant's `boards`).
    pub groups: Vec<String>,
    /// How and where the board runs: `kind`, `requires`, `instead_of`
    /// (see `nested_run`).
    pub launch: crate::nested_run::Launch,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn de<T: DeserializeOwned>(value: toml::Value, ctx: &str, fix: &str) -> Result<T, String> {
    T::deserialize(value).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.trim_end();
        format!("{ctx}: {msg}\n  fix: {fix}")
    })
}

/// Parses one board file's text (`file` is used in messages and to derive the
/// expected name).
pub fn parse_board(file: &Path, text: &str, root: &Path) -> Result<Board, String> {
    let fname = file.display();
    let doc: toml::Table =
        text.parse().map_err(|e: toml::de::Error| format!("{fname}: invalid TOML: {}", e.to_string().trim_end()))?;
    let fix = "a board file has exactly the fields name, description, arch, binary, machine, \
               accel, memory, package, args and optionally cpu, firmware, boot, script_via, groups, \
               kind, requires and instead_of (see boards/pc.toml, boards/hyperv-nested.toml)";
    let b: BoardFile = de(toml::Value::Table(doc), &fname.to_string(), fix)?;
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let err = |field: &str, msg: String, fix: String| Err(format!("{fname}: field `{field}`: {msg}\n  fix: {fix}"));
    if b.name != stem {
        return err(
            "name",
            format!("is \"{}\" but the file is named {stem}.toml", b.name),
            format!("set name = \"{stem}\" or rename the file to {}.toml", b.name),
        );
    }
    if !valid_name(&b.name) {
        return err(
            "name",
            format!("\"{}\" is not a valid board name", b.name),
            "use letters, digits, '-', '_' and '.' only".into(),
        );
    }
    if !SUPPORTED_ARCHES.contains(&b.arch.as_str()) {
        return err(
            "arch",
            format!("unsupported architecture \"{}\"", b.arch),
            format!("use one of: {}", SUPPORTED_ARCHES.join(", ")),
        );
    }
    for (field, v) in [("binary", &b.binary), ("machine", &b.machine), ("accel", &b.accel), ("package", &b.package)] {
        if v.trim().is_empty() {
            return err(field, "is empty".into(), format!("give `{field}` a value"));
        }
    }
    let mem_ok = {
        let m = b.memory.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
        !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()) && b.memory.len() - m.len() <= 1
    };
    if !mem_ok {
        return err(
            "memory",
            format!("\"{}\" is not a memory size", b.memory),
            "write a number with an optional K/M/G suffix, e.g. \"128M\"".into(),
        );
    }
    if let Some(cpu) = &b.cpu
        && cpu.trim().is_empty()
    {
        return err("cpu", "is empty".into(), "remove `cpu` to use QEMU's default".into());
    }
    let (boot, script_via) = match board_boot(&b) {
        Ok(x) => x,
        Err((field, msg, fix)) => return err(field, msg, fix),
    };
    for g in &b.groups {
        if !valid_name(g) {
            return err(
                "groups",
                format!("\"{g}\" is not a valid group name"),
                "use letters, digits, '-', '_' and '.' only (scenarios write \"@name\")".into(),
            );
        }
    }
    let launch = match crate::nested_run::parse_launch(b.kind.as_deref(), &b.requires, b.instead_of.as_deref()) {
        Ok(l) => l,
        Err((field, msg, fix)) => return err(field, msg, fix),
    };
    let firmware = b.firmware.as_ref().map(|f| {
        let p = PathBuf::from(f);
        if p.is_absolute() { p } else { root.join(p) }
    });
    Ok(Board {
        name: b.name,
        description: b.description,
        arch: b.arch,
        binary: b.binary,
        machine: b.machine,
        accel: b.accel,
        memory: b.memory,
        cpu: b.cpu,
        firmware,
        args: b.args,
        package: b.package,
        file: file.to_path_buf(),
        boot,
        script_via,
        groups: b.groups,
        launch,
    })
}

// ── boards: how the agent boots, how scripts reach it, groups ──────────────

/// How the agent starts on a board (`boot = …` in the board file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// `-kernel <ELF>`: PVH on x86_64 (after SeaBIOS, qboot or the board's
    /// `firmware`), the ELF IPL on s390x.
    #[default]
    Kernel,
    /// x86_64 only: the agent is the firmware, `-bios <ROM>` (`rom.rs`). No
    /// `-append`, no firmware PCI set-up (the agent assigns BARs on bus 0).
    Firmware,
}

impl ScriptVia {
    pub fn name(self) -> &'static str {
        match self {
            ScriptVia::FwCfg => "fw_cfg",
            ScriptVia::Append => "append",
            ScriptVia::FwCfgFile => "fw_cfg_file",
        }
    }
}

/// Why `via` cannot deliver a script on a board of `arch` booting with
/// `boot` (`None`: it can).
fn script_via_problem(arch: &str, boot: Boot, via: ScriptVia) -> Option<String> {
    match (arch, boot, via) {
        ("s390x", _, ScriptVia::FwCfg | ScriptVia::FwCfgFile) => {
            Some("s390x has no fw_cfg; scripts go through -append".into())
        }
        (_, Boot::Firmware, ScriptVia::Append) => {
            Some("the agent boots as the firmware (-bios), and -append needs -kernel".into())
        }
        _ => None,
    }
}

impl Board {
    /// Why this board cannot deliver a script through `via` (`None`: it can).
    pub fn script_via_problem(&self, via: ScriptVia) -> Option<String> {
        if via == ScriptVia::FwCfgFile && self.launch.kind != crate::nested_run::BoardKind::Qemu {
            return Some("this board's QEMU runs inside L1, where the run directory's files are not".into());
        }
        script_via_problem(&self.arch, self.boot, via)
    }
}

/// A board's `boot` and default `script_via`, or (field, message, fix).
fn board_boot(b: &BoardFile) -> Result<(Boot, ScriptVia), (&'static str, String, String)> {
    let boot = b.boot.unwrap_or_default();
    if boot == Boot::Firmware {
        if b.arch != "x86_64" {
            return Err((
                "boot",
                format!("\"firmware\" (the agent's -bios ROM) exists for x86_64 only, this board is {}", b.arch),
                "remove `boot`".into(),
            ));
        }
        if b.firmware.is_some() {
            return Err((
                "boot",
                "\"firmware\" makes the agent the firmware, so a `firmware` image cannot be used too".into(),
                "remove `firmware` or `boot`".into(),
            ));
        }
    }
    let default = if b.arch == "s390x" { ScriptVia::Append } else { ScriptVia::FwCfg };
    let via = b.script_via.unwrap_or(default);
    if let Some(p) = script_via_problem(&b.arch, boot, via) {
        return Err((
            "script_via",
            format!("\"{}\" is impossible here: {p}", via.name()),
            format!("remove `script_via` (the default here is \"{}\")", default.name()),
        ));
    }
    Ok((boot, via))
}

/// Expands `@group` entries of a `boards` list into board names (in board
/// order, each once); names are kept as given. Unknown groups are errors.
fn expand_board_list(list: &[String], boards: &[Board]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for entry in list {
        let members: Vec<&str> = match entry.strip_prefix('@') {
            None => vec![entry.as_str()],
            Some(g) => {
                let m: Vec<&str> =
                    boards.iter().filter(|b| b.groups.iter().any(|x| x == g)).map(|b| b.name.as_str()).collect();
                if m.is_empty() {
                    let mut known: Vec<&str> =
                        boards.iter().flat_map(|b| b.groups.iter().map(String::as_str)).collect();
                    known.sort_unstable();
                    known.dedup();
                    let known: Vec<String> = known.iter().map(|g| format!("@{g}")).collect();
                    return Err(format!(
                        "unknown board group `{entry}`\n  fix: use one of: {} (boards join a group with `groups = [...]`)",
                        if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") }
                    ));
                }
                m
            }
        };
        for m in members {
            if !out.iter().any(|x| x == m) {
                out.push(m.to_string());
            }
        }
    }
    Ok(out)
}

/// Expands the row's board groups and checks that every board of the row
/// can deliver its script and that each variant runs somewhere.
fn resolve_scenario_boards(
    ctx: &str,
    s: &mut Scenario,
    boards: &[Board],
    variants: &BTreeMap<String, Variant>,
) -> Vec<String> {
    let mut errors = Vec::new();
    match expand_board_list(&s.boards, boards) {
        Ok(b) => s.boards = b,
        Err(e) => {
            errors.push(format!("{ctx}: field `boards`: {e}"));
            return errors;
        }
    }
    if let Some(only) = &s.only_boards {
        s.boards.retain(|b| only.contains(b));
    }
    if s.script.is_some() {
        for name in &s.boards {
            let Some(b) = boards.iter().find(|b| &b.name == name) else { continue };
            let via = s.script_via.unwrap_or(b.script_via);
            if let Some(p) = b.script_via_problem(via) {
                errors.push(format!(
                    "{ctx}: field `script_via`: board `{name}` cannot take the script through {}: {p}\n  \
                     fix: remove `{name}` from `boards`, or {}",
                    via.name(),
                    if s.script_via.is_some() { "remove `script_via`" } else { "set `script_via`" }
                ));
            }
        }
    }
    for v in &s.variants {
        if let Some(Variant { boards: Some(vb), .. }) = variants.get(v)
            && !s.boards.iter().any(|b| vb.contains(b))
        {
            errors.push(format!(
                "{ctx}: field `variants`: variant `{v}` runs only on {} and so on none of this row's boards\n  \
                 fix: remove `{v}` or add one of those boards",
                vb.join(", ")
            ));
        }
    }
    errors
}

/// A variant's `boards`: groups expanded, every name a known board.
fn variant_boards(list: &[String], boards: &[Board]) -> Result<Vec<String>, String> {
    let names = expand_board_list(list, boards)?;
    if names.is_empty() {
        return Err("is empty\n  fix: list boards or @groups, or omit `boards` for all".into());
    }
    for n in &names {
        if !boards.iter().any(|b| &b.name == n) {
            return Err(format!(
                "unknown board `{n}`\n  fix: use one of: {}",
                boards.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(names)
}

/// Loads every `*.toml` in `dir`, sorted by name. All errors are collected.
pub fn load_boards(dir: &Path, root: &Path) -> Result<Vec<Board>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read board directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no board files in {} (fix: add e.g. boards/pc.toml)", dir.display()));
    }
    let mut boards = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let shown = f.strip_prefix(root).unwrap_or(&f).to_path_buf();
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse_board(&shown, &text, root) {
                Ok(b) => boards.push(b),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(format!("{}: {e}", shown.display())),
        }
    }
    if errors.is_empty() {
        // Across boards (`instead_of`) and the nested kind's own rules.
        errors = crate::nested_run::check_boards(&mut boards);
    }
    if errors.is_empty() { Ok(boards) } else { Err(errors.join("\n")) }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// How the script reaches the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptVia {
    /// `-fw_cfg name=opt/pvagent/script,string=<script>`
    FwCfg,
    /// `-append <script>` (PVH command line)
    Append,
    /// `-fw_cfg name=opt/pvagent/script,file=<run dir>/script.bin`: the
    /// script's bytes verbatim (a NUL byte included), from a file the runner
    /// writes into the run's directory.
    FwCfgFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantDef {
    #[serde(default)]
    description: String,
    args: Vec<String>,
    min_qemu: Option<String>,
    boards: Option<Vec<String>>,
}

/// A named set of extra QEMU arguments; a scenario runs once per variant.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub args: Vec<String>,
    pub min_qemu: Option<Version>,
    /// Boards the variant exists on (`@group`s expanded); `None`: all. A row
    /// runs the variant on the boards in both lists.
    pub boards: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioDef {
    name: String,
    #[serde(default)]
    description: String,
    script: Option<String>,
    script_via: Option<ScriptVia>,
    boards: Option<Vec<String>>,
    #[serde(default)]
    variants: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    min_qemu: Option<String>,
    #[serde(default)]
    qmp_before_cont: Vec<toml::Value>,
    timeout: Option<String>,
    settle: Option<String>,
    #[serde(default)]
    expect: Vec<toml::Value>,
    #[serde(default)]
    ignore: Vec<String>,
    end: toml::Value,
    #[serde(default)]
    log_contains: Vec<String>,
    #[serde(default)]
    stderr_contains: Vec<String>,
    #[serde(default)]
    timing: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingDef {
    from: String,
    to: String,
    expect: Option<String>,
    tolerance: Option<String>,
    min: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDef {
    event: String,
    data: Option<toml::Value>,
    min: Option<u32>,
    max: Option<u32>,
    optional: Option<bool>,
    #[serde(default)]
    absent: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QmpCommandDef {
    execute: String,
    arguments: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndDef {
    exit: Option<i64>,
    status: Option<String>,
}

/// Expected payload value: a recursive subset of the actual JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    Bool(bool),
    Int(i64),
    /// A string; it also matches a JSON integer when it spells that integer in
    /// decimal or `0x` hex (TOML has no integers above `i64::MAX`).
    Str(String),
    Array(Vec<Expected>),
    Table(BTreeMap<String, Expected>),
}

impl Expected {
    pub fn from_toml(v: &toml::Value) -> Result<Expected, String> {
        Ok(match v {
            toml::Value::Boolean(b) => Expected::Bool(*b),
            toml::Value::Integer(i) => Expected::Int(*i),
            toml::Value::String(s) => Expected::Str(s.clone()),
            toml::Value::Array(a) => Expected::Array(a.iter().map(Expected::from_toml).collect::<Result<_, _>>()?),
            toml::Value::Table(t) => Expected::Table(
                t.iter().map(|(k, v)| Ok((k.clone(), Expected::from_toml(v)?))).collect::<Result<_, String>>()?,
            ),
            toml::Value::Float(f) => {
                return Err(format!(
                    "float {f} cannot be matched exactly (QMP event payloads carry integers; write an integer or a \"0x…\" string)"
                ));
            }
            toml::Value::Datetime(d) => {
                return Err(format!("datetime {d} is not a QMP value"));
            }
        })
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Bool(b) => write!(f, "{b}"),
            Expected::Int(i) => write!(f, "{i}"),
            Expected::Str(s) => write!(f, "{s:?}"),
            Expected::Array(a) => {
                write!(f, "[")?;
                for (i, e) in a.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{e}")?;
                }
                write!(f, "]")
            }
            Expected::Table(t) => {
                write!(f, "{{")?;
                for (i, (k, v)) in t.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// One entry of a scenario's `expect` list.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectEntry {
    pub event: String,
    pub data: Option<Expected>,
    pub min: u32,
    pub max: u32,
    /// Payload fields (dot-separated paths, e.g. `info`) that must not be
    /// present.
    pub absent: Vec<String>,
}

impl ExpectEntry {
    pub fn new(event: &str) -> Self {
        ExpectEntry { event: event.to_string(), data: None, min: 1, max: 1, absent: Vec::new() }
    }
}

impl std::fmt::Display for ExpectEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.event)?;
        if let Some(d) = &self.data {
            write!(f, "{d}")?;
        }
        if !self.absent.is_empty() {
            write!(f, " without {}", self.absent.join(", "))?;
        }
        match (self.min, self.max) {
            (1, 1) => Ok(()),
            (0, 1) => write!(f, " (optional)"),
            (a, b) if a == b => write!(f, " ×{a}"),
            (a, b) => write!(f, " ×{a}..{b}"),
        }
    }
}

/// How a run must end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// QEMU exits by itself with this status.
    Exit(i32),
    /// QEMU stays up; `query-status` reports this run state.
    Status(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Exit(c) => write!(f, "exit {c}"),
            End::Status(s) => write!(f, "status {s}"),
        }
    }
}

/// A QMP command sent between `qmp_capabilities` and `cont`.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpCommand {
    pub execute: String,
    pub arguments: Option<serde_json::Value>,
}

/// One validated `[[scenario]]` row.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// `None`: the agent gets no script at all.
    pub script: Option<String>,
    /// `None`: each board's default (see [`Case::script_via`]).
    pub script_via: Option<ScriptVia>,
    pub boards: Vec<String>,
    pub variants: Vec<String>,
    pub args: Vec<String>,
    pub min_qemu: Option<Version>,
    pub qmp_before_cont: Vec<QmpCommand>,
    pub timeout: Duration,
    pub settle: Duration,
    pub expect: Vec<ExpectEntry>,
    pub ignore: Vec<String>,
    pub end: End,
    pub log_contains: Vec<String>,
    /// Substrings QEMU's stderr must contain.
    pub stderr_contains: Vec<String>,
    /// Timing assertions between matched events.
    pub timing: Vec<TimingCheck>,
    /// From a `[scripts]` entry's `boards`: the row runs only on those of
    /// its boards (applied when its groups are expanded).
    pub only_boards: Option<Vec<String>>,
}

/// The whole validated table.
#[derive(Clone, Debug)]
pub struct Scenarios {
    pub variants: BTreeMap<String, Variant>,
    pub scenarios: Vec<Arc<Scenario>>,
}

fn toml_to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("float {f} cannot be sent as JSON"))?,
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => {
            J::Object(t.iter().map(|(k, v)| Ok((k.clone(), toml_to_json(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

fn one_of(list: &[&str]) -> String {
    list.join(", ")
}

/// Parses and validates `scenarios.toml` against the known boards.
pub fn parse_scenarios(file: &Path, text: &str, boards: &[Board]) -> Result<Scenarios, String> {
    let fname = file.display().to_string();
    let doc: toml::Table =
        text.parse().map_err(|e: toml::de::Error| format!("{fname}: invalid TOML: {}", e.to_string().trim_end()))?;
    let mut errors: Vec<String> = Vec::new();
    for key in doc.keys() {
        if key != "variants" && key != "scenario" && key != "scripts" {
            errors.push(format!(
                "{fname}: unknown top-level key `{key}`\n  fix: the file holds only [variants.NAME] and [scripts.NAME] tables and [[scenario]] rows"
            ));
        }
    }

    // Variants.
    let mut variants = BTreeMap::new();
    match doc.get("variants") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, v) in t {
                let ctx = format!("{fname}: variant `{name}`");
                if !valid_name(name) {
                    errors.push(format!("{ctx}: invalid name\n  fix: use letters, digits, '-', '_' and '.' only"));
                    continue;
                }
                let def: VariantDef = match de(
                    v.clone(),
                    &ctx,
                    "a variant has `args = [...]` and optionally `description`, `min_qemu` and `boards`",
                ) {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let min_qemu = match def.min_qemu.as_deref().map(Version::parse).transpose() {
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(format!("{ctx}: field `min_qemu`: {e}\n  fix: write e.g. min_qemu = \"9.1\""));
                        continue;
                    }
                };
                let vboards = match def.boards.as_deref().map(|l| variant_boards(l, boards)).transpose() {
                    Ok(b) => b,
                    Err(e) => {
                        errors.push(format!("{ctx}: field `boards`: {e}"));
                        continue;
                    }
                };
                variants.insert(
                    name.clone(),
                    Variant {
                        name: name.clone(),
                        description: def.description,
                        args: def.args,
                        min_qemu,
                        boards: vboards,
                    },
                );
            }
        }
        Some(_) => errors.push(format!("{fname}: `variants` must be a table\n  fix: write [variants.NAME] sections")),
    }

    let lists = parse_script_lists(&fname, doc.get("scripts"), boards, &mut errors);

    // Scenarios.
    let rows: Vec<toml::Value> = match doc.get("scenario") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            errors.push(format!(
                "{fname}: `scenario` must be an array of tables\n  fix: write each scenario as a [[scenario]] section"
            ));
            Vec::new()
        }
    };
    let board_names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    // Names of all defined variants, valid or not (a broken variant is
    // reported once, not again at every scenario that uses it).
    let variant_names: Vec<&str> = match doc.get("variants") {
        Some(toml::Value::Table(t)) => t.keys().map(|s| s.as_str()).collect(),
        _ => Vec::new(),
    };
    let mut seen = BTreeSet::new();
    let mut scenarios = Vec::new();
    for (idx, mut row) in rows.into_iter().enumerate() {
        let label = row
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!("scenario `{n}`"))
            .unwrap_or_else(|| format!("scenario #{}", idx + 1));
        let ctx = format!("{fname}: {label}");
        let list = match take_script_list(&ctx, &mut row, &lists) {
            Ok(list) => list,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match validate_scenario(&ctx, row, &board_names, &variant_names, list.is_some()) {
            Ok(s) => {
                let expanded = match list {
                    Some(entries) => expand_script_list(&s, entries),
                    None => vec![(ctx.clone(), s)],
                };
                for (ctx, mut s) in expanded {
                    let mut board_errors = resolve_scenario_boards(&ctx, &mut s, boards, &variants);
                    if !board_errors.is_empty() {
                        errors.append(&mut board_errors);
                    } else if !seen.insert(s.name.clone()) {
                        errors.push(format!("{ctx}: duplicate name\n  fix: give every scenario a unique `name`"));
                    } else if !s.boards.is_empty() {
                        scenarios.push(Arc::new(s));
                    }
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(Scenarios { variants, scenarios }) } else { Err(errors.join("\n")) }
}

struct Errs<'a> {
    ctx: &'a str,
    list: Vec<String>,
}

impl Errs<'_> {
    fn field(&mut self, field: &str, msg: String, fix: String) {
        self.list.push(format!("{}: field `{field}`: {msg}\n  fix: {fix}", self.ctx));
    }
}

fn validate_scenario(
    ctx: &str,
    row: toml::Value,
    board_names: &[&str],
    variant_names: &[&str],
    has_script_list: bool,
) -> Result<Scenario, Vec<String>> {
    let def: ScenarioDef =
        de(row, ctx, "see the field list at the top of scenarios.toml (required: name, end)").map_err(|e| vec![e])?;
    let mut errs = Errs { ctx, list: Vec::new() };
    if !valid_name(&def.name) {
        errs.field(
            "name",
            format!("\"{}\" is not a valid name", def.name),
            "use letters, digits, '-', '_' and '.' only".into(),
        );
    }
    let boards = match def.boards {
        Some(b) => {
            if b.is_empty() {
                errs.field(
                    "boards",
                    "is empty".into(),
                    format!("list boards from: {}, or omit `boards` for all", one_of(board_names)),
                );
            }
            // `@group` entries are expanded (and checked) by resolve_scenario_boards.
            for name in b.iter().filter(|n| !n.starts_with('@')) {
                if !board_names.contains(&name.as_str()) {
                    errs.field(
                        "boards",
                        format!("unknown board `{name}`"),
                        format!("use one of: {} (or add boards/{name}.toml)", one_of(board_names)),
                    );
                }
            }
            b
        }
        None => board_names.iter().map(|s| s.to_string()).collect(),
    };
    let mut seen_variants = BTreeSet::new();
    for v in &def.variants {
        if !variant_names.contains(&v.as_str()) {
            errs.field(
                "variants",
                format!("unknown variant `{v}`"),
                format!("define [variants.{v}] or use one of: {}", one_of(variant_names)),
            );
        }
        if !seen_variants.insert(v) {
            errs.field("variants", format!("variant `{v}` is listed twice"), "list each variant once".into());
        }
    }
    let min_qemu = match def.min_qemu.as_deref().map(Version::parse).transpose() {
        Ok(v) => v,
        Err(e) => {
            errs.field("min_qemu", e, "write e.g. min_qemu = \"9.1\"".into());
            None
        }
    };
    let mut dur = |field: &str, v: Option<String>, default: Duration| match v {
        None => default,
        Some(s) => match parse_duration(&s) {
            Ok(d) if d.is_zero() && field == "timeout" => {
                errs.field(field, "must be greater than zero".into(), "write e.g. \"10s\"".into());
                default
            }
            Ok(d) => d,
            Err(e) => {
                errs.field(field, e, "write e.g. \"300ms\" or \"10s\"".into());
                default
            }
        },
    };
    let timeout = dur("timeout", def.timeout, DEFAULT_TIMEOUT);
    let settle = dur("settle", def.settle, DEFAULT_SETTLE);

    let mut qmp_before_cont = Vec::new();
    for (i, c) in def.qmp_before_cont.into_iter().enumerate() {
        match de::<QmpCommandDef>(
            c,
            &format!("{ctx}: field `qmp_before_cont` entry {}", i + 1),
            "write { execute = \"set-action\", arguments = { panic = \"pause\" } }",
        ) {
            Ok(c) => {
                if c.execute.trim().is_empty() {
                    errs.field(
                        "qmp_before_cont",
                        format!("entry {} has an empty `execute`", i + 1),
                        "name a QMP command".into(),
                    );
                    continue;
                }
                if matches!(c.execute.as_str(), "cont" | "quit" | "qmp_capabilities") {
                    errs.field(
                        "qmp_before_cont",
                        format!("entry {}: `{}` is sent by the runner itself", i + 1, c.execute),
                        "remove it".into(),
                    );
                    continue;
                }
                let arguments = match c.arguments.map(|t| toml_to_json(&toml::Value::Table(t))) {
                    None => None,
                    Some(Ok(j)) => Some(j),
                    Some(Err(e)) => {
                        errs.field("qmp_before_cont", e, "use integers, strings and booleans".into());
                        None
                    }
                };
                qmp_before_cont.push(QmpCommand { execute: c.execute, arguments });
            }
            Err(e) => errs.list.push(e),
        }
    }

    let watched_fix = format!("use one of the watched events: {}", one_of(WATCHED_EVENTS));
    let mut expect = Vec::new();
    for (i, e) in def.expect.into_iter().enumerate() {
        let ectx = format!("{ctx}: field `expect` entry {}", i + 1);
        let d: ExpectDef = match de(
            e,
            &ectx,
            "write { event = \"NAME\", data = { ... }, min = N, max = N, optional = BOOL } (only `event` is required)",
        ) {
            Ok(d) => d,
            Err(e) => {
                errs.list.push(e);
                continue;
            }
        };
        if !WATCHED_EVENTS.contains(&d.event.as_str()) {
            errs.list.push(format!("{ectx}: unknown or unwatched event `{}`\n  fix: {watched_fix}", d.event));
            continue;
        }
        if d.optional.is_some() && d.min.is_some() {
            errs.list.push(format!(
                "{ectx}: both `optional` and `min` are set\n  fix: keep one (optional = true is min = 0)"
            ));
            continue;
        }
        let min = match (d.optional, d.min) {
            (Some(true), _) => 0,
            (_, Some(m)) => m,
            _ => 1,
        };
        let max = d.max.unwrap_or(min.max(1));
        if max == 0 || max < min {
            errs.list.push(format!(
                "{ectx}: min = {min}, max = {max} can never match\n  fix: use 0 <= min <= max and max >= 1"
            ));
            continue;
        }
        let data = match d.data.as_ref().map(|v| {
            if v.is_table() {
                Expected::from_toml(v)
            } else {
                Err("`data` must be a table of expected payload fields".to_string())
            }
        }) {
            None => None,
            Some(Ok(x)) => Some(x),
            Some(Err(m)) => {
                errs.list.push(format!("{ectx}: field `data`: {m}\n  fix: write data = {{ field = value, ... }}"));
                continue;
            }
        };
        let mut bad_absent = false;
        for p in &d.absent {
            let required = |mut e: &Expected| {
                p.split('.').all(|k| match e {
                    Expected::Table(t) => t.get(k).map(|x| e = x).is_some(),
                    _ => false,
                })
            };
            if p.split('.').any(str::is_empty) {
                errs.list.push(format!(
                    "{ectx}: field `absent`: \"{p}\" is not a payload field\n  \
                     fix: name fields of the event's data, dot-separated inside tables, e.g. absent = [\"info\"]"
                ));
                bad_absent = true;
            } else if data.as_ref().is_some_and(required) {
                errs.list.push(format!(
                    "{ectx}: field `absent`: \"{p}\" is also required by `data`, so the entry can never match\n  \
                     fix: remove it from `data` or from `absent`"
                ));
                bad_absent = true;
            }
        }
        if bad_absent {
            continue;
        }
        expect.push(ExpectEntry { event: d.event, data, min, max, absent: d.absent });
    }
    for ev in &def.ignore {
        if !WATCHED_EVENTS.contains(&ev.as_str()) {
            errs.field(
                "ignore",
                format!("unknown or unwatched event `{ev}` (unwatched events are ignored anyway)"),
                watched_fix.clone(),
            );
        } else if expect.iter().any(|e| &e.event == ev) {
            errs.field(
                "ignore",
                format!("`{ev}` is both expected and ignored"),
                format!("remove `{ev}` from `ignore` or from `expect`"),
            );
        }
    }
    let end_fix = "write end = { exit = N } (QEMU's exit status) or end = { status = \"RUNSTATE\" }";
    let end = match de::<EndDef>(def.end, &format!("{ctx}: field `end`"), end_fix) {
        Err(e) => {
            errs.list.push(e);
            None
        }
        Ok(EndDef { exit: Some(code), status: None }) => {
            if (0..=255).contains(&code) {
                Some(End::Exit(code as i32))
            } else {
                errs.field("end", format!("exit status {code} is outside 0..=255"), end_fix.into());
                None
            }
        }
        Ok(EndDef { exit: None, status: Some(s) }) => {
            if RUN_STATES.contains(&s.as_str()) {
                Some(End::Status(s))
            } else {
                errs.field("end", format!("unknown run state \"{s}\""), format!("use one of: {}", one_of(RUN_STATES)));
                None
            }
        }
        Ok(_) => {
            errs.field("end", "needs exactly one of `exit` and `status`".into(), end_fix.into());
            None
        }
    };
    for (field, list) in [("log_contains", &def.log_contains), ("stderr_contains", &def.stderr_contains)] {
        if list.iter().any(String::is_empty) {
            errs.field(field, "contains an empty string".into(), "remove it".into());
        }
    }
    let timing = validate_timing(ctx, def.timing, &expect, &def.ignore, &mut errs.list);
    let script = def.script.filter(|s| !s.trim().is_empty());
    let script_via = def.script_via;
    if script.is_none() && !has_script_list && def.script_via.is_some() {
        errs.field(
            "script_via",
            "is set but there is no script".into(),
            "remove `script_via` or add a `script`".into(),
        );
    }
    if let Some(p) = script.as_deref().and_then(|s| nul_problem(s, script_via)) {
        errs.field("script", p.into(), "remove it, or set script_via = \"fw_cfg_file\"".into());
    }
    match (errs.list.is_empty(), end) {
        (true, Some(end)) => Ok(Scenario {
            name: def.name,
            description: def.description,
            script,
            script_via,
            boards,
            variants: def.variants,
            args: def.args,
            min_qemu,
            qmp_before_cont,
            timeout,
            settle,
            expect,
            ignore: def.ignore,
            end,
            log_contains: def.log_contains,
            stderr_contains: def.stderr_contains,
            timing,
            only_boards: None,
        }),
        _ => Err(errs.list),
    }
}

/// A NUL byte reaches the agent only through a file (`script_via =
/// "fw_cfg_file"`): QEMU's `string=` and `-append` end at it.
fn nul_problem(script: &str, via: Option<ScriptVia>) -> Option<&'static str> {
    (script.contains('\0') && via != Some(ScriptVia::FwCfgFile))
        .then_some("contains a NUL byte, which only script_via = \"fw_cfg_file\" can deliver")
}

/// One script of a `[scripts.LIST]` table: a row that names the list runs
/// once per entry, as `<row>.<key>`.
#[derive(Clone, Debug)]
pub struct ScriptEntry {
    pub key: String,
    pub script: String,
    /// Added to the row's `log_contains`.
    pub log_contains: Vec<String>,
    /// Overrides the row's `script_via`.
    pub script_via: Option<ScriptVia>,
    /// Only on these boards (groups expanded); `None`: the row's boards.
    pub boards: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptEntryDef {
    script: String,
    #[serde(default)]
    log_contains: Vec<String>,
    script_via: Option<ScriptVia>,
    boards: Option<Vec<String>>,
}

/// Parses the `[scripts.LIST]` tables: each key a script, or a table
/// `{ script, log_contains, script_via, boards }`.
fn parse_script_lists(
    fname: &str,
    value: Option<&toml::Value>,
    boards: &[Board],
    errors: &mut Vec<String>,
) -> BTreeMap<String, Vec<ScriptEntry>> {
    let mut lists = BTreeMap::new();
    let fix_shape = "write [scripts.NAME] tables whose entries are `key = \"script\"` or \
                     `key = { script = \"…\", log_contains = [..], script_via = \"…\", boards = [..] }`";
    let tables = match value {
        None => return lists,
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            errors.push(format!("{fname}: `scripts` must be a table of tables\n  fix: {fix_shape}"));
            return lists;
        }
    };
    for (list, entries) in tables {
        let ctx = format!("{fname}: scripts.{list}");
        if !valid_name(list) {
            errors.push(format!("{ctx}: invalid name\n  fix: use letters, digits, '-', '_' and '.' only"));
            continue;
        }
        let Some(entries) = entries.as_table() else {
            errors.push(format!("{ctx}: must be a table\n  fix: {fix_shape}"));
            continue;
        };
        if entries.is_empty() {
            errors.push(format!("{ctx}: has no scripts\n  fix: add entries or remove the table"));
        }
        let mut out = Vec::new();
        for (key, v) in entries {
            let ctx = format!("{ctx}.{key}");
            if !valid_name(key) {
                errors.push(format!("{ctx}: invalid key\n  fix: use letters, digits, '-', '_' and '.' only"));
                continue;
            }
            let def = match v {
                toml::Value::String(script) => Ok(ScriptEntryDef {
                    script: script.clone(),
                    log_contains: Vec::new(),
                    script_via: None,
                    boards: None,
                }),
                other => de::<ScriptEntryDef>(other.clone(), &ctx, fix_shape),
            };
            let def = match def {
                Ok(d) => d,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if def.script.trim().is_empty() {
                errors.push(format!(
                    "{ctx}: the script is empty (that is the no-script case, not a script)\n  fix: write a script"
                ));
                continue;
            }
            if let Some(p) = nul_problem(&def.script, def.script_via) {
                errors.push(format!("{ctx}: the script {p}\n  fix: set script_via = \"fw_cfg_file\" in the entry"));
                continue;
            }
            if def.log_contains.iter().any(String::is_empty) {
                errors.push(format!("{ctx}: `log_contains` has an empty string\n  fix: remove it"));
                continue;
            }
            let entry_boards = match def.boards.as_deref().map(|l| variant_boards(l, boards)).transpose() {
                Ok(b) => b,
                Err(e) => {
                    errors.push(format!("{ctx}: field `boards`: {e}"));
                    continue;
                }
            };
            out.push(ScriptEntry {
                key: key.clone(),
                script: def.script,
                log_contains: def.log_contains,
                script_via: def.script_via,
                boards: entry_boards,
            });
        }
        lists.insert(list.clone(), out);
    }
    lists
}

/// Removes a row's `scripts = "LIST"` and returns that list's entries.
fn take_script_list<'a>(
    ctx: &str,
    row: &mut toml::Value,
    lists: &'a BTreeMap<String, Vec<ScriptEntry>>,
) -> Result<Option<&'a [ScriptEntry]>, String> {
    let Some(value) = row.as_table_mut().and_then(|t| t.remove("scripts")) else { return Ok(None) };
    let Some(name) = value.as_str() else {
        return Err(format!(
            "{ctx}: field `scripts`: must be a string\n  fix: write scripts = \"LIST\" naming a [scripts.LIST] table"
        ));
    };
    if row.get("script").is_some() {
        return Err(format!("{ctx}: has both `script` and `scripts`\n  fix: keep one of them"));
    }
    match lists.get(name) {
        Some(entries) => Ok(Some(entries)),
        None => Err(format!(
            "{ctx}: field `scripts`: no [scripts.{name}] table\n  fix: use one of: {} (or add [scripts.{name}])",
            if lists.is_empty() {
                "(none defined)".to_string()
            } else {
                lists.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )),
    }
}

/// One scenario per list entry, named `<row>.<key>`, each with its context
/// for messages. Boards are narrowed after the row's `@group`s are expanded
/// (in [`resolve_scenario_boards`]), so an entry's `boards` is kept aside here.
fn expand_script_list(row: &Scenario, entries: &[ScriptEntry]) -> Vec<(String, Scenario)> {
    entries
        .iter()
        .map(|e| {
            let mut s = row.clone();
            s.name = format!("{}.{}", row.name, e.key);
            s.script = Some(e.script.clone());
            s.script_via = e.script_via.or(row.script_via);
            s.log_contains.extend(e.log_contains.iter().cloned());
            s.only_boards = e.boards.clone();
            (format!("scenario `{}` (from [scripts] entry `{}`)", s.name, e.key), s)
        })
        .collect()
}

/// How many events called `event` a passing run can have: the sum of the
/// `max` of its `expect` entries; `None` = unbounded (the event is ignored).
/// Timing counts the RESUME answering the runner's `cont` as `RESUME#1`.
fn capacity(event: &str, expect: &[ExpectEntry], ignore: &[String]) -> Option<u32> {
    if ignore.iter().any(|i| i == event) {
        return None;
    }
    let cont = u32::from(event == "RESUME");
    Some(cont + expect.iter().filter(|e| e.event == event).map(|e| e.max).sum::<u32>())
}

const TIMING_FIX: &str = "write { from = \"EVENT[#N]\", to = \"EVENT[#N]\", expect = \"500ms\", tolerance = \"5%+20ms\" } \
     (tolerance optional, default 5%+20ms), or min = \"…\" and/or max = \"…\" instead of expect";

fn validate_timing(
    ctx: &str,
    defs: Vec<toml::Value>,
    expect: &[ExpectEntry],
    ignore: &[String],
    errors: &mut Vec<String>,
) -> Vec<TimingCheck> {
    let mut out = Vec::new();
    for (i, v) in defs.into_iter().enumerate() {
        let tctx = format!("{ctx}: field `timing` entry {}", i + 1);
        let d: TimingDef = match de(v, &tctx, TIMING_FIX) {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let before = errors.len();
        let mut event_ref = |key: &str, text: &str| -> Option<EventRef> {
            let r = match EventRef::parse(text) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{tctx}: `{key}`: {e}\n  fix: {TIMING_FIX}"));
                    return None;
                }
            };
            if !WATCHED_EVENTS.contains(&r.event.as_str()) {
                errors.push(format!(
                    "{tctx}: `{key}`: `{}` is not a watched event\n  fix: use one of: {}",
                    r.event,
                    one_of(WATCHED_EVENTS)
                ));
                return None;
            }
            match capacity(&r.event, expect, ignore) {
                Some(0) => {
                    errors.push(format!(
                        "{tctx}: `{key}`: `{}` is neither in `expect` nor in `ignore`, so a passing run never has it\n  \
                         fix: refer to an expected event",
                        r.event
                    ));
                    None
                }
                Some(n) if r.occurrence > n => {
                    errors.push(format!(
                        "{tctx}: `{key}`: `{r}` asks for occurrence {} but `expect` allows at most {n} {}\n  \
                         fix: use an occurrence from 1 to {n}",
                        r.occurrence, r.event
                    ));
                    None
                }
                _ => Some(r),
            }
        };
        let from = event_ref("from", &d.from);
        let to = event_ref("to", &d.to);
        let mut dur = |key: &str, v: &Option<String>| -> Option<Duration> {
            let s = v.as_ref()?;
            match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(format!("{tctx}: `{key}`: {e}\n  fix: write e.g. \"500ms\" or \"2s\""));
                    None
                }
            }
        };
        let (expect_d, min, max) = (dur("expect", &d.expect), dur("min", &d.min), dur("max", &d.max));
        let bound = match (&d.expect, &d.min, &d.max) {
            (Some(_), None, None) => {
                let tolerance = match d.tolerance.as_deref().map(Tolerance::parse).transpose() {
                    Ok(t) => t.unwrap_or(DEFAULT_TOLERANCE),
                    Err(e) => {
                        errors.push(format!("{tctx}: `tolerance`: {e}\n  fix: {TIMING_FIX}"));
                        DEFAULT_TOLERANCE
                    }
                };
                expect_d.map(|expect| Bound::Around { expect, tolerance })
            }
            (None, lo, hi) if lo.is_some() || hi.is_some() => {
                if d.tolerance.is_some() {
                    errors.push(format!(
                        "{tctx}: `tolerance` only goes with `expect`\n  fix: remove it, or use expect instead of min/max"
                    ));
                }
                if let (Some(a), Some(b)) = (min, max)
                    && a > b
                {
                    errors.push(format!("{tctx}: `min` is greater than `max`\n  fix: swap them"));
                }
                Some(Bound::Range { min, max })
            }
            _ => {
                errors.push(format!(
                    "{tctx}: needs either `expect` (with an optional `tolerance`) or `min`/`max`, not both or neither\n  fix: {TIMING_FIX}"
                ));
                None
            }
        };
        if let (Some(f), Some(t)) = (&from, &to)
            && f == t
        {
            errors.push(format!("{tctx}: `from` and `to` are the same event\n  fix: measure between two events"));
        }
        if let (Some(from), Some(to), Some(bound), true) = (from, to, bound, errors.len() == before) {
            out.push(TimingCheck { from, to, bound });
        }
    }
    out
}

/// One concrete run: board × scenario × variant.
#[derive(Clone, Debug)]
pub struct Case {
    pub board: Arc<Board>,
    pub scenario: Arc<Scenario>,
    pub variant: Option<Variant>,
}

impl Case {
    /// `scenario` or `scenario/variant`.
    pub fn id(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}", self.scenario.name, v.name),
            None => self.scenario.name.clone(),
        }
    }

    /// `board::scenario/variant`, the e2e trial name.
    pub fn full_name(&self) -> String {
        format!("{}::{}", self.board.name, self.id())
    }

    /// The highest of the scenario's and the variant's `min_qemu`.
    pub fn min_qemu(&self) -> Option<Version> {
        let v = self.variant.as_ref().and_then(|v| v.min_qemu);
        match (self.scenario.min_qemu, v) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Scenario arguments followed by the variant's.
    pub fn extra_args(&self) -> Vec<String> {
        let mut args = self.scenario.args.clone();
        if let Some(v) = &self.variant {
            args.extend(v.args.iter().cloned());
        }
        args
    }

    /// How the script reaches the agent: the scenario's `script_via`, else
    /// the board's default.
    pub fn script_via(&self) -> ScriptVia {
        self.scenario.script_via.unwrap_or(self.board.script_via)
    }
}

/// Expands the table into cases, board-major, in file order. `boards` and
/// `globs` filter (empty = all); a glob matches the case id or the scenario
/// name.
pub fn expand_cases(
    boards: &[Board],
    table: &Scenarios,
    board_filter: &[String],
    globs: &[String],
) -> Result<Vec<Case>, String> {
    for b in board_filter {
        if !boards.iter().any(|x| &x.name == b) {
            return Err(format!(
                "unknown board `{b}` (known: {})",
                boards.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut cases = Vec::new();
    for board in boards {
        if !board_filter.is_empty() && !board_filter.contains(&board.name) {
            continue;
        }
        let board = Arc::new(board.clone());
        for s in &table.scenarios {
            if !s.boards.contains(&board.name) {
                continue;
            }
            let vars: Vec<Option<Variant>> = if s.variants.is_empty() {
                vec![None]
            } else {
                s.variants
                    .iter()
                    .map(|v| table.variants[v].clone())
                    .filter(|v| v.boards.as_ref().is_none_or(|b| b.contains(&board.name)))
                    .map(Some)
                    .collect()
            };
            for variant in vars {
                let case = Case { board: board.clone(), scenario: s.clone(), variant };
                let id = case.id();
                if globs.is_empty()
                    || globs.iter().any(|g| {
                        crate::util::glob_match(g, &id)
                            || crate::util::glob_match(g, &s.name)
                            || crate::util::glob_match(g, &case.full_name())
                    })
                {
                    cases.push(case);
                }
            }
        }
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PC: &str = r#"
name = "pc"
description = "i440FX"
arch = "x86_64"
binary = "qemu-system-x86_64"
machine = "pc"
accel = "tcg"
memory = "128M"
args = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
package = "qemu-system-x86"
"#;

    fn boards() -> Vec<Board> {
        vec![parse_board(Path::new("boards/pc.toml"), PC, Path::new("/w")).unwrap()]
    }

    fn parse(text: &str) -> Result<Scenarios, String> {
        parse_scenarios(Path::new("scenarios.toml"), text, &boards())
    }

    const GOOD: &str = r#"
[variants.isa]
args = ["-device", "pvpanic"]
[variants.pci]
args = ["-device", "pvpanic-pci"]
min_qemu = "6.0"

[[scenario]]
name = "p"
script = "pvpanic.panicked"
variants = ["isa", "pci"]
args = ["-action", "panic=pause"]
min_qemu = "5.0"
qmp_before_cont = [{ execute = "set-action", arguments = { panic = "pause" } }]
expect = [
  { event = "GUEST_PANICKED", data = { action = "pause" } },
  { event = "STOP", optional = true },
  { event = "RESET", min = 1, max = 2 },
]
end = { status = "guest-panicked" }
"#;

    const LIST: &str = r#"
[scripts.bad]
one = "bogus"
two = { script = "exit:0x", log_contains = ["bad number"] }
nul = { script = "halt\u0000", script_via = "fw_cfg_file" }

[[scenario]]
name = "m"
scripts = "bad"
expect = []
end = { exit = 225 }
log_contains = ["script error"]
"#;

    #[test]
    fn a_script_list_runs_once_per_entry() {
        let t = parse(LIST).unwrap();
        let names: Vec<&str> = t.scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["m.nul", "m.one", "m.two"]);
        let two = &t.scenarios[2];
        assert_eq!(two.script.as_deref(), Some("exit:0x"));
        assert_eq!(two.log_contains, ["script error", "bad number"]);
        assert_eq!(two.script_via, None);
        let nul = &t.scenarios[0];
        assert_eq!((nul.script.as_deref(), nul.script_via), (Some("halt\0"), Some(ScriptVia::FwCfgFile)));
        let cases = expand_cases(&boards(), &t, &[], &[]).unwrap();
        assert_eq!(cases.len(), 3);
    }

    #[test]
    fn script_list_errors_name_the_problem() {
        let e = parse(&LIST.replace("scripts = \"bad\"", "scripts = \"worse\"")).unwrap_err();
        assert!(e.contains("no [scripts.worse] table") && e.contains("use one of: bad"), "{e}");
        let e = parse(&LIST.replace(", script_via = \"fw_cfg_file\"", "")).unwrap_err();
        assert!(e.contains("scripts.bad.nul") && e.contains("NUL byte"), "{e}");
        let e = parse(&LIST.replace("scripts = \"bad\"", "scripts = \"bad\"\nscript = \"halt\"")).unwrap_err();
        assert!(e.contains("both `script` and `scripts`"), "{e}");
        let e = parse(&LIST.replace("one = \"bogus\"", "one = \" \"")).unwrap_err();
        assert!(e.contains("scripts.bad.one") && e.contains("empty"), "{e}");
        let e = parse(&LIST.replace("one = \"bogus\"", "one = { scrpt = \"x\" }")).unwrap_err();
        assert!(e.contains("scripts.bad.one") && e.contains("scrpt"), "{e}");
    }

    #[test]
    fn good_table() {
        let t = parse(GOOD).unwrap();
        let s = &t.scenarios[0];
        assert_eq!(s.boards, vec!["pc"]);
        assert_eq!(s.expect[1].min, 0);
        assert_eq!(s.expect[1].max, 1);
        assert_eq!((s.expect[2].min, s.expect[2].max), (1, 2));
        assert_eq!(s.end, End::Status("guest-panicked".into()));
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.script_via, None);
        assert_eq!(s.qmp_before_cont[0].arguments, Some(serde_json::json!({"panic": "pause"})));
        let cases = expand_cases(&boards(), &t, &[], &[]).unwrap();
        let names: Vec<String> = cases.iter().map(|c| c.full_name()).collect();
        assert_eq!(names, vec!["pc::p/isa", "pc::p/pci"]);
        assert_eq!(cases[1].min_qemu(), Some(Version::new(6, 0, 0)));
        assert_eq!(cases[0].min_qemu(), Some(Version::new(5, 0, 0)));
        assert_eq!(cases[1].extra_args(), vec!["-action", "panic=pause", "-device", "pvpanic-pci"]);
        let only_pci = expand_cases(&boards(), &t, &[], &["*pci".into()]).unwrap();
        assert_eq!(only_pci.len(), 1);
        assert!(expand_cases(&boards(), &t, &["nope".into()], &[]).is_err());
    }

    fn err_of(text: &str) -> String {
        parse(text).unwrap_err()
    }

    #[test]
    fn unknown_field_names_scenario_and_field() {
        let e = err_of("[[scenario]]\nname = \"x\"\nexpcet = []\nend = { exit = 0 }\n");
        assert!(e.contains("scenario `x`"), "{e}");
        assert!(e.contains("expcet"), "{e}");
        assert!(e.contains("fix:"), "{e}");
    }

    #[test]
    fn unknown_board_and_variant() {
        let e = err_of("[[scenario]]\nname = \"x\"\nboards = [\"pcc\"]\nvariants = [\"v\"]\nend = { exit = 0 }\n");
        assert!(e.contains("unknown board `pcc`") && e.contains("use one of: pc"), "{e}");
        assert!(e.contains("unknown variant `v`") && e.contains("[variants.v]"), "{e}");
    }

    #[test]
    fn bad_event_duration_version_end() {
        let e = err_of(
            r#"[[scenario]]
name = "x"
timeout = "10h"
settle = "fast"
min_qemu = "nine"
expect = [{ event = "GUEST_PANICED" }]
end = { status = "crashed" }
"#,
        );
        assert!(e.contains("GUEST_PANICED"), "{e}");
        assert!(e.contains("`timeout`") && e.contains("unknown unit"), "{e}");
        assert!(e.contains("`settle`"), "{e}");
        assert!(e.contains("`min_qemu`"), "{e}");
        assert!(e.contains("unknown run state \"crashed\""), "{e}");
    }

    #[test]
    fn end_needs_exactly_one() {
        let e = err_of("[[scenario]]\nname = \"x\"\nend = { exit = 0, status = \"running\" }\n");
        assert!(e.contains("exactly one"), "{e}");
        let e = err_of("[[scenario]]\nname = \"x\"\nend = { exit = 300 }\n");
        assert!(e.contains("0..=255"), "{e}");
        let e = err_of("[[scenario]]\nname = \"x\"\n");
        assert!(e.contains("end"), "{e}");
    }

    const TIMED: &str = r#"
[[scenario]]
name = "t"
expect = [
  { event = "GUEST_CRASHLOADED" },
  { event = "WATCHDOG", min = 1, max = 2 },
]
ignore = ["STOP"]
end = { status = "running" }
stderr_contains = ["watchdog: timer fired"]
timing = [
  { from = "GUEST_CRASHLOADED", to = "WATCHDOG", expect = "500ms" },
  { from = "GUEST_CRASHLOADED", to = "WATCHDOG#2", expect = "2s", tolerance = "1%" },
  { from = "WATCHDOG", to = "STOP#3", min = "1s" },
  { from = "WATCHDOG", to = "WATCHDOG#2", max = "999ms" },
]
"#;

    #[test]
    fn timing_entries() {
        let t = parse(TIMED).unwrap();
        let s = &t.scenarios[0];
        assert_eq!(s.stderr_contains, vec!["watchdog: timer fired"]);
        assert_eq!(s.timing.len(), 4);
        assert_eq!(
            s.timing[0].bound,
            Bound::Around { expect: Duration::from_millis(500), tolerance: DEFAULT_TOLERANCE }
        );
        assert_eq!(s.timing[1].to, EventRef { event: "WATCHDOG".into(), occurrence: 2 });
        assert!(matches!(s.timing[1].bound, Bound::Around { tolerance, .. } if tolerance.percent == 1.0));
        // An ignored event can occur any number of times.
        assert_eq!(s.timing[2].to.occurrence, 3);
        assert_eq!(s.timing[3].bound, Bound::Range { min: None, max: Some(Duration::from_millis(999)) });
    }

    #[test]
    fn timing_errors() {
        let with = |entry: &str| err_of(&TIMED.replace(r#"{ from = "WATCHDOG", to = "STOP#3", min = "1s" },"#, entry));
        let cases = [
            (r#"{ from = "WATCHDOG#3", to = "STOP" , min = "1s" },"#, "at most 2 WATCHDOG"),
            (r#"{ from = "RESET", to = "WATCHDOG", min = "1s" },"#, "neither in `expect` nor in `ignore`"),
            (r#"{ from = "BOGUS", to = "WATCHDOG", min = "1s" },"#, "not a watched event"),
            (r#"{ from = "watchdog", to = "STOP", min = "1s" },"#, "not an event reference"),
            (r#"{ from = "WATCHDOG#0", to = "STOP", min = "1s" },"#, "≥ 1"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1s", min = "1s" },"#, "not both or neither"),
            (r#"{ from = "WATCHDOG", to = "STOP" },"#, "not both or neither"),
            (r#"{ from = "WATCHDOG", to = "STOP", min = "1s", tolerance = "5%" },"#, "only goes with `expect`"),
            (r#"{ from = "WATCHDOG", to = "STOP", min = "2s", max = "1s" },"#, "greater than `max`"),
            (r#"{ from = "WATCHDOG", to = "WATCHDOG#1", min = "1s" },"#, "the same event"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1s", tolerance = "5" },"#, "not a tolerance"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1h" },"#, "unknown unit"),
            (r#"{ from = "WATCHDOG", to = "STOP", expect = "1s", tolerence = "5%" },"#, "tolerence"),
        ];
        for (entry, want) in cases {
            let e = with(entry);
            assert!(e.contains("scenario `t`: field `timing` entry 3") && e.contains(want), "{entry}: {e}");
            assert!(e.contains("fix:"), "{e}");
        }
        let e = err_of(&TIMED.replace(r#"stderr_contains = ["watchdog: timer fired"]"#, r#"stderr_contains = [""]"#));
        assert!(e.contains("`stderr_contains`: contains an empty string"), "{e}");
    }

    #[test]
    fn min_max_and_ignore_conflicts() {
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"RESET\", min = 3, max = 2 }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("never match"), "{e}");
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"STOP\" }]\nignore = [\"STOP\"]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("both expected and ignored"), "{e}");
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"STOP\", data = { x = 1.5 } }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("float"), "{e}");
    }

    #[test]
    fn absent_fields() {
        let t = parse(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"GUEST_PANICKED\", data = { action = \"pause\" }, \
             absent = [\"info\"] }]\nend = { exit = 0 }\n",
        )
        .unwrap();
        assert_eq!(t.scenarios[0].expect[0].absent, ["info"]);
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"GUEST_PANICKED\", data = { info = { arg1 = 1 } }, \
             absent = [\"info.arg1\"] }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("field `absent`: \"info.arg1\" is also required by `data`") && e.contains("fix:"), "{e}");
        let e = err_of(
            "[[scenario]]\nname = \"x\"\nexpect = [{ event = \"GUEST_PANICKED\", absent = [\"info.\"] }]\nend = { exit = 0 }\n",
        );
        assert!(e.contains("\"info.\" is not a payload field"), "{e}");
    }

    #[test]
    fn duplicate_names_and_bad_toplevel() {
        let e =
            err_of("[[scenario]]\nname = \"x\"\nend = { exit = 0 }\n[[scenario]]\nname = \"x\"\nend = { exit = 0 }\n");
        assert!(e.contains("duplicate"), "{e}");
        let e = err_of("[variant.x]\nargs = []\n");
        assert!(e.contains("unknown top-level key `variant`"), "{e}");
        let e = err_of("[[scenario]]\nname = \"x\"\nend = { exit = 0 }\n[[scenario\n");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn board_errors_name_file_field_fix() {
        let root = Path::new("/w");
        let e = parse_board(Path::new("boards/pc.toml"), &PC.replace("pc\"\ndesc", "q35\"\ndesc"), root).unwrap_err();
        assert!(e.contains("boards/pc.toml") && e.contains("`name`") && e.contains("fix:"), "{e}");
        let e = parse_board(Path::new("boards/pc.toml"), &format!("{PC}\nmemroy = \"1G\"\n"), root).unwrap_err();
        assert!(e.contains("boards/pc.toml") && e.contains("memroy") && e.contains("fix:"), "{e}");
        let e = parse_board(Path::new("boards/pc.toml"), &PC.replace("128M", "lots"), root).unwrap_err();
        assert!(e.contains("`memory`"), "{e}");
        let e = parse_board(Path::new("boards/pc.toml"), &PC.replace("\"x86_64\"", "\"mips\""), root).unwrap_err();
        assert!(e.contains("`arch`"), "{e}");
        let e = parse_board(Path::new("boards/pc.toml"), &PC.replace("package = \"qemu-system-x86\"\n", ""), root)
            .unwrap_err();
        assert!(e.contains("package"), "{e}");
    }

    // ── boards: arch, boot, script_via, groups ──

    const S390: &str = r#"
name = "s390"
description = "s390x"
arch = "s390x"
binary = "qemu-system-s390x"
machine = "s390-ccw-virtio"
accel = "tcg"
memory = "128M"
package = "qemu-system-s390x"
groups = ["big"]
"#;

    fn mixed_boards() -> Vec<Board> {
        let root = Path::new("/w");
        let pc = format!("{PC}groups = [\"x86\", \"pci\"]\n");
        let fast =
            format!("{}boot = \"firmware\"\ngroups = [\"x86\", \"pci\"]\n", PC.replace("\"pc\"\n", "\"fast\"\n"));
        let micro = format!("{}groups = [\"x86\"]\n", PC.replace("\"pc\"\n", "\"micro\"\n"));
        vec![
            parse_board(Path::new("boards/pc.toml"), &pc, root).unwrap(),
            parse_board(Path::new("boards/fast.toml"), &fast, root).unwrap(),
            parse_board(Path::new("boards/micro.toml"), &micro, root).unwrap(),
            parse_board(Path::new("boards/s390.toml"), S390, root).unwrap(),
        ]
    }

    #[test]
    fn board_boot_and_script_via_defaults() {
        let b = mixed_boards();
        assert_eq!((b[0].boot, b[0].script_via), (Boot::Kernel, ScriptVia::FwCfg));
        assert_eq!((b[1].boot, b[1].script_via), (Boot::Firmware, ScriptVia::FwCfg));
        assert_eq!((b[3].arch.as_str(), b[3].script_via), ("s390x", ScriptVia::Append));
        assert!(b[1].script_via_problem(ScriptVia::Append).is_some());
        assert!(b[3].script_via_problem(ScriptVia::FwCfg).unwrap().contains("no fw_cfg"));
        let root = Path::new("/w");
        let bad = |text: String| parse_board(Path::new("boards/s390.toml"), &text, root).unwrap_err();
        let e = bad(format!("{S390}script_via = \"fw_cfg\"\n"));
        assert!(e.contains("`script_via`") && e.contains("no fw_cfg") && e.contains("fix:"), "{e}");
        let e = bad(format!("{S390}boot = \"firmware\"\n"));
        assert!(e.contains("`boot`") && e.contains("x86_64 only"), "{e}");
        let e = bad(format!("{S390}boot = \"bios\"\n"));
        assert!(e.contains("bios"), "{e}");
        let e = parse_board(
            Path::new("boards/pc.toml"),
            &format!("{PC}boot = \"firmware\"\nscript_via = \"append\"\n"),
            root,
        )
        .unwrap_err();
        assert!(e.contains("-append needs -kernel"), "{e}");
        let e = parse_board(Path::new("boards/pc.toml"), &format!("{PC}groups = [\"a b\"]\n"), root).unwrap_err();
        assert!(e.contains("`groups`"), "{e}");
    }

    const GROUPED: &str = r#"
[variants.isa]
args = ["-device", "pvpanic"]
[variants.pci]
args = ["-device", "pvpanic-pci"]
boards = ["@pci"]

[[scenario]]
name = "p"
script = "pvpanic.panicked"
boards = ["@x86"]
variants = ["isa", "pci"]
end = { exit = 0 }

[[scenario]]
name = "s"
script = "s390.shutdown"
boards = ["s390"]
end = { exit = 0 }

[[scenario]]
name = "a"
script = "pvpanic.panicked"
script_via = "append"
boards = ["pc", "micro"]
end = { exit = 0 }
"#;

    #[test]
    fn groups_variant_boards_and_per_board_script_via() {
        let b = mixed_boards();
        let t = parse_scenarios(Path::new("scenarios.toml"), GROUPED, &b).unwrap();
        assert_eq!(t.scenarios[0].boards, vec!["pc", "fast", "micro"]);
        let cases = expand_cases(&b, &t, &[], &[]).unwrap();
        let names: Vec<String> = cases.iter().map(|c| c.full_name()).collect();
        assert_eq!(
            names,
            vec![
                "pc::p/isa",
                "pc::p/pci",
                "pc::a",
                "fast::p/isa",
                "fast::p/pci",
                "micro::p/isa",
                "micro::a",
                "s390::s"
            ]
        );
        let via: Vec<ScriptVia> = cases.iter().map(|c| c.script_via()).collect();
        assert_eq!(via[0], ScriptVia::FwCfg);
        assert_eq!(via[2], ScriptVia::Append);
        assert_eq!(via[7], ScriptVia::Append, "s390x default");
    }

    #[test]
    fn impossible_script_via_and_unknown_groups() {
        let b = mixed_boards();
        let parse = |text: &str| parse_scenarios(Path::new("scenarios.toml"), text, &b);
        // -append on a firmware-booted board.
        let e = parse(&GROUPED.replace(r#"boards = ["pc", "micro"]"#, r#"boards = ["pc", "fast"]"#)).unwrap_err();
        assert!(
            e.contains("scenario `a`: field `script_via`: board `fast`") && e.contains("-append needs -kernel"),
            "{e}"
        );
        assert!(e.contains("fix: remove `fast` from `boards`"), "{e}");
        // fw_cfg (the x86 rows' explicit choice) on s390x.
        let e =
            parse(&GROUPED.replace("boards = [\"s390\"]", "boards = [\"s390\"]\nscript_via = \"fw_cfg\"")).unwrap_err();
        assert!(e.contains("board `s390`") && e.contains("no fw_cfg"), "{e}");
        let e = parse(&GROUPED.replace("@x86", "@x68")).unwrap_err();
        assert!(e.contains("unknown board group `@x68`") && e.contains("@pci, @x86"), "{e}");
        let e = parse(&GROUPED.replace("@pci", "@nope")).unwrap_err();
        assert!(e.contains("variant `pci`: field `boards`") && e.contains("unknown board group"), "{e}");
        let e = parse(&GROUPED.replace(r#"boards = ["@x86"]"#, r#"boards = ["micro"]"#)).unwrap_err();
        assert!(e.contains("variant `pci` runs only on pc, fast"), "{e}");
    }

    #[test]
    fn timing_from_the_cont_resume() {
        let row = |t: &str| {
            format!(
                "[[scenario]]\nname = \"w\"\nexpect = [{{ event = \"WATCHDOG\" }}]\nend = {{ status = \"running\" }}\n\
                 timing = [{t}]\n"
            )
        };
        let t = parse(&row(r#"{ from = "RESUME", to = "WATCHDOG", expect = "15s" }"#)).unwrap();
        assert_eq!(t.scenarios[0].timing[0].from, EventRef { event: "RESUME".into(), occurrence: 1 });
        let e = err_of(&row(r#"{ from = "RESUME#2", to = "WATCHDOG", expect = "15s" }"#));
        assert!(e.contains("at most 1 RESUME"), "{e}");
    }
}
