//! `boards/*.toml`: one QEMU machine configuration per file. The board's
//! architecture, how the agent boots and gets its script, its groups, and
//! how and where it runs (`kind`, `requires`, `instead_of`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::arch::Arch;
use crate::clock::Clock;
use crate::error::{ConfigError, Place, Problem};

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
    #[serde(default)]
    ram: Ram,
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
    clock: Option<Clock>,
    #[serde(default)]
    virtual_args: Vec<String>,
    #[serde(default)]
    bench: Vec<BenchFile>,
    disk: Option<super::disk::DiskFile>,
    uefi: Option<super::disk::UefiFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchFile {
    name: Option<String>,
    description: String,
    floor: BenchFloor,
    script: String,
    #[serde(default)]
    args: Vec<String>,
    firmware: Option<String>,
}

/// One QEMU machine configuration (a `boards/<name>.toml`).
#[derive(Clone, Debug)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// Which image the board boots.
    pub arch: Arch,
    /// QEMU executable (looked up in `PATH` unless it contains a `/`).
    pub binary: String,
    /// `-machine` value, may carry options (`q35,smm=off`).
    pub machine: String,
    pub accel: String,
    pub memory: String,
    /// What backs the guest's RAM (`ram = …`).
    pub ram: Ram,
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
    /// How and where the board runs: `kind`, `requires`, `instead_of`.
    pub launch: Launch,
    /// Its rows of `cargo xtask bench` (`[[bench]]`, none: no row).
    pub bench: Vec<BenchRow>,
    /// The clock of its rows unless a row or `--clock` says otherwise.
    pub clock: Clock,
    /// Arguments a run in virtual time adds (after `-icount`), e.g.
    /// `-machine pit=off` on x86_64 (see boards/pc.toml).
    pub virtual_args: Vec<String>,
    /// `boot = "disk"`: how the disk is attached and the UEFI firmware
    /// (`[disk]`, `[uefi]`; see boards/q35-ovmf.toml).
    pub disk: Option<super::disk::DiskBoot>,
}

/// One row of `cargo xtask bench` (a `[[bench]]` table): the agent booted
/// on the board with `script`, against a floor with the same command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchRow {
    /// The row's name (default: the board's).
    pub name: String,
    pub description: String,
    pub floor: BenchFloor,
    /// The agent's script (through the board's `script_via`); it must end
    /// in GUEST_PANICKED.
    pub script: String,
    /// Arguments of both boots, after the board's.
    pub args: Vec<String>,
    /// `-bios` in front of the agent's `-kernel` instead of the board's
    /// `firmware`, resolved against the workspace root.
    pub firmware: Option<PathBuf>,
}

/// What a bench row's agent is compared with (`floor = …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchFloor {
    /// `-bios floor.rom` instead of the agent (x86_64: a ROM whose reset
    /// vector writes "panicked" to the ISA pvpanic port), to GUEST_PANICKED.
    Rom,
    /// `-kernel floor.Image` instead of the agent's Image (aarch64: an arm64
    /// Image that programs pvpanic-pci at slot 2 and writes "panicked", see
    /// `arm64_image::floor`), to GUEST_PANICKED.
    Image,
    /// The same command line, to QMP ready (`qmp_capabilities` answered).
    QmpReady,
}

/// What backs the guest's RAM (`ram = …` in the board file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ram {
    /// QEMU's default: anonymous memory, which QEMU asks the host to back
    /// with transparent huge pages.
    #[default]
    Anonymous,
    /// `-object memory-backend-memfd` of the board's `memory`: shared memory,
    /// backed with 4 KiB pages, so the guest's first write to RAM costs the
    /// host a small page instead of zeroing 2 MiB.
    Memfd,
}

/// How the agent starts on a board (`boot = …` in the board file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// `-kernel <ELF>`: PVH on x86_64 (after SeaBIOS, qboot or the board's
    /// `firmware`), the ELF IPL on s390x; on aarch64 `-kernel <Image>`, the
    /// flat arm64 Image made from the ELF (`arm64_image.rs`).
    #[default]
    Kernel,
    /// x86_64 only: the agent is the firmware, `-bios <ROM>` (`rom.rs`). No
    /// `-append`, no firmware PCI set-up (the agent assigns BARs on bus 0).
    Firmware,
    /// x86_64 and aarch64: the disk of `cargo xtask image` (made per run),
    /// booted by the firmware: the legacy BIOS through its MBR, UEFI through
    /// `\EFI\BOOT\BOOTX64.EFI` or `\EFI\BOOT\BOOTAA64.EFI` (the board's
    /// `[disk]` and `[uefi]`; aarch64 needs `[uefi]`).
    Disk,
}

