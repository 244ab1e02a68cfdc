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
pub const SUPPORTED_ARCHES: &[&str] = &["x86_64"];

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
               accel, memory, package, args and optionally cpu and firmware (see boards/pc.toml)";
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
    })
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantDef {
    #[serde(default)]
    description: String,
    args: Vec<String>,
    min_qemu: Option<String>,
}

/// A named set of extra QEMU arguments; a scenario runs once per variant.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub args: Vec<String>,
    pub min_qemu: Option<Version>,
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
}

impl ExpectEntry {
    pub fn new(event: &str) -> Self {
        ExpectEntry { event: event.to_string(), data: None, min: 1, max: 1 }
    }
}

impl std::fmt::Display for ExpectEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.event)?;
        if let Some(d) = &self.data {
            write!(f, "{d}")?;
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
    pub script_via: ScriptVia,
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
        if key != "variants" && key != "scenario" {
            errors.push(format!(
                "{fname}: unknown top-level key `{key}`\n  fix: the file holds only [variants.NAME] tables and [[scenario]] rows"
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
                    "a variant has `args = [...]` and optionally `description` and `min_qemu`",
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
                variants.insert(
                    name.clone(),
                    Variant { name: name.clone(), description: def.description, args: def.args, min_qemu },
                );
            }
        }
        Some(_) => errors.push(format!("{fname}: `variants` must be a table\n  fix: write [variants.NAME] sections")),
    }

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
    for (idx, row) in rows.into_iter().enumerate() {
        let label = row
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!("scenario `{n}`"))
            .unwrap_or_else(|| format!("scenario #{}", idx + 1));
        let ctx = format!("{fname}: {label}");
        match validate_scenario(&ctx, row, &board_names, &variant_names) {
            Ok(s) => {
                if !seen.insert(s.name.clone()) {
                    errors.push(format!("{ctx}: duplicate name\n  fix: give every scenario a unique `name`"));
                } else {
                    scenarios.push(Arc::new(s));
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
            for name in &b {
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
        expect.push(ExpectEntry { event: d.event, data, min, max });
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
    let script_via = def.script_via.unwrap_or(ScriptVia::FwCfg);
    if script.is_none() && def.script_via.is_some() {
        errs.field(
            "script_via",
            "is set but there is no script".into(),
            "remove `script_via` or add a `script`".into(),
        );
    }
    if let Some(s) = &script
        && s.contains('\0')
    {
        errs.field("script", "contains a NUL byte".into(), "remove it".into());
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
        }),
        _ => Err(errs.list),
    }
}

/// How many events called `event` a passing run can have: the sum of the
/// `max` of its `expect` entries; `None` = unbounded (the event is ignored).
fn capacity(event: &str, expect: &[ExpectEntry], ignore: &[String]) -> Option<u32> {
    if ignore.iter().any(|i| i == event) {
        return None;
    }
    Some(expect.iter().filter(|e| e.event == event).map(|e| e.max).sum())
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
                s.variants.iter().map(|v| Some(table.variants[v].clone())).collect()
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
        assert_eq!(s.script_via, ScriptVia::FwCfg);
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
}
