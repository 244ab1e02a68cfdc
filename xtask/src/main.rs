//! `cargo xtask …`: thin CLI over the `xtask` library.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use xtask::clock::{CLOCK_ENV, Clock};
use xtask::config::{Board, ScriptVia};
use xtask::runner::{self, RunEnv, RunSpec};
use xtask::schedule;
use xtask::{Project, agent, artifacts, images, report, setup, util};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build the pvagent image, boot it under QEMU and check the QMP events it causes",
    long_about = "Build the pvagent image, boot it under QEMU and check the QMP events it causes.\n\n\
        Boards live in boards/*.toml, scenarios in scenarios.toml (both validated strictly before \
        anything runs). Artifacts of every run go to target/pvagent-runs/<run-id>/ \
        (target/pvagent-runs/latest points at the newest; the 10 newest are kept, and every run still going on)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark: spawn → GUEST_PANICKED of the agent against a floor image, per board
    Bench(xtask::bench::BenchArgs),
    /// Build the agent images (cargo build --release -p pvagent --target <each board architecture's target>),
    /// the x86_64 -bios ROM and the aarch64 -kernel Image
    Build,
    /// Run the scenario table under QEMU (or boot once ad hoc with --script/--device/--qemu-arg)
    #[command(
        after_help = "Examples:\n  cargo xtask qemu-run\n  cargo xtask qemu-run --board q35 --scenario 'panicked-*'\n  \
            cargo xtask qemu-run --scenario '*/pvpanic-pci' --junit target/junit.xml\n  \
            cargo xtask qemu-run --board q35 --script 'pvpanic.crashloaded' --device pvpanic-pci --timeout 5s"
    )]
    QemuRun(QemuRunArgs),
    /// Decode a serial capture of the agent (raw defmt frames) into text
    Decode {
        /// The captured COM1 output (e.g. from `-serial file:x.bin`)
        serial: PathBuf,
        /// The image that produced it [default: the release image in the target dir: for a log of `D:`
        /// text lines s390x's, else the x86_64 or aarch64 one whose build id the log names (x86_64
        /// when neither does)]
        #[arg(long)]
        elf: Option<PathBuf>,
        /// Decode even a log that another build wrote (its build id differs from the image's): the
        /// text may be wrong
        #[arg(long)]
        any_build: bool,
    },
    /// Fuzz the parsers of untrusted input (cargo-fuzz on the nightly pinned in fuzz/; installs both
    /// when missing): script, fw_cfg, decode, qmp
    #[command(after_help = "Examples:\n  cargo xtask fuzz --time 60s\n  cargo xtask fuzz script --time 10m")]
    Fuzz(xtask::fuzz::FuzzArgs),
    /// Write the agent as a bootable disk (x86_64: UEFI and legacy BIOS; --arch aarch64: UEFI), optionally
    /// with a baked-in script (x86_64), as raw or qcow2, and optionally a KubeVirt containerDisk (OCI image
    /// archive)
    Image(xtask::disk::ImageArgs),
    /// Set up prerequisites, build the images, then `cargo test --workspace` (incl. the e2e harness)
    Test {
        /// Run every scenario in this clock (sets PVAGENT_CLOCK for the e2e harness) [default: each
        /// row's, else its board's]
        #[arg(long, value_enum)]
        clock: Option<ClockArg>,
        /// Arguments passed to the test binaries (after `--`), e.g. `-- q35::`
        #[arg(last = true)]
        libtest_args: Vec<String>,
    },
    /// Write a libvirt domain XML that boots the agent (the generator of the libvirt boards' rows)
    #[command(
        after_help = "Examples:\n  cargo xtask libvirt-xml --script 'pvpanic.panicked' --device pvpanic-pci --on-crash preserve > \
            pvagent.xml\n  virsh create pvagent.xml\n  cargo xtask libvirt-xml --board libvirt-pc --device ib700 \
            --watchdog-action shutdown --script 'ib700.arm:2s; sleep:10s'"
    )]
    LibvirtXml(LibvirtXmlArgs),
    /// Only set up prerequisites (Rust targets, QEMU ≥ 9.1, libvirt for the libvirt boards)
    Setup {
        /// Only the QEMU of these boards [default: all]
        #[arg(long = "board", value_name = "BOARD")]
        boards: Vec<String>,
    },
}

