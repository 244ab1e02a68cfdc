//! `cargo xtask bench`: how long the agent takes from QEMU's spawn to the
//! asserted event, against a floor on the same board.
//!
//! A benchmark, not a timed test: it asserts nothing about the numbers. For
//! every board it boots the agent (A) and the floor (B) interleaved, A B A B …,
//! N times each, and reports median, min and max of both and the median of the
//! per-pair ratios A/B. Time is the asserted event's QMP timestamp (QEMU's own
//! wall clock, µs) minus the host's wall clock taken just before the spawn.
//!
//! The rows are the `[[bench]]` tables of `boards/*.toml` (see
//! `boards/pc.toml`): the board's own command line (its machine, firmware,
//! devices and script delivery, through [`QemuCmd`]) with the row's script
//! and arguments, and `-action panic=pause`. A new board gets a row by
//! adding a table to its file.
//!
//! The floor `rom` is a 64 KiB `-bios` ROM generated here
//! ([`crate::rom::floor`]: the reset vector writes "panicked" to the ISA
//! pvpanic port) in place of the agent and any firmware: QEMU start-up plus
//! three instructions, nothing can reach GUEST_PANICKED sooner on that
//! machine. The floor `image` (aarch64) is an arm64 `Image` generated here
//! ([`crate::arm64_image::floor`]: ten instructions that give pvpanic-pci at
//! a fixed slot a BAR through the ECAM, enable it and write "panicked"),
//! booted with `-kernel` in place of the agent's Image. The floor
//! `qmp-ready` (s390x) is QEMU start to QMP ready (the answer to
//! `qmp_capabilities`, sent once the machine is built and the main loop
//! runs) of the agent's own command line.
//!
//! Artifacts: `target/pvagent-bench/<stamp>-<pid>/` (`latest` points at the
//! newest) holds the ROMs and Images that were booted, `bench.json` and
//! `bench.txt`.

use std::fmt::Write as _;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSegment};
use serde::Serialize;
use serde_json::Value;

use crate::arch::Arch;
use crate::config::board::{BenchFloor, BenchRow};
use crate::config::{Board, Boot};
use crate::images::BootFile;
use crate::qemu::{QmpListener, Session, Start, describe_status, start_session};
use crate::qemu_cmd::{Delivery, QemuCmd};
use crate::qmp::{self, Message, Polled, QmpEvent};
use crate::util::{find_program, glob_match, shell_join, unix_micros};
use crate::{arm64_image, artifacts, rom};

/// Arguments of every boot: a guest panic stops the guest (the asserted
/// event is its GUEST_PANICKED), whatever the board's defaults.
const BENCH_ARGS: [&str; 2] = ["-action", "panic=pause"];
/// The asserted event on every board.
const EVENT: &str = "GUEST_PANICKED";

/// `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Rows: the [[bench]] tables of boards/*.toml (a board may have several, e.g. pc and \
    pc-qboot). Time: from just before the spawn (host wall clock) to the event's QMP timestamp.\n\nExamples:\n  cargo xtask bench\n  \
    cargo xtask bench --board pc-fast --board q35-fast --runs 50\n  cargo xtask bench --json > bench.json")]
pub struct BenchArgs {
    /// Boots per image and board; the agent and the floor alternate (A B A B …)
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Only these rows (repeatable; globs `*`, `?`) [default: all]
    #[arg(long = "board", value_name = "NAME")]
    pub boards: Vec<String>,
    /// Print the results as JSON on stdout (the table goes to stderr)
    #[arg(long)]
    pub json: bool,
    /// Discarded A B pairs per board before the measured ones
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warmup: u32,
    /// Use the images already in the target dir instead of building them
    #[arg(long)]
    pub no_build: bool,
    /// The x86_64 image to use (not built) [default: built, in the target dir]
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// The s390x image to use (not built) [default: built, in the target dir]
    #[arg(long, value_name = "PATH")]
    pub s390_image: Option<PathBuf>,
    /// The aarch64 image (its ELF, not built) [default: built, in the target dir]
    #[arg(long, value_name = "PATH")]
    pub aarch64_image: Option<PathBuf>,
    /// Limit of one boot
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::util::parse_timeout)]
    pub timeout: Duration,
}

/// One row: a `[[bench]]` table of a board.
struct Row<'a> {
    board: &'a Board,
    spec: &'a BenchRow,
}

impl Row<'_> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn image_kind(&self) -> &'static str {
        match BootFile::of(self.board.arch, self.board.boot) {
            BootFile::Elf => "ELF -kernel",
            BootFile::Rom => "ROM -bios",
            BootFile::Arm64Image => "Image -kernel",
            BootFile::Disk => "disk",
        }
    }

    fn floor_label(&self) -> &'static str {
        match self.spec.floor {
            BenchFloor::Rom => "-bios floor.rom",
            BenchFloor::Image => "floor.Image",
            BenchFloor::QmpReady => "QMP ready",
        }
    }
}

/// Sizes of an ELF image.
#[derive(Clone, Debug, Serialize)]
pub struct ElfSizes {
    pub path: PathBuf,
    /// Size of the file.
    pub file_bytes: u64,
    /// Sum of the PT_LOAD segments' p_filesz (what a loader copies).
    pub load_filesz_bytes: u64,
    /// Sum of the PT_LOAD segments' p_memsz (what the image occupies).
    pub load_memsz_bytes: u64,
    pub load_segments: usize,
}