/// How the script reaches the agent (a board's default, or a scenario's
/// choice).
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
    /// `-smbios type=11,value=pvagent:script=<script>`: an SMBIOS OEM string
    /// (x86_64; what libvirt's `<oemStrings>` gives).
    Smbios,
    /// Baked into the run's copy of the disk (`cargo xtask image --script`;
    /// `boot = "disk"` boards).
    Image,
}

impl ScriptVia {
    pub fn name(self) -> &'static str {
        match self {
            ScriptVia::FwCfg => "fw_cfg",
            ScriptVia::Append => "append",
            ScriptVia::FwCfgFile => "fw_cfg_file",
            ScriptVia::Smbios => "smbios",
            ScriptVia::Image => "image",
        }
    }
}

/// How a board's QEMU is started (`kind = …`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BoardKind {
    /// The board's QEMU runs on this host (`kind = "qemu"`, the default).
    #[default]
    Qemu,
    /// The board's QEMU runs under KVM inside an L1 Linux that the host QEMU
    /// runs under TCG (`kind = "nested-hyperv"`).
    NestedHyperv,
    /// libvirt runs the board's QEMU for a transient domain of the harness
    /// (`kind = "libvirt"`, see boards/libvirt-q35.toml).
    Libvirt,
}

/// A host capability a board needs (`requires = [...]`); whether this host
/// has it is probed by the launchers (`launch/host.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostFeature {
    /// `/dev/kvm` can be opened read-write.
    Kvm,
    /// KVM with Hyper-V emulation and the crash MSRs (`KVM_CAP_HYPERV`,
    /// CRASH_CTL in KVM's MSR list).
    KvmHyperv,
}

impl HostFeature {
    pub const ALL: [(&'static str, HostFeature); 2] =
        [("kvm", HostFeature::Kvm), ("kvm-hyperv", HostFeature::KvmHyperv)];

    pub fn name(self) -> &'static str {
        match self {
            HostFeature::Kvm => "kvm",
            HostFeature::KvmHyperv => "kvm-hyperv",
        }
    }
}

/// How and where a board runs (`kind`, `requires`, `instead_of`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Launch {
    pub kind: BoardKind,
    /// Host capabilities the board needs; without them its rows are SKIPPED.
    pub requires: Vec<HostFeature>,
    /// The board runs only where this board cannot (its rows are SKIPPED,
    /// naming it, where it can).
    pub instead_of: Option<String>,
    /// `requires` of the `instead_of` board (filled in by [`check_boards`]).
    pub instead_of_requires: Vec<HostFeature>,
}

/// A name of a board, group, variant or list: letters, digits, `-_.`.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub(super) const NAME_FIX: &str = "use letters, digits, '-', '_' and '.' only";