#[derive(clap::Args)]
struct QemuRunArgs {
    /// Only these boards (repeatable) [default: all]; ad hoc: the board to boot [default: pc]
    #[arg(long = "board", value_name = "BOARD")]
    boards: Vec<String>,
    /// Only scenarios whose id (`name/variant`), name or `board::id` matches this glob (repeatable; `*`, `?`)
    #[arg(long = "scenario", value_name = "GLOB")]
    scenarios: Vec<String>,
    /// Print the results as JSON on stdout (the table goes to stderr)
    #[arg(long)]
    json: bool,
    /// Also write a JUnit XML report to FILE
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Scenario table to use [default: scenarios.toml at the workspace root]
    #[arg(long = "scenarios", value_name = "FILE")]
    scenarios_file: Option<PathBuf>,
    /// Use this image instead of building one (repeatable, one per architecture, recognised by its
    /// ELF header; PVAGENT_IMAGE takes a `:`-separated list); the others are built
    #[arg(long = "image", value_name = "PATH", env = "PVAGENT_IMAGE", value_delimiter = ':',
          value_parser = clap::builder::TypedValueParser::try_map(clap::builder::PathBufValueParser::new(), util::image_file))]
    images: Vec<PathBuf>,
    /// Run up to N scenarios at once, each its own QEMU [default: 16 per CPU, at most 32]. A new
    /// one starts only while half a CPU is idle (PVAGENT_CPU_GATE=<cpus>|off changes that); the
    /// table keeps its order either way
    #[arg(long, short = 'j', value_name = "N", env = "PVAGENT_JOBS", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Run every scenario in this clock [default: each row's `clock`, else its board's]: `virtual`
    /// adds -icount shift=0,sleep=off (TCG boards; KVM boards stay real). QMP `timing` entries
    /// are then reported as not judged (QMP timestamps are host time); `guest_timing` is judged
    #[arg(long, value_enum, env = "PVAGENT_CLOCK")]
    clock: Option<ClockArg>,
    /// Ad hoc: boot once with this script (prints events live)
    #[arg(long, conflicts_with_all = ["scenarios", "json", "junit", "scenarios_file"])]
    script: Option<String>,
    /// Ad hoc: how the script is delivered [default: the board's, fw-cfg on x86_64 and aarch64, append on
    /// s390x]
    #[arg(long, value_enum, requires = "script")]
    script_via: Option<Via>,
    /// Ad hoc: add `-device X` (repeatable)
    #[arg(long = "device", value_name = "X", conflicts_with_all = ["scenarios", "json", "junit", "scenarios_file"])]
    devices: Vec<String>,
    /// Ad hoc: add one raw QEMU argument (repeatable; use --qemu-arg=-foo for leading dashes)
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true,
          conflicts_with_all = ["scenarios", "json", "junit", "scenarios_file"])]
    qemu_args: Vec<String>,
    /// Ad hoc: stop after this long (then quit/kill QEMU)
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    timeout: std::time::Duration,
}