impl ElfSizes {
    pub fn read(path: &Path) -> Result<ElfSizes> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file = object::File::parse(&*bytes).with_context(|| format!("parsing {} (ELF)", path.display()))?;
        let (mut filesz, mut memsz, mut n) = (0, 0, 0);
        // object's ELF segments are exactly the PT_LOAD program headers.
        for s in file.segments() {
            filesz += s.file_range().1;
            memsz += s.size();
            n += 1;
        }
        Ok(ElfSizes {
            path: path.to_path_buf(),
            file_bytes: bytes.len() as u64,
            load_filesz_bytes: filesz,
            load_memsz_bytes: memsz,
            load_segments: n,
        })
    }
}

/// Median, min and max of a sample, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// The median (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Stats { median_ms: round3(median(values)), min_ms: round3(min), max_ms: round3(max) }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// One boot, all times in ms from just before the spawn.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// The QMP greeting was read (host clock).
    pub greeting_ms: f64,
    /// The answer to `qmp_capabilities` was read (host clock): QEMU's main
    /// loop runs, the machine is built.
    pub ready_ms: f64,
    /// QMP timestamp of RESUME (the vCPUs start after our `cont`).
    pub resume_ms: Option<f64>,
    /// QMP timestamp of the asserted event.
    pub event_ms: Option<f64>,
    /// The agent's first line on the serial port (host clock): the
    /// firmware's hand-over (disk boards only, see [`crate::handover`]).
    pub handover_ms: Option<f64>,
}

impl Sample {
    /// The measured value of a boot of the agent.
    fn agent_ms(&self) -> f64 {
        self.event_ms.unwrap_or(f64::NAN)
    }

    /// The measured value of a boot of the floor.
    fn floor_ms(&self, floor: BenchFloor) -> f64 {
        match floor {
            BenchFloor::Rom | BenchFloor::Image => self.event_ms.unwrap_or(f64::NAN),
            BenchFloor::QmpReady => self.ready_ms,
        }
    }
}

/// QEMU as seen in a greeting.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QemuInfo {
    pub binary: String,
    pub version: String,
    pub package: String,
}

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub cpu_model: String,
    pub nproc: usize,
    pub kernel: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub qemu: Vec<QemuInfo>,
}

/// Result of one board.
#[derive(Clone, Debug, Serialize)]
pub struct BoardResult {
    pub board: String,
    pub description: String,
    pub agent_cmdline: String,
    pub floor_cmdline: String,
    /// `-bios floor.rom`, `floor.Image` or `QMP ready`.
    pub floor_kind: String,
    /// What the floor's time is: the event of floor.rom or floor.Image, or QMP ready.
    pub floor_measure: String,
    /// `ELF -kernel`, `ROM -bios` or `Image -kernel`.
    pub image_kind: String,
    /// The booted file: the ELF's or ROM's size; the arm64 Image's (its
    /// file-backed bytes).
    pub image_file_bytes: u64,
    /// x86 ROM: the ROM's size; ELF and arm64 Image: the ELF's sum of PT_LOAD p_memsz.
    pub image_loaded_bytes: u64,
    pub agent: Stats,
    pub floor: Stats,
    /// Median of the per-pair ratios agent/floor.
    pub ratio_median: f64,
    /// Medians of spawn → QMP ready (QEMU's own start-up).
    pub qmp_ready_median_ms: AgentFloor,
    /// Medians of RESUME → event: the guest's own time (firmware + image).
    pub guest_median_ms: AgentFloor,
    pub agent_ms: Vec<f64>,
    pub floor_ms: Vec<f64>,
    pub ratios: Vec<f64>,
    pub agent_samples: Vec<Sample>,
    pub floor_samples: Vec<Sample>,
    /// Disk boards: the agent's boots split at the firmware's hand-over.
    pub handover: Option<Handover>,
}

/// A disk board's boots of the agent split at the hand-over (the agent's
/// first line on the serial port).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Handover {
    /// RESUME → the agent's first line: the firmware.
    pub firmware: Stats,
    /// The agent's first line → the event: the agent's own time.
    pub agent: Stats,
}

impl Handover {
    fn of(samples: &[Sample]) -> Option<Handover> {
        let (mut fw, mut own) = (Vec::new(), Vec::new());
        for s in samples {
            if let (Some(r), Some(h), Some(e)) = (s.resume_ms, s.handover_ms, s.event_ms) {
                fw.push(h - r);
                own.push(e - h);
            }
        }
        (!fw.is_empty()).then(|| Handover { firmware: Stats::of(&fw), agent: Stats::of(&own) })
    }
}

/// A median of the agent's boots and one of the floor's (`None`: not measured).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AgentFloor {
    pub agent: Option<f64>,
    pub floor: Option<f64>,
}

impl AgentFloor {
    fn of(agent: &[Sample], floor: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> AgentFloor {
        let m = |v: &[Sample]| {
            let x: Vec<f64> = v.iter().filter_map(&f).filter(|x| x.is_finite()).collect();
            (!x.is_empty()).then(|| round3(median(&x)))
        };
        AgentFloor { agent: m(agent), floor: m(floor) }
    }
}

/// Sizes of what was booted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Images {
    pub x86_64_elf: Option<ElfSizes>,
    /// The agent as `-bios` ROM: its size and the image bytes it carries.
    pub x86_64_rom_bytes: Option<u64>,
    pub floor_rom_bytes: Option<u64>,
    pub s390x_elf: Option<ElfSizes>,
    pub aarch64_elf: Option<ElfSizes>,
    /// The agent as arm64 `Image` (`-kernel` on virt): its file-backed bytes.
    pub aarch64_image_bytes: Option<u64>,
    /// The x86_64 disk (`cargo xtask image`): its size, and its UEFI loader's.
    pub x86_64_disk_bytes: Option<u64>,
    pub x86_64_efi_bytes: Option<u64>,
    /// The aarch64 disk (`cargo xtask image --arch aarch64`): its size, and
    /// its UEFI loader's (BOOTAA64.EFI).
    pub aarch64_disk_bytes: Option<u64>,
    pub aarch64_efi_bytes: Option<u64>,
    pub floor_image_bytes: Option<u64>,
}