/// Parses one board file's text (`file` is used in messages and to derive the
/// expected name).
pub fn parse(file: &Path, text: &str, root: &Path) -> Result<Board, ConfigError> {
    let at = Place::new(file.display().to_string());
    let fix = "a board file has exactly the fields name, description, arch, binary, machine, \
               accel, memory, package, args and optionally cpu, firmware, boot, script_via, groups, \
               kind, requires, instead_of, clock, virtual_args, [[bench]] tables, [disk] and [uefi] (see \
               boards/pc.toml, boards/hyperv-nested.toml, boards/q35-ovmf.toml)";
    let b: BoardFile = at.deserialize(toml::Value::Table(at.parse_toml(text)?), fix)?;
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    if b.name != stem {
        return Err(at.field(
            "name",
            format!("is \"{}\" but the file is named {stem}.toml", b.name),
            format!("set name = \"{stem}\" or rename the file to {}.toml", b.name),
        ));
    }
    if !valid_name(&b.name) {
        return Err(at.field("name", format!("\"{}\" is not a valid board name", b.name), NAME_FIX));
    }
    let Some(arch) = Arch::parse(&b.arch) else {
        return Err(at.field(
            "arch",
            format!("unsupported architecture \"{}\"", b.arch),
            format!("use one of: {}", Arch::known()),
        ));
    };
    for (field, v) in [("binary", &b.binary), ("machine", &b.machine), ("accel", &b.accel), ("package", &b.package)] {
        if v.trim().is_empty() {
            return Err(at.field(field, "is empty", format!("give `{field}` a value")));
        }
    }
    let mem_ok = {
        let m = b.memory.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
        !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()) && b.memory.len() - m.len() <= 1
    };
    if !mem_ok {
        return Err(at.field(
            "memory",
            format!("\"{}\" is not a memory size", b.memory),
            "write a number with an optional K/M/G suffix, e.g. \"128M\"",
        ));
    }
    if let Some(cpu) = &b.cpu
        && cpu.trim().is_empty()
    {
        return Err(at.field("cpu", "is empty", "remove `cpu` to use QEMU's default"));
    }
    let (boot, script_via) = board_boot(&b, arch).map_err(|(field, p)| at.problem(Some(field), p))?;
    let disk = super::disk::parse(
        b.disk.as_ref(),
        b.uefi.as_ref(),
        boot == Boot::Disk,
        arch,
        &b.machine,
        b.firmware.is_some(),
    )
    .map_err(|(field, p)| at.problem(Some(field), p))?;
    for g in &b.groups {
        if !valid_name(g) {
            return Err(at.field(
                "groups",
                format!("\"{g}\" is not a valid group name"),
                "use letters, digits, '-', '_' and '.' only (scenarios write \"@name\")",
            ));
        }
    }
    let launch = parse_launch(b.kind.as_deref(), &b.requires, b.instead_of.as_deref())
        .map_err(|(field, p)| at.problem(Some(field), p))?;
    let clock = b.clock.unwrap_or_default();
    if let Some(why) = virtual_time_problem(&b.accel, launch.kind) {
        if clock == Clock::Virtual {
            return Err(at.field("clock", format!("\"virtual\" is impossible here: {why}"), "remove `clock`"));
        }
        if !b.virtual_args.is_empty() {
            return Err(at.field(
                "virtual_args",
                format!("this board never runs in virtual time: {why}"),
                "remove `virtual_args`",
            ));
        }
    }
    let resolve = |f: &String| {
        let p = PathBuf::from(f);
        if p.is_absolute() { p } else { root.join(p) }
    };
    let firmware = b.firmware.as_ref().map(resolve);
    let mut bench: Vec<BenchRow> = Vec::new();
    for r in &b.bench {
        let name = r.name.clone().unwrap_or_else(|| b.name.clone());
        let row = at.within(format!("bench row `{name}`"));
        if !valid_name(&name) {
            return Err(row.field("name", format!("\"{name}\" is not a valid bench row name"), NAME_FIX));
        }
        if bench.iter().any(|x| x.name == name) {
            return Err(row.field("name", "is used twice", "give each [[bench]] row its own `name`"));
        }
        if launch.kind != BoardKind::Qemu {
            return Err(row.error(
                "bench boots the board's QEMU on this host, and this board's runs elsewhere",
                "remove the [[bench]] table",
            ));
        }
        let floor_fix = || match arch {
            Arch::Aarch64 => "use floor = \"image\" or \"qmp-ready\"",
            Arch::X86_64 => "use floor = \"rom\" or \"qmp-ready\"",
            Arch::S390x => "use floor = \"qmp-ready\"",
        };
        if r.floor == BenchFloor::Rom && arch != Arch::X86_64 {
            return Err(row.field(
                "floor",
                format!("\"rom\" is an x86_64 reset vector, this board is {arch}"),
                floor_fix(),
            ));
        }
        if r.floor == BenchFloor::Image && arch != Arch::Aarch64 {
            return Err(row.field(
                "floor",
                format!("\"image\" is an arm64 Image for -M virt, this board is {arch}"),
                floor_fix(),
            ));
        }
        if r.script.trim().is_empty() {
            return Err(row.field("script", "is empty", "give the script that ends in GUEST_PANICKED"));
        }
        if r.firmware.is_some() && boot == Boot::Firmware {
            return Err(row.field(
                "firmware",
                "the agent is this board's firmware (boot = \"firmware\")",
                "remove `firmware`",
            ));
        }
        bench.push(BenchRow {
            name,
            description: r.description.clone(),
            floor: r.floor,
            script: r.script.clone(),
            args: r.args.clone(),
            firmware: r.firmware.as_ref().map(resolve),
        });
    }
    Ok(Board {
        name: b.name,
        description: b.description,
        arch,
        binary: b.binary,
        machine: b.machine,
        accel: b.accel,
        memory: b.memory,
        ram: b.ram,
        cpu: b.cpu,
        firmware,
        args: b.args,
        package: b.package,
        file: file.to_path_buf(),
        boot,
        script_via,
        groups: b.groups,
        launch,
        bench,
        clock,
        virtual_args: b.virtual_args,
        disk,
    })
}

/// Why a board with `accel` of `kind` cannot run in virtual time (`None`:
/// it can).
fn virtual_time_problem(accel: &str, kind: BoardKind) -> Option<String> {
    match kind {
        // libvirt has no element for -icount: a libvirt board's run in
        // virtual time passes it in libvirt's QEMU namespace
        // (<qemu:commandline>, see xtask/src/libvirt/xml.rs).
        BoardKind::Qemu | BoardKind::Libvirt => {}
        BoardKind::NestedHyperv => return Some("L2 runs under L1's KVM, and -icount needs TCG".into()),
    }
    let name = accel.split(',').next().unwrap_or_default();
    (name != "tcg").then(|| format!("-icount needs TCG, and this board's accel is \"{accel}\""))
}