#[derive(clap::Args)]
struct LibvirtXmlArgs {
    /// A libvirt board (boards/libvirt-*.toml): machine, memory, how the agent boots
    #[arg(long, default_value = "libvirt-q35")]
    board: String,
    /// The agent's script (fw_cfg on x86_64, <cmdline> on s390x)
    #[arg(long)]
    script: Option<String>,
    /// How the script is delivered [default: the board's]
    #[arg(long, value_enum, requires = "script")]
    script_via: Option<Via>,
    /// Add a device (repeatable): pvpanic, pvpanic-pci, i6300esb, ib700 (i440FX only), diag288 (s390x)
    #[arg(long = "device", value_name = "DEVICE")]
    devices: Vec<String>,
    /// The watchdogs' action: reset, shutdown, poweroff, pause, none, dump, inject-nmi [default: libvirt's, reset]
    #[arg(long)]
    watchdog_action: Option<String>,
    /// <on_crash>: destroy, restart, preserve, rename-restart, coredump-destroy, coredump-restart
    #[arg(long)]
    on_crash: Option<String>,
    /// <on_poweroff>: destroy, restart, preserve, rename-restart
    #[arg(long)]
    on_poweroff: Option<String>,
    /// <on_reboot>: destroy, restart, preserve, rename-restart
    #[arg(long)]
    on_reboot: Option<String>,
    /// The domain's name
    #[arg(long, default_value = "pvagent")]
    name: String,
    /// Where the console's log goes (made absolute) [default: ./<name>-console.log]
    #[arg(long, value_name = "PATH")]
    console_log: Option<PathBuf>,
    /// The agent's ELF (x86_64 or s390x; a ROM is made from it for a firmware board) [default: built]
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Write the XML to FILE instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ClockArg {
    Real,
    Virtual,
}

impl From<ClockArg> for Clock {
    fn from(c: ClockArg) -> Clock {
        match c {
            ClockArg::Real => Clock::Real,
            ClockArg::Virtual => Clock::Virtual,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Via {
    FwCfg,
    Append,
    /// An SMBIOS OEM string (-smbios type=11,value=pvagent:script=…)
    Smbios,
    /// Baked into the run's copy of the disk (boot = "disk" boards)
    Image,
}

fn parse_dur(s: &str) -> Result<std::time::Duration, String> {
    util::parse_timeout(s)
}

fn main() -> ExitCode {
    xtask::qemu::install_signal_handlers();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The libvirt daemons this process started, if any.
    xtask::libvirt::daemons::stop();
    code
}

fn run(cli: Cli) -> Result<ExitCode> {
    let root = agent::workspace_root();
    match cli.cmd {
        Cmd::Fuzz(args) => {
            let clean = xtask::fuzz::run(&root, &args)?;
            Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Bench(args) => {
            let project = Project::load(&root, None)?;
            xtask::bench::run(&root, &project.boards, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Build => {
            let boards = xtask::config::load_boards(&root.join("boards"), &root).map_err(anyhow::Error::msg)?;
            for (arch, img) in images::build(&root, &images::arches(&boards)?)? {
                let size = std::fs::metadata(&img)?.len();
                println!("{} ({arch}, {size} bytes)", img.display());
                if arch == images::Arch::X86_64 {
                    // The same agent as firmware, for `-bios` (boards with boot = "firmware").
                    let rom = img.with_extension("rom");
                    images::write_rom(&img, &rom)?;
                    println!("{} ({arch} -bios ROM, {} bytes)", rom.display(), xtask::rom::ROM_SIZE);
                }
                if let Some((_, name)) = xtask::disk::efi::uefi(arch) {
                    // The UEFI loader that embeds it (what the disk's ESP holds).
                    let efi = xtask::disk::efi::build(&root, arch, &img, false)?;
                    let path = xtask::disk::efi::efi_path(&root, arch)?;
                    println!("{} ({arch} UEFI loader \\EFI\\BOOT\\{name}, {} bytes)", path.display(), efi.len());
                }
                if arch == images::Arch::Aarch64 {
                    // What -kernel boots on -M virt: the flat arm64 Image.
                    let image = img.with_extension("Image");
                    images::write_arm64_image(&img, &image)?;
                    let size = std::fs::metadata(&image)?.len();
                    println!("{} ({arch} -kernel Image, {size} bytes)", image.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LibvirtXml(args) => libvirt_xml(&root, args),
        Cmd::Image(args) => {
            for line in xtask::disk::run(&root, &args)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Decode { serial, elf, any_build } => {
            let elf = elf.unwrap_or_else(|| images::decoding_image(&root, &serial));
            let lines = xtask::defmt_log::decode_command(&serial, &elf, any_build)?;
            let mut out = std::io::stdout().lock();
            for l in lines {
                writeln!(out, "{l}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Setup { boards } => {
            let project = Project::load(&root, None)?;
            let sel = select_boards(&project, &boards)?;
            for (bin, v) in setup::setup(&root, &sel)? {
                println!("ok: {bin} {v}");
            }
            for target in setup::rust_targets(&sel) {
                println!("ok: Rust target {target}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test { clock, libtest_args } => {
            let project = Project::load(&root, None)?;
            let sel = select_boards(&project, &[])?;
            setup::setup(&root, &sel)?;
            let built = images::build(&root, &images::arches(sel.iter().copied())?)?;
            build_disk_loader(&root, &sel, &built)?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["test", "--workspace"]).current_dir(&root);
            cmd.env(images::IMAGE_ENV, std::env::join_paths(built.values()).context("joining image paths")?);
            if let Some(c) = clock {
                cmd.env(CLOCK_ENV, Clock::from(c).as_str());
            }
            if !libtest_args.is_empty() {
                cmd.arg("--").args(&libtest_args);
            }
            eprintln!(
                "$ cargo test --workspace{}",
                if libtest_args.is_empty() {
                    String::new()
                } else {
                    format!(" -- {}", util::shell_join(&libtest_args))
                }
            );
            let st = xtask::qemu::status_forwarding_signals(&mut cmd).context("running cargo test")?;
            Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8))
        }
        Cmd::QemuRun(args) => {
            if args.script.is_some() || !args.devices.is_empty() || !args.qemu_args.is_empty() {
                adhoc(&root, args)
            } else {
                table_run(&root, args)
            }
        }
    }
}

/// Builds the UEFI loader around the image of each architecture a used disk
/// board boots (the runs then find it up to date), so that its build shows
/// here.
fn build_disk_loader(root: &std::path::Path, boards: &[&Board], imgs: &BTreeMap<images::Arch, PathBuf>) -> Result<()> {
    for (arch, elf) in imgs {
        if boards.iter().any(|b| b.boot == xtask::config::Boot::Disk && b.arch == *arch) {
            xtask::disk::efi::build(root, *arch, elf, false)?;
        }
    }
    Ok(())
}

fn select_boards<'a>(project: &'a Project, names: &[String]) -> Result<Vec<&'a Board>> {
    if names.is_empty() {
        return Ok(project.boards.iter().collect());
    }
    names.iter().map(|n| project.board(n)).collect()
}

fn table_run(root: &std::path::Path, args: QemuRunArgs) -> Result<ExitCode> {
    let project = Project::load(root, args.scenarios_file.as_deref())?;
    let forced = args.clock.map(Clock::from);
    let cases = xtask::cases::expand_cases(&project.boards, &project.table, &args.boards, &args.scenarios, forced)
        .map_err(anyhow::Error::msg)?;
    if cases.is_empty() {
        bail!("no scenario matches the given --board/--scenario filters");
    }
    let mut used: Vec<&Board> = Vec::new();
    for c in &cases {
        if !used.iter().any(|b| b.name == c.board.name) {
            used.push(project.board(&c.board.name)?);
        }
    }
    let versions = setup::setup(root, &used)?;
    let imgs = images::resolve(root, &args.images, &images::arches(used.iter().copied())?)?;
    build_disk_loader(root, &used, &imgs)?;
    let run_dir = artifacts::new_run_dir(&artifacts::runs_root(&agent::target_dir(root)))?;
    let env = RunEnv::with_images(imgs, run_dir.clone());
    for i in env.images.iter() {
        if let Err(e) = &i.log_table {
            eprintln!("warning: {} agent logs cannot be decoded: {e}", i.arch);
        }
    }
    let img = env.images.iter().map(|i| i.elf.display().to_string()).collect::<Vec<_>>().join(", ");
    let qemu: BTreeMap<String, String> = versions.iter().map(|(b, v)| (b.clone(), v.to_string())).collect();
    // Table to stdout, or to stderr when stdout carries JSON.
    let mut out: Box<dyn Write> = if args.json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let libvirt = if used.iter().any(|b| b.launch.kind == xtask::config::BoardKind::Libvirt) {
        match xtask::libvirt::versions() {
            Ok((lib, qemu)) => format!("libvirt {lib} (qemu:///system, its QEMU {qemu})\n"),
            Err(e) => format!("libvirt: {e}\n"),
        }
    } else {
        String::new()
    };
    writeln!(
        out,
        "image {}\nQEMU {}\n{libvirt}artifacts {}\n",
        img,
        qemu.iter().map(|(b, v)| format!("{b} {v}")).collect::<Vec<_>>().join(", "),
        run_dir.display()
    )?;
    let jobs = args.jobs.map_or_else(schedule::default_jobs, usize::from);
    let order = schedule::longest_first(&cases, &artifacts::runs_root(&agent::target_dir(root)));
    let w = report::widths(cases.iter().map(|c| (c.board.name.as_str(), c.id())));
    writeln!(out, "{}", report::header(w))?;
    let started = std::time::Instant::now();
    // Both callbacks draw on stderr: the status line is cleared before a row.
    let progress = std::cell::RefCell::new(report::Progress::new());
    let results = schedule::run_all(
        &cases,
        &env,
        jobs,
        &order,
        |r| {
            progress.borrow_mut().clear();
            let _ = writeln!(out, "{}", report::row(r, w));
            let _ = out.flush();
        },
        |status| progress.borrow_mut().show(&status),
    );
    progress.borrow_mut().clear();
    let stats = report::RunStats { wall: started.elapsed(), jobs: jobs.min(cases.len()) };
    writeln!(out, "\n{}", report::summary(&results))?;
    writeln!(out, "{}{}", report::clock_line(&results), forced.map(|c| format!(" (--clock {c})")).unwrap_or_default())?;
    writeln!(out, "{stats}")?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    writeln!(out, "{}", report::cpu_line(&results, xtask::qemu::own_cpu_time(), cpus))?;
    if let Some(longest) = results.iter().filter(|r| r.wall_ms > 0).max_by_key(|r| r.wall_ms) {
        let longest_s = longest.wall_ms as f64 / 1000.0;
        writeln!(
            out,
            "longest scenario {} {:.1}s; the whole run took {:.2}x that",
            longest.full_name(),
            longest_s,
            stats.wall.as_secs_f64() / longest_s
        )?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report::junit(&results, stats.wall))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let json = serde_json::to_string_pretty(&report::to_json(&results, &qemu, stats))?;
    let _ = std::fs::write(run_dir.join("results.json"), json.clone() + "\n");
    if args.json {
        println!("{json}");
    }
    let (passed, failed, _) = report::counts(&results);
    Ok(if failed > 0 || passed == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn libvirt_xml(root: &std::path::Path, args: LibvirtXmlArgs) -> Result<ExitCode> {
    use xtask::libvirt::{self, xml};
    let boards = xtask::config::load_boards(&root.join("boards"), root).map_err(anyhow::Error::msg)?;
    let board = boards.iter().find(|b| b.name == args.board).with_context(|| {
        format!(
            "unknown board `{}` (libvirt boards: {})",
            args.board,
            boards
                .iter()
                .filter(|b| b.launch.kind == xtask::config::BoardKind::Libvirt)
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if board.launch.kind != xtask::config::BoardKind::Libvirt {
        bail!("board {} is not a libvirt board (kind = \"libvirt\")", board.name);
    }
    let settings = xml::Settings {
        devices: args
            .devices
            .iter()
            .map(|d| xml::Device::parse(d))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?,
        watchdog_action: args.watchdog_action,
        on_crash: args.on_crash,
        on_poweroff: args.on_poweroff,
        on_reboot: args.on_reboot,
    };
    if let Some(p) = settings.problem(board.arch, &board.machine) {
        bail!("board {}: {p}", board.name);
    }
    let via = match args.script_via {
        None => board.script_via,
        Some(Via::FwCfg) => ScriptVia::FwCfg,
        Some(Via::Append) => ScriptVia::Append,
        Some(Via::Smbios) => ScriptVia::Smbios,
        Some(Via::Image) => ScriptVia::Image,
    };
    if let Some(problem) = board.script_via_problem(via) {
        bail!("board {} cannot take a script through {}: {problem}", board.name, via.name());
    }
    let elf = match args.image {
        Some(p) => std::path::absolute(util::image_file(p).map_err(anyhow::Error::msg)?)?,
        None => {
            let built = images::build(root, &images::arches([board])?)?;
            built.get(&board.arch).cloned().context("no image built")?
        }
    };
    let boot = match board.boot {
        xtask::config::Boot::Kernel => xml::Boot::Kernel(elf.clone()),
        xtask::config::Boot::Firmware => {
            let rom = elf.with_extension("rom");
            images::write_rom(&elf, &rom)?;
            xml::Boot::Rom(rom)
        }
        xtask::config::Boot::Disk => bail!("board {}: libvirt boards do not boot a disk here yet", board.name),
    };
    let script = match args.script.filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => {
            if let Some(p) = xml::text_problem(&text) {
                bail!("{p}");
            }
            Some(match via {
                ScriptVia::Append => xml::ScriptIn::Cmdline(text),
                _ => {
                    // Whether libvirt escapes commas, from the libvirt installed here.
                    let commas = libvirt::daemons::ensure()
                        .map(|line| {
                            if libvirt::daemons::started_any() {
                                eprintln!("{line}");
                            }
                        })
                        .and_then(|()| libvirt::fw_cfg_commas())
                        .map_err(|e| anyhow::anyhow!("cannot ask libvirt how it writes fw_cfg strings: {e}"))?;
                    if commas == libvirt::Commas::Double && text.contains(',') {
                        let (lib, _) = libvirt::versions().unwrap_or_default();
                        eprintln!(
                            "note: libvirt {lib} copies the fw_cfg entry into -fw_cfg …,string= without escaping \
                             commas: the XML carries them doubled (,,)"
                        );
                    }
                    xml::ScriptIn::FwCfg(text, commas)
                }
            })
        }
    };
    let console_log =
        std::path::absolute(args.console_log.unwrap_or_else(|| format!("{}-console.log", args.name).into()))?;
    let domain = xml::Domain {
        name: args.name,
        description: None,
        arch: board.arch,
        domain_type: if board.accel == "kvm" { "kvm" } else { "qemu" },
        machine: board.machine.clone(),
        memory: board.memory.clone(),
        emulator: util::find_program(&board.binary),
        boot,
        script,
        settings,
        console_log,
        // The board's clock, as its rows run (virtual: <qemu:commandline>).
        qemu_args: match board.clock {
            xtask::clock::Clock::Real => Vec::new(),
            xtask::clock::Clock::Virtual => {
                xtask::clock::Clock::ICOUNT.iter().map(|s| s.to_string()).chain(board.virtual_args.clone()).collect()
            }
        },
    };
    match &args.output {
        Some(f) => std::fs::write(f, domain.xml()).with_context(|| format!("writing {}", f.display()))?,
        None => print!("{}", domain.xml()),
    }
    Ok(ExitCode::SUCCESS)
}

fn adhoc(root: &std::path::Path, args: QemuRunArgs) -> Result<ExitCode> {
    if args.boards.len() > 1 {
        bail!("an ad-hoc boot takes one --board");
    }
    // Only the boards are needed (not the scenario table).
    let boards = xtask::config::load_boards(&root.join("boards"), root).map_err(anyhow::Error::msg)?;
    let name = args.boards.first().map(String::as_str).unwrap_or("pc");
    let board = boards.iter().find(|b| b.name == name).with_context(|| {
        format!(
            "unknown board `{name}` (known: {})",
            boards.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    setup::setup(root, &[board])?;
    let imgs = images::resolve(root, &args.images, &images::arches([board])?)?;
    build_disk_loader(root, &[board], &imgs)?;
    let run_dir = artifacts::new_run_dir(&artifacts::runs_root(&agent::target_dir(root)))?;
    let env = RunEnv::with_images(imgs, run_dir.clone());
    let mut extra = Vec::new();
    let mut libvirt = None;
    if board.launch.kind == xtask::config::BoardKind::Libvirt {
        // libvirt makes the command line: the devices become the domain's.
        if !args.qemu_args.is_empty() {
            bail!("board {} is a libvirt board: libvirt makes the QEMU command line (no --qemu-arg)", board.name);
        }
        let settings = xtask::libvirt::xml::Settings {
            devices: args
                .devices
                .iter()
                .map(|d| xtask::libvirt::xml::Device::parse(d))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
            ..Default::default()
        };
        if let Some(p) = settings.problem(board.arch, &board.machine) {
            bail!("board {}: {p}", board.name);
        }
        libvirt = Some(xtask::launch::LibvirtRun { settings, virsh_console: false, label: "adhoc".into() });
    } else {
        for d in &args.devices {
            extra.push("-device".to_string());
            extra.push(d.clone());
        }
        extra.extend(args.qemu_args.iter().cloned());
    }
    let script_via = match args.script_via {
        None => board.script_via,
        Some(Via::FwCfg) => ScriptVia::FwCfg,
        Some(Via::Append) => ScriptVia::Append,
        Some(Via::Smbios) => ScriptVia::Smbios,
        Some(Via::Image) => ScriptVia::Image,
    };
    if let Some(problem) = board.script_via_problem(script_via) {
        bail!("board {} cannot take a script through {}: {problem}", board.name, script_via.name());
    }
    let clock = args.clock.map_or(board.clock, Clock::from);
    if let (Clock::Virtual, Some(why)) = (clock, board.virtual_time_problem()) {
        bail!("board {} cannot run in virtual time: {why}", board.name);
    }
    let spec = RunSpec {
        clock,
        board: board.clone(),
        extra_args: extra,
        script: args.script.filter(|s| !s.is_empty()),
        script_via,
        qmp_before_cont: Vec::new(),
        timeout: args.timeout,
        checks: None,
        live: true,
        libvirt,
        host_actions: Vec::new(),
    };
    let dir = run_dir.join(&board.name).join("adhoc");
    let code = runner::run_adhoc(&spec, &env, &dir)?;
    Ok(match code {
        Some(c) => ExitCode::from(c.clamp(0, 255) as u8),
        None => ExitCode::SUCCESS,
    })
}