/// The whole report (`bench.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub measure: &'static str,
    pub runs: u32,
    pub warmup: u32,
    pub host: Host,
    pub images: Images,
    pub boards: Vec<BoardResult>,
    pub artifacts: PathBuf,
}

const MEASURE: &str = "ms from the host's wall clock just before spawning QEMU to the QMP timestamp of \
    GUEST_PANICKED (floor \"QMP ready\": to reading the answer to qmp_capabilities); agent and floor alternate";

/// Runs the benchmark on the `[[bench]]` rows of `boards`. Builds the images
/// it needs (x86_64, s390x and/or aarch64, release) with cargo unless
/// `--no-build` or an explicit image is given.
pub fn run(root: &Path, boards: &[Board], args: &BenchArgs) -> Result<()> {
    let rows = select(boards, &args.boards)?;
    let target = crate::util::target_dir(root);
    let want = |a: Arch| rows.iter().any(|r| r.board.arch == a);

    let x86_elf =
        if want(Arch::X86_64) { Some(image(root, Arch::X86_64, args.image.as_deref(), args.no_build)?) } else { None };
    let s390_elf = if want(Arch::S390x) {
        Some(image(root, Arch::S390x, args.s390_image.as_deref(), args.no_build)?)
    } else {
        None
    };
    let aarch64_elf = if want(Arch::Aarch64) {
        Some(image(root, Arch::Aarch64, args.aarch64_image.as_deref(), args.no_build)?)
    } else {
        None
    };

    // Everything that can fail on bad input before the artifact dir exists.
    let mut images = Images::default();
    let mut roms: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(elf) = &x86_elf {
        images.x86_64_elf = Some(ElfSizes::read(elf)?);
        if rows.iter().any(|r| r.board.boot == Boot::Firmware) {
            let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
            let rom = rom::build(&bytes)?;
            images.x86_64_rom_bytes = Some(rom.len() as u64);
            roms.push(("agent.rom", rom));
        }
        if rows.iter().any(|r| r.board.boot == Boot::Disk && r.board.arch == Arch::X86_64) {
            // The disk of `cargo xtask image` (its UEFI loader built around this ELF).
            let disk = crate::disk::make(root, elf, false)?;
            images.x86_64_disk_bytes = Some(disk.len() as u64);
            images.x86_64_efi_bytes = Some(crate::disk::layout::read_efi(&disk)?.len() as u64);
            roms.push(("agent.disk.raw", disk));
        }
    }
    if rows.iter().any(|r| r.spec.floor == BenchFloor::Rom) {
        let floor = rom::floor();
        images.floor_rom_bytes = Some(floor.len() as u64);
        roms.push(("floor.rom", floor));
    }
    if let Some(elf) = &s390_elf {
        images.s390x_elf = Some(ElfSizes::read(elf)?);
    }
    if let Some(elf) = &aarch64_elf {
        images.aarch64_elf = Some(ElfSizes::read(elf)?);
        let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
        let image =
            arm64_image::build(&bytes).with_context(|| format!("making an arm64 Image of {}", elf.display()))?;
        images.aarch64_image_bytes = Some(image.len() as u64);
        roms.push(("agent.Image", image));
        if rows.iter().any(|r| r.board.boot == Boot::Disk && r.board.arch == Arch::Aarch64) {
            // `cargo xtask image --arch aarch64` (BOOTAA64.EFI built around this ELF).
            let disk = crate::disk::make(root, elf, false)?;
            images.aarch64_disk_bytes = Some(disk.len() as u64);
            images.aarch64_efi_bytes = Some(crate::disk::layout::read_efi(&disk)?.len() as u64);
            roms.push(("agent-aarch64.disk.raw", disk));
        }
    }
    if rows.iter().any(|r| r.spec.floor == BenchFloor::Image) {
        let floor = arm64_image::floor();
        images.floor_image_bytes = Some(floor.len() as u64);
        roms.push(("floor.Image", floor));
    }
    let dir = artifacts::new_run_dir(&target.join("pvagent-bench"))?;
    let mut written = std::collections::BTreeMap::new();
    for (name, bytes) in &roms {
        written.insert(*name, write(&dir.join(name), bytes)?);
    }

    let mut out: Box<dyn std::io::Write> =
        if args.json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let loadavg_before = loadavg();
    let mut qemus: Vec<QemuInfo> = Vec::new();
    let mut results = Vec::new();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "pvagent bench: {} boots of the agent and {} of the floor per board, alternating (+{} warm-up pair{})",
        args.runs,
        args.runs,
        args.warmup,
        if args.warmup == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        text,
        "time: spawn → GUEST_PANICKED's QMP timestamp, ms (floor \"QMP ready\": spawn → qmp_capabilities answered)"
    );
    let _ = writeln!(text, "artifacts: {}\n", dir.display());
    let _ = writeln!(text, "{}", header());
    write!(out, "{text}")?;
    out.flush()?;

    let made = |name: &str| written.get(name).map(PathBuf::as_path);
    let paths = Paths {
        x86_elf: x86_elf.as_deref(),
        s390_elf: s390_elf.as_deref(),
        agent_rom: made("agent.rom"),
        floor_rom: made("floor.rom"),
        agent_image: made("agent.Image"),
        floor_image: made("floor.Image"),
        agent_disk: made("agent.disk.raw"),
        aarch64_disk: made("agent-aarch64.disk.raw"),
    };
    for r in &rows {
        let (agent, floor) = commands(r, &paths, &dir)?;
        let (agent_argv, floor_argv) = (agent.argv(), floor.argv());
        let want_floor_event = r.spec.floor != BenchFloor::QmpReady;
        // A disk board's agent boots are split at the firmware's hand-over.
        let serial = (r.board.boot == Boot::Disk).then(|| dir.join("serial.sock"));
        let mut agent_samples = Vec::new();
        let mut floor_samples = Vec::new();
        for i in 0..args.warmup.saturating_add(args.runs) {
            // Each boot its own copy of what the run writes (a disk board's
            // disk and UEFI variables: the firmware writes its boot entries).
            agent.write_files()?;
            let a = boot(&agent_argv, true, args.timeout, serial.as_deref(), &mut qemus)
                .with_context(|| format!("board {}: agent boot {}", r.name(), i + 1))?;
            let f = boot(&floor_argv, want_floor_event, args.timeout, None, &mut qemus)
                .with_context(|| format!("board {}: floor boot {}", r.name(), i + 1))?;
            if i >= args.warmup {
                agent_samples.push(a);
                floor_samples.push(f);
            }
        }
        let res = summarize(r, &images, &agent_argv, &floor_argv, agent_samples, floor_samples);
        let line = row(&res);
        writeln!(out, "{line}")?;
        out.flush()?;
        let _ = writeln!(text, "{line}");
        results.push(res);
    }

    let host = Host {
        cpu_model: cpu_model(),
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
        loadavg_before,
        loadavg_after: loadavg(),
        qemu: qemus,
    };
    let tail = footer(&results, &images, &host);
    write!(out, "{tail}")?;
    out.flush()?;
    text.push_str(&tail);

    let report = Report {
        schema: "pvagent-bench/1",
        measure: MEASURE,
        runs: args.runs,
        warmup: args.warmup,
        host,
        images,
        boards: results,
        artifacts: dir.clone(),
    };
    let json = serde_json::to_string_pretty(&report)?;
    write(&dir.join("bench.json"), format!("{json}\n").as_bytes())?;
    write(&dir.join("bench.txt"), text.as_bytes())?;
    if args.json {
        println!("{json}");
    }
    Ok(())
}