/// Why `via` cannot deliver a script on a board of `arch` booting with
/// `boot` (`None`: it can).
fn script_via_problem(arch: Arch, boot: Boot, via: ScriptVia) -> Option<String> {
    match (arch, boot, via) {
        (Arch::S390x, _, ScriptVia::FwCfg | ScriptVia::FwCfgFile) => {
            Some("s390x has no fw_cfg; scripts go through -append".into())
        }
        (_, Boot::Firmware, ScriptVia::Append) => {
            Some("the agent boots as the firmware (-bios), and -append needs -kernel".into())
        }
        (_, Boot::Disk, ScriptVia::Append) => Some("the board boots a disk, and -append needs -kernel".into()),
        (Arch::S390x | Arch::Aarch64, _, ScriptVia::Smbios) => {
            Some(format!("the agent reads SMBIOS OEM strings on x86_64 only, this board is {arch}"))
        }
        (Arch::S390x | Arch::Aarch64, Boot::Disk, ScriptVia::Image) => {
            Some(crate::disk::bake_problem(arch).unwrap_or_default())
        }
        (_, Boot::Kernel | Boot::Firmware, ScriptVia::Image) => Some(
            "the script is baked into the disk of `cargo xtask image`, and this board boots no disk \
             (boot = \"disk\" boards only)"
                .into(),
        ),
        _ => None,
    }
}

impl Board {
    /// Why this board cannot run in virtual time (`None`: it can).
    pub fn virtual_time_problem(&self) -> Option<String> {
        virtual_time_problem(&self.accel, self.launch.kind)
    }

    /// Why this board cannot deliver a script through `via` (`None`: it can).
    pub fn script_via_problem(&self, via: ScriptVia) -> Option<String> {
        if via == ScriptVia::FwCfgFile && self.launch.kind == BoardKind::NestedHyperv {
            return Some("this board's QEMU runs inside L1, where the run directory's files are not".into());
        }
        if self.launch.kind == BoardKind::Libvirt && matches!(via, ScriptVia::Smbios | ScriptVia::Image) {
            return Some("a libvirt board's domain takes scripts through fw_cfg or the command line here".into());
        }
        script_via_problem(self.arch, self.boot, via)
    }
}

/// A board's `boot` and default `script_via`, or the field and its problem.
fn board_boot(b: &BoardFile, arch: Arch) -> Result<(Boot, ScriptVia), (&'static str, Problem)> {
    let boot = b.boot.unwrap_or_default();
    if boot == Boot::Firmware {
        if arch != Arch::X86_64 {
            return Err((
                "boot",
                Problem::new(
                    format!("\"firmware\" (the agent's -bios ROM) exists for x86_64 only, this board is {arch}"),
                    "remove `boot`",
                ),
            ));
        }
        if b.firmware.is_some() {
            return Err((
                "boot",
                Problem::new(
                    "\"firmware\" makes the agent the firmware, so a `firmware` image cannot be used too",
                    "remove `firmware` or `boot`",
                ),
            ));
        }
    }
    if boot == Boot::Disk && crate::disk::efi::uefi(arch).is_none() {
        return Err((
            "boot",
            Problem::new(
                format!(
                    "\"disk\" (the disk of `cargo xtask image`) exists for x86_64 and aarch64 only, this board is {arch}"
                ),
                "remove `boot`",
            ),
        ));
    }
    let default = if arch == Arch::S390x { ScriptVia::Append } else { ScriptVia::FwCfg };
    let via = b.script_via.unwrap_or(default);
    if let Some(p) = script_via_problem(arch, boot, via) {
        return Err((
            "script_via",
            Problem::new(
                format!("\"{}\" is impossible here: {p}", via.name()),
                format!("remove `script_via` (the default here is \"{}\")", default.name()),
            ),
        ));
    }
    Ok((boot, via))
}