/// The `[[bench]]` rows of `boards` selected by `--board` patterns (all when
/// none), in board order. A row whose QEMU or firmware is missing is an
/// error when named, and skipped with a note otherwise.
fn select<'a>(boards: &'a [Board], patterns: &[String]) -> Result<Vec<Row<'a>>> {
    let all: Vec<Row<'a>> =
        boards.iter().flat_map(|board| board.bench.iter().map(move |spec| Row { board, spec })).collect();
    for p in patterns {
        if !all.iter().any(|r| glob_match(p, r.name())) {
            bail!(
                "no bench board matches `{p}` (boards: {})",
                all.iter().map(Row::name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut chosen = Vec::new();
    for r in all.into_iter().filter(|r| patterns.is_empty() || patterns.iter().any(|p| glob_match(p, r.name()))) {
        let firmware = r.spec.firmware.as_ref().or(r.board.firmware.as_ref());
        let missing = if find_program(&r.board.binary).is_none() {
            Some(format!("{} is not installed", r.board.binary))
        } else {
            firmware.filter(|f| !f.is_file()).map(|f| format!("{} does not exist", f.display()))
        };
        match missing {
            // Named explicitly: an error; part of "all": skipped.
            Some(why) if !patterns.is_empty() => bail!("board {}: {why}", r.name()),
            Some(why) => eprintln!("note: skipping board {}: {why}", r.name()),
            None => chosen.push(r),
        }
    }
    if chosen.is_empty() {
        bail!("no board left to benchmark");
    }
    Ok(chosen)
}

/// The image of `arch`: given, already built, or built now (the same build
/// as every other xtask command, `images::build`).
fn image(root: &Path, arch: Arch, given: Option<&Path>, no_build: bool) -> Result<PathBuf> {
    if let Some(p) = given {
        return crate::util::image_file(p.to_path_buf()).map_err(anyhow::Error::msg);
    }
    if no_build {
        let path = crate::images::image_path(root, arch);
        if !path.is_file() {
            bail!("{} does not exist (build it: cargo xtask build)", path.display());
        }
        return Ok(path);
    }
    let built = crate::images::build(root, &[arch].into_iter().collect())?;
    built.get(&arch).cloned().context("the build produced no image")
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// What the rows boot.
struct Paths<'a> {
    x86_elf: Option<&'a Path>,
    s390_elf: Option<&'a Path>,
    agent_rom: Option<&'a Path>,
    floor_rom: Option<&'a Path>,
    /// The aarch64 agent as arm64 Image.
    agent_image: Option<&'a Path>,
    floor_image: Option<&'a Path>,
    /// The x86_64 disk (`boot = "disk"` boards).
    agent_disk: Option<&'a Path>,
    /// The aarch64 disk (UEFI only).
    aarch64_disk: Option<&'a Path>,
}

fn need<'p>(p: Option<&'p Path>, what: &str) -> Result<&'p Path> {
    p.with_context(|| format!("no {what}"))
}

/// The agent's and the floor's command lines of a row, without the QMP
/// socket: the board's own, with the row's script and arguments. They differ
/// only in what boots (the floor `rom`: floor.rom as `-bios`, no other
/// firmware; the floor `image`: floor.Image as `-kernel`).
fn commands(r: &Row<'_>, paths: &Paths<'_>, dir: &Path) -> Result<(QemuCmd, QemuCmd)> {
    let image = match (r.board.arch, BootFile::of(r.board.arch, r.board.boot)) {
        (_, BootFile::Rom) => need(paths.agent_rom, "agent ROM")?,
        (_, BootFile::Arm64Image) => need(paths.agent_image, "aarch64 agent Image")?,
        (Arch::Aarch64, BootFile::Disk) => need(paths.aarch64_disk, "aarch64 agent disk")?,
        (_, BootFile::Disk) => need(paths.agent_disk, "x86_64 agent disk")?,
        (Arch::X86_64, BootFile::Elf) => need(paths.x86_elf, "x86_64 image")?,
        (Arch::S390x, BootFile::Elf) => need(paths.s390_elf, "s390x image")?,
        (Arch::Aarch64, BootFile::Elf) => bail!("aarch64 boards boot the arm64 Image"),
    };
    let mut agent = QemuCmd::new(r.board, image)
        .files_in(dir)
        .args(&r.spec.args)
        .args(&BENCH_ARGS)
        .script(Some(&r.spec.script), Delivery::of(r.board.script_via, dir));
    if let Some(f) = &r.spec.firmware {
        agent.firmware = Some(f.clone());
    }
    let floor = match r.spec.floor {
        BenchFloor::Rom => QemuCmd {
            firmware: None,
            boot: Boot::Firmware,
            image: need(paths.floor_rom, "floor ROM")?.to_path_buf(),
            ..agent.clone()
        },
        BenchFloor::Image => QemuCmd {
            firmware: None,
            boot: Boot::Kernel,
            image: need(paths.floor_image, "floor Image")?.to_path_buf(),
            ..agent.clone()
        },
        BenchFloor::QmpReady => agent.clone(),
    };
    Ok((agent, floor))
}

/// One boot: spawn, QMP handshake, `cont`, wait for [`EVENT`] (if
/// `want_event`), kill. Records the QEMU of the first greeting per binary.
/// `serial`: a socket path for the guest's serial port, watched for the
/// agent's first line ([`crate::handover`]).
fn boot(
    argv: &[String],
    want_event: bool,
    timeout: Duration,
    serial: Option<&Path>,
    qemus: &mut Vec<QemuInfo>,
) -> Result<Sample> {
    let listener = QmpListener::new()?;
    let mut full = argv.to_vec();
    full.extend(listener.chardev().qmp_args());
    let watch = serial.map(crate::handover::SerialWatch::listen).transpose()?;
    if let Some(w) = &watch {
        full.extend(w.chardev().serial_args("serial0"));
    }
    let errf = tempfile::tempfile().context("creating a temp file for QEMU's stderr")?;
    let mut err_read = errf.try_clone()?;
    let mut process = None;
    let mut events: Vec<QmpEvent> = Vec::new();
    let start = Start {
        argv: &full,
        listener: &listener,
        stderr: Stdio::from(errf),
        limit: timeout,
        transcript: None,
        stderr_file: None,
    };
    let result = start_session(start, &mut process, &mut |_, e| events.push(e)).and_then(|session| {
        let qemu = process.as_mut().expect("spawned");
        let t0 = unix_micros(qemu.spawned_at);
        let ms = |us: i128| (us - t0) as f64 / 1000.0;
        let Session { qmp: mut q, greeting, deadline, greeting_at, ready_at } = session;
        if !qemus.iter().any(|i| i.binary == argv[0]) {
            qemus.push(qemu_info(&argv[0], &greeting));
        }
        let (greeting_ms, ready_ms) = (ms(unix_micros(greeting_at)), ms(unix_micros(ready_at)));
        if !want_event {
            return Ok(Sample { greeting_ms, ready_ms, resume_ms: None, event_ms: None, handover_ms: None });
        }
        q.execute("cont", None, deadline, &mut |_, e| events.push(e))?;
        let stamp = |events: &[QmpEvent], name: &str| {
            events.iter().find(|e| e.event == name).map(|e| e.timestamp_us.map(ms).unwrap_or(f64::NAN))
        };
        loop {
            if let Some(event_ms) = stamp(&events, EVENT) {
                return Ok(Sample {
                    greeting_ms,
                    ready_ms,
                    resume_ms: stamp(&events, "RESUME"),
                    event_ms: Some(event_ms),
                    handover_ms: None,
                });
            }
            match q.poll(deadline)? {
                Polled::Msg(Message::Event(e)) => events.push(e),
                Polled::Msg(_) => {}
                Polled::Timeout => bail!("no {EVENT} within {timeout:?} (events: {})", names(&events)),
                Polled::Eof => {
                    let st = qemu.wait_until(Instant::now() + Duration::from_secs(2))?;
                    bail!(
                        "QEMU closed QMP ({}) before {EVENT} (events: {})",
                        st.map_or_else(|| "still running".into(), describe_status),
                        names(&events)
                    )
                }
            }
        }
    });
    let spawn_us = process.as_ref().map(|p| unix_micros(p.spawned_at));
    if let Some(mut qemu) = process {
        let _ = qemu.kill();
    }
    let seen = watch.map(crate::handover::SerialWatch::finish);
    let handover_ms = match (&seen, spawn_us) {
        (Some(seen), Some(t0)) => seen.first_agent_line_us.map(|t| (t - t0) as f64 / 1000.0),
        _ => None,
    };
    result.map(|sample| Sample { handover_ms, ..sample }).map_err(|e| {
        let mut s = String::new();
        let _ = err_read.rewind();
        let _ = err_read.read_to_string(&mut s);
        let e = e.context(format!("$ {}", shell_join(argv)));
        let e = match seen.filter(|s| !s.bytes.is_empty()) {
            Some(seen) => {
                let text = String::from_utf8_lossy(&seen.bytes);
                let tail: String = text.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
                e.context(format!("the serial port's last output: {}", tail.trim()))
            }
            None => e,
        };
        if s.trim().is_empty() { e } else { e.context(format!("QEMU's stderr: {}", s.trim())) }
    })
}

fn names(events: &[QmpEvent]) -> String {
    if events.is_empty() { "none".into() } else { events.iter().map(QmpEvent::short).collect::<Vec<_>>().join(", ") }
}

fn qemu_info(binary: &str, greeting: &Value) -> QemuInfo {
    let version = qmp::greeting_version(greeting).map(|v| v.to_string()).unwrap_or_default();
    let package = greeting["QMP"]["version"]["package"].as_str().unwrap_or_default().trim().to_string();
    QemuInfo { binary: binary.to_string(), version, package }
}

fn summarize(
    r: &Row<'_>,
    images: &Images,
    agent_argv: &[String],
    floor_argv: &[String],
    agent_samples: Vec<Sample>,
    floor_samples: Vec<Sample>,
) -> BoardResult {
    let agent_ms: Vec<f64> = agent_samples.iter().map(Sample::agent_ms).collect();
    let floor_ms: Vec<f64> = floor_samples.iter().map(|s| s.floor_ms(r.spec.floor)).collect();
    let ratios: Vec<f64> = agent_ms.iter().zip(&floor_ms).map(|(a, f)| round4(a / f)).collect();
    let (file, loaded) = match (r.board.arch, r.board.boot) {
        (_, Boot::Firmware) => (images.x86_64_rom_bytes.unwrap_or(0), images.x86_64_rom_bytes.unwrap_or(0)),
        (Arch::Aarch64, Boot::Disk) => {
            (images.aarch64_disk_bytes.unwrap_or(0), images.aarch64_elf.as_ref().map_or(0, |e| e.load_memsz_bytes))
        }
        (_, Boot::Disk) => {
            (images.x86_64_disk_bytes.unwrap_or(0), images.x86_64_elf.as_ref().map_or(0, |e| e.load_memsz_bytes))
        }
        (Arch::X86_64, _) => images.x86_64_elf.as_ref().map_or((0, 0), |e| (e.file_bytes, e.load_memsz_bytes)),
        (Arch::S390x, _) => images.s390x_elf.as_ref().map_or((0, 0), |e| (e.file_bytes, e.load_memsz_bytes)),
        (Arch::Aarch64, _) => {
            (images.aarch64_image_bytes.unwrap_or(0), images.aarch64_elf.as_ref().map_or(0, |e| e.load_memsz_bytes))
        }
    };
    BoardResult {
        board: r.name().to_string(),
        description: r.spec.description.clone(),
        agent_cmdline: shell_join(agent_argv),
        floor_cmdline: shell_join(floor_argv),
        floor_kind: r.floor_label().to_string(),
        floor_measure: match r.spec.floor {
            BenchFloor::Rom => format!("{EVENT} of floor.rom"),
            BenchFloor::Image => format!("{EVENT} of floor.Image"),
            BenchFloor::QmpReady => "QMP ready (qmp_capabilities answered)".into(),
        },
        image_kind: r.image_kind().to_string(),
        image_file_bytes: file,
        image_loaded_bytes: loaded,
        agent: Stats::of(&agent_ms),
        floor: Stats::of(&floor_ms),
        ratio_median: round4(median(&ratios)),
        qmp_ready_median_ms: AgentFloor::of(&agent_samples, &floor_samples, |s| Some(s.ready_ms)),
        guest_median_ms: AgentFloor::of(&agent_samples, &floor_samples, |s| Some(s.event_ms? - s.resume_ms?)),
        agent_ms,
        floor_ms,
        ratios,
        handover: Handover::of(&agent_samples),
        agent_samples,
        floor_samples,
    }
}

fn header() -> String {
    format!(
        "{:<16} {:^22}  {:^22}  {:>6}  {:<15}  {:<11} {:>7} {:>7}\n{:<16} {:>7}{:>8}{:>7}  {:>7}{:>8}{:>7}  {:>6}  {:<15}  {:<11} {:>7} {:>7}",
        "",
        "agent (ms)",
        "floor (ms)",
        "",
        "",
        "image",
        "file",
        "loaded",
        "board",
        "median",
        "min",
        "max",
        "median",
        "min",
        "max",
        "ratio",
        "floor",
        "",
        "B",
        "B",
    )
}

fn row(r: &BoardResult) -> String {
    format!(
        "{:<16} {:>7.1}{:>8.1}{:>7.1}  {:>7.1}{:>8.1}{:>7.1}  {:>6.2}  {:<15}  {:<11} {:>7} {:>7}",
        r.board,
        r.agent.median_ms,
        r.agent.min_ms,
        r.agent.max_ms,
        r.floor.median_ms,
        r.floor.min_ms,
        r.floor.max_ms,
        r.ratio_median,
        r.floor_kind,
        r.image_kind,
        r.image_file_bytes,
        r.image_loaded_bytes
    )
}

fn footer(results: &[BoardResult], images: &Images, host: &Host) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nratio = median of the per-pair ratios agent/floor; file = the booted file (an arm64 Image: the ELF's \
         file-backed bytes); loaded = PT_LOAD memsz (ELF, Image) or ROM size"
    );
    let _ = writeln!(s, "\nwhere the time goes (medians, ms, agent / floor):");
    let _ = writeln!(s, "  QMP ready = spawn → qmp_capabilities answered; guest = RESUME → {EVENT} (firmware + image)");
    let opt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.1}"));
    for r in results {
        let (q, g) = (r.qmp_ready_median_ms, r.guest_median_ms);
        let _ = writeln!(
            s,
            "  {:<16} QMP ready {:>6} / {:>6}   guest {:>6} / {:>6}",
            r.board,
            opt(q.agent),
            opt(q.floor),
            opt(g.agent),
            opt(g.floor)
        );
    }
    let split: Vec<&BoardResult> = results.iter().filter(|r| r.handover.is_some()).collect();
    if !split.is_empty() {
        let _ = writeln!(
            s,
            "\ndisk boards, the agent's boots split at the hand-over (the agent's first `pvagent:` line on the \
             serial port, read as it arrives), ms median (min–max):"
        );
        let _ = writeln!(s, "  firmware = RESUME → hand-over; agent = hand-over → {EVENT}");
        for r in split {
            let h = r.handover.expect("filtered");
            let _ = writeln!(
                s,
                "  {:<16} firmware {:>8.1} ({:.1}–{:.1})   agent {:>6.2} ({:.2}–{:.2})",
                r.board,
                h.firmware.median_ms,
                h.firmware.min_ms,
                h.firmware.max_ms,
                h.agent.median_ms,
                h.agent.min_ms,
                h.agent.max_ms
            );
        }
    }
    let _ = writeln!(s, "\nimages");
    if let Some(e) = &images.x86_64_elf {
        let _ = writeln!(s, "  x86_64 ELF  {}", elf_line(e));
    }
    if let Some(n) = images.x86_64_rom_bytes {
        let carried = images.x86_64_elf.as_ref().map_or(0, |e| e.load_filesz_bytes);
        let _ = writeln!(s, "  agent ROM   {n} B (-bios; carries the image's {carried} file-backed bytes)");
    }
    if let (Some(n), Some(efi)) = (images.x86_64_disk_bytes, images.x86_64_efi_bytes) {
        let _ = writeln!(
            s,
            "  agent disk  {n} B (GPT: the ROM in the BIOS boot partition, a {efi} B BOOTX64.EFI on the ESP)"
        );
    }
    if let Some(n) = images.floor_rom_bytes {
        let _ = writeln!(s, "  floor ROM   {n} B (-bios; 9 bytes of code at the reset vector)");
    }
    if let Some(e) = &images.s390x_elf {
        let _ = writeln!(s, "  s390x ELF   {}", elf_line(e));
    }
    if let Some(e) = &images.aarch64_elf {
        let _ = writeln!(s, "  aarch64 ELF {}", elf_line(e));
    }
    if let Some(n) = images.aarch64_image_bytes {
        let _ = writeln!(s, "  agent Image {n} B (-kernel; the aarch64 ELF's file-backed bytes from __image_start)");
    }
    if let (Some(n), Some(efi)) = (images.aarch64_disk_bytes, images.aarch64_efi_bytes) {
        let _ = writeln!(s, "  aarch64 disk {n} B (GPT: a {efi} B BOOTAA64.EFI on the ESP, UEFI only)");
    }
    if let Some(n) = images.floor_image_bytes {
        let _ = writeln!(s, "  floor Image {n} B (-kernel; the 64-byte header and 10 instructions)");
    }
    let _ = writeln!(s, "\nhost");
    let _ = writeln!(s, "  cpu     {} ({} CPUs), Linux {}", host.cpu_model, host.nproc, host.kernel);
    let _ = writeln!(s, "  load    {} (before)  {} (after)", host.loadavg_before, host.loadavg_after);
    for q in &host.qemu {
        let _ = writeln!(s, "  qemu    {} {} ({})", q.binary, q.version, q.package);
    }
    s
}