/// Parses a board file's `kind`, `requires` and `instead_of`.
fn parse_launch(
    kind: Option<&str>,
    requires: &[String],
    instead_of: Option<&str>,
) -> Result<Launch, (&'static str, Problem)> {
    let kind = match kind {
        None | Some("qemu") => BoardKind::Qemu,
        Some("nested-hyperv") => BoardKind::NestedHyperv,
        Some("libvirt") => BoardKind::Libvirt,
        Some(k) => {
            return Err((
                "kind",
                Problem::new(
                    format!("unknown kind \"{k}\""),
                    "use \"qemu\" (QEMU on this host, the default), \"nested-hyperv\" \
                     (QEMU under KVM inside a TCG-run Linux, for the Hyper-V crash MSRs) or \"libvirt\" \
                     (a transient libvirt domain)",
                ),
            ));
        }
    };
    let mut req = Vec::new();
    for r in requires {
        match HostFeature::ALL.iter().find(|(n, _)| n == r) {
            Some((_, f)) if !req.contains(f) => req.push(*f),
            Some(_) => return Err(("requires", Problem::new(format!("\"{r}\" is listed twice"), "list it once"))),
            None => {
                return Err((
                    "requires",
                    Problem::new(
                        format!("unknown host capability \"{r}\""),
                        format!("use {}", HostFeature::ALL.map(|(n, _)| format!("\"{n}\"")).join(" or ")),
                    ),
                ));
            }
        }
    }
    if let Some(i) = instead_of
        && i.trim().is_empty()
    {
        return Err(("instead_of", Problem::new("is empty", "name a board, or remove `instead_of`")));
    }
    Ok(Launch { kind, requires: req, instead_of: instead_of.map(String::from), instead_of_requires: Vec::new() })
}

/// Checks what only the whole board set can tell (`instead_of` names a board
/// with `requires`) and what a nested board needs; fills in
/// [`Launch::instead_of_requires`]. Returns the errors.
pub fn check_boards(boards: &mut [Board]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let requires: BTreeMap<String, (Vec<HostFeature>, bool)> =
        boards.iter().map(|b| (b.name.clone(), (b.launch.requires.clone(), b.launch.instead_of.is_some()))).collect();
    let mut bench_rows: BTreeMap<String, String> = BTreeMap::new();
    for b in boards.iter_mut() {
        let at = Place::new(b.file.display().to_string());
        for r in &b.bench {
            if let Some(other) = bench_rows.insert(r.name.clone(), b.name.clone()) {
                errors.push(at.within(format!("bench row `{}`", r.name)).field(
                    "name",
                    format!("board `{other}` has a bench row of that name"),
                    "give the row another `name`",
                ));
            }
        }
        let mut err = |field: &str, msg: String, fix: String| errors.push(at.field(field, msg, fix));
        if let Some(other) = b.launch.instead_of.clone() {
            match requires.get(&other) {
                None => err(
                    "instead_of",
                    format!("unknown board `{other}`"),
                    format!("use one of: {}", requires.keys().cloned().collect::<Vec<_>>().join(", ")),
                ),
                Some(_) if other == b.name => {
                    err("instead_of", "names the board itself".into(), "name the board this one stands in for".into())
                }
                Some((req, _)) if req.is_empty() => err(
                    "instead_of",
                    format!("board `{other}` has no `requires`, so it runs everywhere and this board never would"),
                    format!("add `requires` to boards/{other}.toml, or remove `instead_of`"),
                ),
                Some((_, true)) => err(
                    "instead_of",
                    format!("board `{other}` has an `instead_of` itself"),
                    "point at the board that runs where the host can".into(),
                ),
                Some((req, false)) => b.launch.instead_of_requires = req.clone(),
            }
        }
        if b.launch.kind == BoardKind::Libvirt {
            let why = "a libvirt board's QEMU command line is libvirt's: the domain comes from the rows' \
                       `libvirt` tables (see boards/libvirt-q35.toml)";
            if !b.args.is_empty() {
                err("args", format!("is set; {why}"), "remove `args`".into());
            }
            if b.cpu.is_some() {
                err("cpu", format!("is set; {why}"), "remove `cpu` (libvirt's default CPU model)".into());
            }
            if b.ram != Ram::Anonymous {
                err("ram", format!("is set; {why}"), "remove `ram`".into());
            }
            if b.firmware.is_some() {
                err(
                    "firmware",
                    "is set; libvirt boots `<kernel>` behind its own firmware (SeaBIOS on x86_64)".into(),
                    "remove `firmware`, or set boot = \"firmware\" for the agent's ROM as `<loader type='rom'>`".into(),
                );
            }
            if !matches!(b.accel.as_str(), "tcg" | "kvm") {
                err(
                    "accel",
                    format!("is \"{}\"; a libvirt domain is of type qemu (tcg) or kvm", b.accel),
                    "set accel = \"tcg\"".into(),
                );
            }
            if b.arch == Arch::Aarch64 {
                err("arch", "aarch64 has no libvirt board here yet".into(), "use x86_64 or s390x".into());
            }
            if b.boot == Boot::Disk {
                err(
                    "boot",
                    "\"disk\" has no libvirt board here yet (the disk boards are kind = \"qemu\")".into(),
                    "use boot = \"kernel\" or \"firmware\"".into(),
                );
            }
            continue;
        }
        if b.launch.kind != BoardKind::NestedHyperv {
            continue;
        }
        let why = "a nested-hyperv board runs the host's qemu-system-x86_64 (L1, TCG), which runs it again \
                   under KVM (L2)";
        if b.arch != Arch::X86_64 {
            err("arch", format!("is \"{}\"; {why}", b.arch), "set arch = \"x86_64\"".into());
        }
        if Path::new(&b.binary).file_name().is_none_or(|n| n != "qemu-system-x86_64") {
            err("binary", format!("is \"{}\"; {why}", b.binary), "set binary = \"qemu-system-x86_64\"".into());
        }
        if b.accel != "kvm" {
            err(
                "accel",
                format!("is \"{}\", but L2 always runs under L1's KVM", b.accel),
                "set accel = \"kvm\"".into(),
            );
        }
        if b.cpu.is_none() {
            err(
                "cpu",
                "is missing; it is L2's -cpu, and the Hyper-V crash MSRs need hv-crash".into(),
                "set cpu = \"qemu64,hv-crash\"".into(),
            );
        }
        if b.boot != Boot::Kernel {
            err("boot", "L2 boots the agent with -kernel only".into(), "remove `boot`".into());
        }
        if let Some(fw) = &b.firmware
            && !fw.is_absolute()
        {
            err(
                "firmware",
                format!("{} is not an absolute path; L2 sees only L1's files", fw.display()),
                "name one of the host QEMU's firmware files by its absolute path (it is copied into L1), \
                 or remove `firmware` (qboot)"
                    .into(),
            );
        }
    }
    errors
}

/// Expands `@group` entries of a `boards` list into board names (in board
/// order, each once); names are kept as given. Unknown groups are errors.
pub(super) fn expand_board_list(list: &[String], boards: &[Board]) -> Result<Vec<String>, Problem> {
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
                    return Err(Problem::new(
                        format!("unknown board group `{entry}`"),
                        format!(
                            "use one of: {} (boards join a group with `groups = [...]`)",
                            if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") }
                        ),
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

/// A variant's or a `[scripts]` entry's `boards`: groups expanded, every
/// name a known board.
pub(super) fn board_subset(list: &[String], boards: &[Board]) -> Result<Vec<String>, Problem> {
    let names = expand_board_list(list, boards)?;
    if names.is_empty() {
        return Err(Problem::new("is empty", "list boards or @groups, or omit `boards` for all"));
    }
    for n in &names {
        if !boards.iter().any(|b| &b.name == n) {
            return Err(Problem::new(
                format!("unknown board `{n}`"),
                format!("use one of: {}", boards.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")),
            ));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::{PC, S390, VIRT, mixed_boards};

    fn parse_pc(text: &str) -> Result<Board, String> {
        parse(Path::new("boards/pc.toml"), text, Path::new("/w")).map_err(|e| e.to_string())
    }

    #[test]
    fn board_errors_name_file_field_fix() {
        let e = parse_pc(&PC.replace("pc\"\ndesc", "q35\"\ndesc")).unwrap_err();
        assert!(e.contains("boards/pc.toml") && e.contains("`name`") && e.contains("fix:"), "{e}");
        let e = parse_pc(&format!("{PC}\nmemroy = \"1G\"\n")).unwrap_err();
        assert!(e.contains("boards/pc.toml") && e.contains("memroy") && e.contains("fix:"), "{e}");
        let e = parse_pc(&PC.replace("128M", "lots")).unwrap_err();
        assert!(e.contains("`memory`"), "{e}");
        let e = parse_pc(&PC.replace("\"x86_64\"", "\"mips\"")).unwrap_err();
        assert_eq!(
            e,
            "boards/pc.toml: field `arch`: unsupported architecture \"mips\"\n  fix: use one of: x86_64, s390x, aarch64"
        );
        let e = parse_pc(&PC.replace("package = \"qemu-system-x86\"\n", "")).unwrap_err();
        assert!(e.contains("package"), "{e}");
        let e = parse_pc("name = \"pc\"\n[[x").unwrap_err();
        assert!(e.starts_with("boards/pc.toml: invalid TOML: ") && !e.contains("fix:"), "{e}");
    }

    #[test]
    fn board_boot_and_script_via_defaults() {
        let b = mixed_boards();
        assert_eq!((b[0].boot, b[0].script_via), (Boot::Kernel, ScriptVia::FwCfg));
        assert_eq!((b[1].boot, b[1].script_via), (Boot::Firmware, ScriptVia::FwCfg));
        assert_eq!((b[3].arch.as_str(), b[3].script_via), ("s390x", ScriptVia::Append));
        assert_eq!(b[3].arch, Arch::S390x);
        assert!(b[1].script_via_problem(ScriptVia::Append).is_some());
        assert!(b[3].script_via_problem(ScriptVia::FwCfg).unwrap().contains("no fw_cfg"));
        let root = Path::new("/w");
        let bad = |text: String| parse(Path::new("boards/s390.toml"), &text, root).unwrap_err().to_string();
        let e = bad(format!("{S390}script_via = \"fw_cfg\"\n"));
        assert!(e.contains("`script_via`") && e.contains("no fw_cfg") && e.contains("fix:"), "{e}");
        let e = bad(format!("{S390}boot = \"firmware\"\n"));
        assert!(e.contains("`boot`") && e.contains("x86_64 only"), "{e}");
        let e = bad(format!("{S390}boot = \"bios\"\n"));
        assert!(e.contains("bios"), "{e}");
        let e = parse_pc(&format!("{PC}boot = \"firmware\"\nscript_via = \"append\"\n")).unwrap_err();
        assert!(e.contains("-append needs -kernel"), "{e}");
        let e = parse_pc(&format!("{PC}groups = [\"a b\"]\n")).unwrap_err();
        assert!(e.contains("`groups`"), "{e}");
    }

    #[test]
    fn bench_rows() {
        let row = "[[bench]]\ndescription = \"d\"\nfloor = \"rom\"\nscript = \"pvpanic.panicked\"\n";
        let b = parse_pc(&format!(
            "{PC}{row}args = [\"-device\", \"pvpanic\"]\n{row}name = \"pc-qboot\"\nfirmware = \"q.rom\"\n"
        ))
        .unwrap();
        assert_eq!(b.bench.len(), 2);
        assert_eq!((b.bench[0].name.as_str(), b.bench[0].floor), ("pc", BenchFloor::Rom));
        assert_eq!(b.bench[0].args, ["-device", "pvpanic"]);
        assert_eq!(b.bench[1].firmware.as_deref(), Some(Path::new("/w/q.rom")));
        assert!(parse_pc(PC).unwrap().bench.is_empty());
        let e = parse_pc(&format!("{PC}{row}{row}")).unwrap_err();
        assert_eq!(
            e,
            "boards/pc.toml: bench row `pc`: field `name`: is used twice\n  fix: give each [[bench]] row its own `name`"
        );
        let e = parse_pc(&format!("{PC}{row}floor2 = 1\n")).unwrap_err();
        assert!(e.contains("floor2") && e.contains("fix:"), "{e}");
        let e = parse_pc(&format!("{PC}{}", row.replace("rom", "bios"))).unwrap_err();
        assert!(e.contains("bios") && e.contains("qmp-ready"), "{e}");
        let e = parse_pc(&format!("{PC}{}", row.replace("pvpanic.panicked", " "))).unwrap_err();
        assert!(e.contains("field `script`: is empty"), "{e}");
        let s390 = |extra: &str| parse(Path::new("boards/s390.toml"), &format!("{S390}{extra}"), Path::new("/w"));
        let e = s390(row).unwrap_err().to_string();
        assert!(e.contains("bench row `s390`: field `floor`: \"rom\" is an x86_64 reset vector"), "{e}");
        let e = s390(&row.replace("\"rom\"", "\"image\"")).unwrap_err().to_string();
        assert!(e.contains("\"image\" is an arm64 Image for -M virt, this board is s390x"), "{e}");
        assert!(e.contains("fix: use floor = \"qmp-ready\""), "{e}");
        let e = parse_pc(&format!("{PC}{}", row.replace("\"rom\"", "\"image\""))).unwrap_err();
        assert!(e.contains("this board is x86_64") && e.contains("fix: use floor = \"rom\" or \"qmp-ready\""), "{e}");
        let virt = |extra: &str| parse(Path::new("boards/virt.toml"), &format!("{VIRT}{extra}"), Path::new("/w"));
        assert_eq!(virt(&row.replace("\"rom\"", "\"image\"")).unwrap().bench[0].floor, BenchFloor::Image);
        let e = virt(row).unwrap_err().to_string();
        assert!(
            e.contains("this board is aarch64") && e.contains("fix: use floor = \"image\" or \"qmp-ready\""),
            "{e}"
        );
        assert_eq!(s390(&row.replace("\"rom\"", "\"qmp-ready\"")).unwrap().bench[0].floor, BenchFloor::QmpReady);
        let e = hv(&format!("kind = \"nested-hyperv\"\ncpu = \"qemu64,hv-crash\"\n{row}")).unwrap_err();
        assert!(e.contains("bench row `hv`") && e.contains("remove the [[bench]] table"), "{e}");
        let x = format!("{row}name = \"x\"\n");
        let mut two = vec![named("a", &x), named("b", &x)];
        let e = check(&mut two);
        assert!(e.contains("boards/b.toml: bench row `x`: field `name`: board `a` has a bench row"), "{e}");
    }

    #[test]
    fn clock_and_virtual_args() {
        let b = parse_pc(&format!("{PC}clock = \"virtual\"\nvirtual_args = [\"-machine\", \"pit=off\"]\n")).unwrap();
        assert_eq!(b.clock, Clock::Virtual);
        assert_eq!(b.virtual_args, ["-machine", "pit=off"]);
        let pc = parse_pc(PC).unwrap();
        assert_eq!((pc.clock, pc.virtual_time_problem()), (Clock::Real, None));
        let e = parse_pc(&format!("{PC}clock = \"icount\"\n")).unwrap_err();
        assert!(e.contains("icount") && e.contains("fix:"), "{e}");
        let e = hv("clock = \"virtual\"").unwrap_err();
        assert_eq!(
            e,
            "boards/hv.toml: field `clock`: \"virtual\" is impossible here: -icount needs TCG, and this board's \
             accel is \"kvm\"\n  fix: remove `clock`"
        );
        let e = hv("virtual_args = [\"-machine\", \"pit=off\"]").unwrap_err();
        assert!(e.contains("field `virtual_args`: this board never runs in virtual time"), "{e}");
        assert!(hv("clock = \"real\"").unwrap().virtual_time_problem().unwrap().contains("needs TCG"));
        let nested = hv("kind = \"nested-hyperv\"\ncpu = \"x\"").unwrap();
        assert!(nested.virtual_time_problem().unwrap().contains("L1's KVM"));
        // tcg with options is still TCG.
        assert_eq!(parse_pc(&PC.replace("\"tcg\"", "\"tcg,tb-size=64\"")).unwrap().virtual_time_problem(), None);
    }

    // ── kind, requires, instead_of (moved here from nested_run.rs) ──

    fn hv(extra: &str) -> Result<Board, String> {
        let text = format!(
            "name = \"hv\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
             machine = \"pc\"\naccel = \"kvm\"\nmemory = \"32M\"\npackage = \"qemu-system-x86\"\n{extra}\n"
        );
        parse(Path::new("boards/hv.toml"), &text, Path::new("/w")).map_err(|e| e.to_string())
    }

    fn named(name: &str, extra: &str) -> Board {
        let mut b = hv(extra).unwrap();
        b.name = name.into();
        b.file = PathBuf::from(format!("boards/{name}.toml"));
        b
    }

    fn check(boards: &mut [Board]) -> String {
        crate::error::join(&check_boards(boards))
    }

    #[test]
    fn launch_fields() {
        let b = hv("kind = \"nested-hyperv\"\ncpu = \"qemu64,hv-crash\"\ninstead_of = \"direct\"").unwrap();
        assert_eq!(b.launch.kind, BoardKind::NestedHyperv);
        assert_eq!(b.launch.instead_of.as_deref(), Some("direct"));
        let b = hv("requires = [\"kvm-hyperv\", \"kvm\"]").unwrap();
        assert_eq!(b.launch.kind, BoardKind::Qemu);
        assert_eq!(b.launch.requires, [HostFeature::KvmHyperv, HostFeature::Kvm]);
        for (extra, want) in [
            ("kind = \"nested\"", "field `kind`: unknown kind \"nested\""),
            ("requires = [\"hyperv\"]", "unknown host capability \"hyperv\""),
            ("requires = [\"kvm\", \"kvm\"]", "listed twice"),
            ("instead_of = \"\"", "field `instead_of`: is empty"),
        ] {
            let e = hv(extra).unwrap_err();
            assert!(e.contains(want) && e.contains("fix:") && e.contains("boards/hv.toml"), "{extra}: {e}");
        }
    }

    #[test]
    fn board_set_checks() {
        let direct = || named("direct", "cpu = \"qemu64,hv-crash\"\nrequires = [\"kvm-hyperv\"]");
        let nested =
            |extra: &str| named("nest", &format!("kind = \"nested-hyperv\"\ninstead_of = \"direct\"\n{extra}"));
        let mut ok = vec![direct(), nested("cpu = \"qemu64,hv-crash\"")];
        assert!(check_boards(&mut ok).is_empty());
        assert_eq!(ok[1].launch.instead_of_requires, [HostFeature::KvmHyperv]);

        let mut bad = vec![direct(), nested("")];
        let e = check(&mut bad);
        assert!(e.contains("boards/nest.toml: field `cpu`: is missing"), "{e}");

        let mut bad = vec![named("direct", ""), nested("cpu = \"x\"")];
        let e = check(&mut bad);
        assert!(e.contains("has no `requires`"), "{e}");

        let mut bad = vec![nested("cpu = \"x\"")];
        bad[0].accel = "tcg".into();
        bad[0].arch = Arch::S390x;
        bad[0].binary = "qemu-system-s390x".into();
        let e = check(&mut bad);
        for want in ["unknown board `direct`", "field `accel`", "field `arch`", "field `binary`"] {
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(e.contains("field `arch`: is \"s390x\"; a nested-hyperv board"), "{e}");
    }
}