fn elf_line(e: &ElfSizes) -> String {
    format!(
        "{} B file, PT_LOAD {} B filesz / {} B memsz ({} segments): {}",
        e.file_bytes,
        e.load_filesz_bytes,
        e.load_memsz_bytes,
        e.load_segments,
        e.path.display()
    )
}

fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    // x86: "model name"; elsewhere (s390x: "IBM/S390") the vendor at least.
    field("model name").or_else(|| field("vendor_id")).unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let s = Stats::of(&[10.0, 30.0, 20.0]);
        assert_eq!(s, Stats { median_ms: 20.0, min_ms: 10.0, max_ms: 30.0 });
    }

    /// The workspace's boards: the bench rows come from their files.
    fn boards() -> Vec<Board> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        crate::config::load_boards(&root.join("boards"), root).unwrap()
    }

    #[test]
    fn board_selection() {
        let boards = boards();
        assert!(select(&boards, &["nope".into()]).is_err());
        // Patterns are validated before any installation check.
        let err = select(&boards, &["pc-fast".into(), "zzz*".into()]).err().unwrap().to_string();
        assert!(err.contains("zzz*"), "{err}");
        // Every board file's rows, in board order; a board may have several.
        let rows: Vec<(&str, &str)> =
            boards.iter().flat_map(|b| b.bench.iter().map(move |r| (b.name.as_str(), r.name.as_str()))).collect();
        for want in [
            ("pc", "pc"),
            ("pc", "pc-qboot"),
            ("pc-fast", "pc-fast"),
            ("q35-fast", "q35-fast"),
            ("microvm", "microvm"),
            ("s390-ccw-virtio", "s390-ccw-virtio"),
            ("virt", "virt"),
        ] {
            assert!(rows.contains(&want), "{want:?} in {rows:?}");
        }
    }

    #[test]
    fn agent_and_floor_differ_only_in_the_image() {
        let elf = Path::new("/img/pvagent");
        let rom = Path::new("/a/agent.rom");
        let floor = Path::new("/a/floor.rom");
        let paths = Paths {
            x86_elf: Some(elf),
            s390_elf: Some(elf),
            agent_rom: Some(rom),
            floor_rom: Some(floor),
            agent_image: Some(Path::new("/a/agent.Image")),
            floor_image: Some(Path::new("/a/floor.Image")),
            agent_disk: Some(Path::new("/a/agent.disk.raw")),
            aarch64_disk: Some(Path::new("/a/agent-aarch64.disk.raw")),
        };
        let boards = boards();
        let rows: Vec<Row<'_>> =
            boards.iter().flat_map(|board| board.bench.iter().map(move |spec| Row { board, spec })).collect();
        for r in &rows {
            let (a, f) = commands(r, &paths, Path::new("/a")).unwrap();
            let (a, f) = (a.argv(), f.argv());
            assert_eq!(a[0], r.board.binary);
            assert!(a.windows(2).any(|w| w == ["-action", "panic=pause"]), "{a:?}");
            if r.spec.floor != BenchFloor::QmpReady {
                if r.spec.floor == BenchFloor::Rom {
                    assert!(f.windows(2).any(|w| w == ["-bios", "/a/floor.rom"]), "{f:?}");
                    assert!(!f.iter().any(|x| x == "-kernel"), "{f:?}");
                } else {
                    assert!(f.windows(2).any(|w| w == ["-kernel", "/a/floor.Image"]), "{f:?}");
                    assert!(!f.iter().any(|x| x == "-bios"), "{f:?}");
                }
                // What boots: -bios/-kernel, or a disk board's disk and its UEFI pflash.
                let boots = |opt: &str, val: &str| {
                    ["-bios", "-kernel"].contains(&opt)
                        || (opt == "-drive" && (val.starts_with("if=pflash") || val.contains("id=disk0")))
                        || (opt == "-device" && val.contains("drive=disk0"))
                        || (opt == "-global" && val.starts_with("driver=cfi.pflash01"))
                };
                let strip = |v: &[String]| -> Vec<String> {
                    let mut out = Vec::new();
                    let mut i = 0;
                    while i < v.len() {
                        if boots(&v[i], v.get(i + 1).map_or("", String::as_str)) {
                            i += 2;
                        } else {
                            out.push(v[i].clone());
                            i += 1;
                        }
                    }
                    out
                };
                assert_eq!(strip(&a), strip(&f), "board {}", r.name());
            } else {
                assert_eq!(a, f);
            }
        }
        let pc_fast = rows.iter().find(|r| r.name() == "pc-fast").unwrap();
        let a = commands(pc_fast, &paths, Path::new("/a")).unwrap().0.argv();
        assert!(a.windows(2).any(|w| w == ["-bios", "/a/agent.rom"]), "{a:?}");
        assert!(a.iter().any(|x| x == "name=opt/pvagent/script,string=pvpanic.panicked"), "{a:?}");
        let qboot = rows.iter().find(|r| r.name() == "pc-qboot").unwrap();
        let a = commands(qboot, &paths, Path::new("/a")).unwrap().0.argv();
        let bios = a.iter().position(|x| x == "-bios").unwrap();
        assert_eq!(a[bios + 1], "/usr/share/qemu/qboot.rom");
        assert!(bios < a.iter().position(|x| x == "-kernel").unwrap());
        let s390 = rows.iter().find(|r| r.name() == "s390-ccw-virtio").unwrap();
        let a = commands(s390, &paths, Path::new("/a")).unwrap().0.argv();
        assert_eq!(&a[a.len() - 4..], ["-kernel", "/img/pvagent", "-append", "s390.disabled-wait:0x12340"]);
        // virt: the agent's Image with -kernel, pvpanic-pci at the slot the floor programs.
        let virt = rows.iter().find(|r| r.name() == "virt").unwrap();
        let (a, f) = commands(virt, &paths, Path::new("/a")).unwrap();
        let (a, f) = (a.argv(), f.argv());
        assert_eq!(a[0], "qemu-system-aarch64");
        assert!(a.windows(2).any(|w| w == ["-kernel", "/a/agent.Image"]), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["-device", "pvpanic-pci,addr=0x2"]), "{a:?}");
        assert!(a.iter().any(|x| x == "name=opt/pvagent/script,string=pvpanic-pci.panicked"), "{a:?}");
        assert!(f.windows(2).any(|w| w == ["-device", "pvpanic-pci,addr=0x2"]), "{f:?}");
        assert_eq!(crate::arm64_image::FLOOR_PCI_SLOT, 2, "the slot of the virt row's addr=0x2");
        // virt-uefi: AAVMF boots the aarch64 disk; the floor is the same floor.Image with -kernel, no firmware.
        let uefi = rows.iter().find(|r| r.name() == "virt-uefi").unwrap();
        assert_eq!(commands(uefi, &paths, Path::new("/a")).unwrap().0.image, Path::new("/a/agent-aarch64.disk.raw"));
        let (a, f) = commands(uefi, &paths, Path::new("/a")).unwrap();
        let (a, f) = (a.argv(), f.argv());
        assert!(
            a.iter().any(|x| x.starts_with("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/")),
            "{a:?}"
        );
        assert!(a.windows(2).any(|w| w == ["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["-device", "pvpanic-pci,addr=0x2"]), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["-machine", "virt,acpi=off"]), "{a:?}");
        assert!(!f.iter().any(|x| x.contains("pflash") || x.contains("disk0")), "{f:?}");
        assert!(f.windows(2).any(|w| w == ["-kernel", "/a/floor.Image"]), "{f:?}");
    }

    #[test]
    fn elf_sizes_of_a_real_elf() {
        // The test binary itself is an ELF with PT_LOAD segments.
        let exe = std::env::current_exe().unwrap();
        let e = ElfSizes::read(&exe).unwrap();
        assert!(e.load_segments >= 1);
        assert!(e.load_filesz_bytes > 0 && e.load_memsz_bytes >= e.load_filesz_bytes);
        assert_eq!(e.file_bytes, std::fs::metadata(&exe).unwrap().len());
    }
}
