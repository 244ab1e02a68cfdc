//! The one QEMU command line of every boot this tool makes: the base
//! arguments, the board's machine and devices, the QMP monitor and the serial
//! port, the boot file and the script's delivery. `qemu-run`, `test`, the
//! ad-hoc boot, `bench` and the nested board's L2 all build theirs here; a
//! launcher only changes where things are (L2's QMP and serial are L1's
//! serial ports, its files L1 paths).
//!
//! QEMU's option syntax (`key=value,key=value`) needs a `,` inside a value
//! written as `,,`: every path and string that goes into one is escaped here.

use std::path::{Path, PathBuf};

use crate::agent::SCRIPT_FW_CFG_NAME;
use crate::clock::Clock;
use crate::config::{Board, Boot, DiskBoot, Ram, ScriptVia};
use crate::util::escape_qemu_opt;

/// Where a character device goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chardev {
    /// A host file QEMU writes.
    File(PathBuf),
    /// A unix socket QEMU connects to (`server=off`; we listen).
    Socket(PathBuf),
    /// A serial device node (inside the nested board's L1: `/dev/ttyS1`).
    Tty(PathBuf),
}

impl Chardev {
    /// The `-chardev` value, with `id`.
    pub fn spec(&self, id: &str) -> String {
        let (kind, path, tail) = match self {
            Chardev::File(p) => ("file", p, ""),
            Chardev::Socket(p) => ("socket", p, ",server=off"),
            Chardev::Tty(p) => ("serial", p, ""),
        };
        format!("{kind},id={id},path={}{tail}", opt_path(path))
    }

    /// `-chardev … -mon …`: QEMU's QMP monitor on this chardev.
    pub fn qmp_args(&self) -> [String; 4] {
        ["-chardev".into(), self.spec("qmp"), "-mon".into(), "chardev=qmp,mode=control".into()]
    }

    /// `-chardev … -serial chardev:<id>`: the next serial port on this chardev.
    pub fn serial_args(&self, id: &str) -> [String; 4] {
        ["-chardev".into(), self.spec(id), "-serial".into(), format!("chardev:{id}")]
    }
}

/// A path as a QEMU option value (`,` doubled).
fn opt_path(p: &Path) -> String {
    escape_qemu_opt(&p.to_string_lossy())
}

/// What a `-fw_cfg` entry carries.
#[derive(Clone, Copy, Debug)]
pub enum FwCfg<'a> {
    /// `string=`: the text (QEMU stores it without a terminating NUL).
    String(&'a str),
    /// `file=`: a host file's bytes, verbatim.
    File(&'a Path),
}

/// `-fw_cfg name=<name>,string=<text>` or `…,file=<path>`: the only place
/// fw_cfg arguments are written.
pub fn fw_cfg(name: &str, value: FwCfg<'_>) -> [String; 2] {
    let value = match value {
        FwCfg::String(s) => format!("string={}", escape_qemu_opt(s)),
        FwCfg::File(p) => format!("file={}", opt_path(p)),
    };
    ["-fw_cfg".into(), format!("name={name},{value}")]
}

/// How a script reaches the agent (the board's or row's `script_via`, with
/// the file of `fw_cfg_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// `-fw_cfg name=opt/pvagent/script,string=<script>`.
    FwCfg,
    /// `-fw_cfg name=opt/pvagent/script,file=<path>`: the script's bytes
    /// verbatim (a NUL byte included), written to `path` before the boot.
    FwCfgFile(PathBuf),
    /// `-append <script>` (PVH command line, s390x kernel command line,
    /// aarch64 device-tree bootargs).
    Append,
    /// `-smbios type=11,value=pvagent:script=<script>`: an SMBIOS OEM string.
    Smbios,
    /// Baked into the run's copy of the disk (`boot = "disk"`), no argument.
    Image,
}

impl Delivery {
    /// `via` for a run whose files go to `dir` (`fw_cfg_file`:
    /// `<dir>/script.bin`, next to `serial.bin`).
    pub fn of(via: ScriptVia, dir: &Path) -> Delivery {
        match via {
            ScriptVia::FwCfg => Delivery::FwCfg,
            ScriptVia::FwCfgFile => Delivery::FwCfgFile(dir.join("script.bin")),
            ScriptVia::Append => Delivery::Append,
            ScriptVia::Smbios => Delivery::Smbios,
            ScriptVia::Image => Delivery::Image,
        }
    }
}

/// The agent's script and how it is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub text: String,
    pub delivery: Delivery,
}

/// The prefix of the agent's SMBIOS OEM string (type 11).
pub const SMBIOS_SCRIPT_PREFIX: &str = "pvagent:script=";

/// `-smbios type=11,value=pvagent:script=<script>`: the script as an
/// SMBIOS OEM string (`,` doubled).
pub fn smbios_script(script: &str) -> [String; 2] {
    ["-smbios".into(), format!("type=11,value={}", escape_qemu_opt(&format!("{SMBIOS_SCRIPT_PREFIX}{script}")))]
}

impl Script {
    /// The arguments that deliver it (none when it is baked into the disk).
    pub fn args(&self) -> Vec<String> {
        match &self.delivery {
            Delivery::FwCfg => fw_cfg(SCRIPT_FW_CFG_NAME, FwCfg::String(&self.text)).into(),
            Delivery::FwCfgFile(file) => fw_cfg(SCRIPT_FW_CFG_NAME, FwCfg::File(file)).into(),
            Delivery::Append => vec!["-append".into(), self.text.clone()],
            Delivery::Smbios => smbios_script(&self.text).into(),
            Delivery::Image => Vec::new(),
        }
    }
}

/// One QEMU command line. Built from a board ([`QemuCmd::new`]), then given
/// its QMP monitor, serial port, extra arguments and script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuCmd {
    /// argv\[0\].
    pub binary: String,
    pub machine: String,
    pub accel: String,
    pub memory: String,
    /// What backs `memory` (the board's `ram`).
    pub ram: Ram,
    pub cpu: Option<String>,
    /// `-bios` before the boot file (the board's `firmware`).
    pub firmware: Option<PathBuf>,
    /// QEMU's QMP monitor (none: no monitor).
    pub qmp: Option<Chardev>,
    /// The first serial port, the agent's log (none: no serial port).
    pub serial: Option<Chardev>,
    /// The board's arguments, then the run's.
    pub args: Vec<String>,
    /// How the image boots: `-kernel <image>` or `-bios <image>`.
    pub boot: Boot,
    pub image: PathBuf,
    pub script: Option<Script>,
    /// The guest's clock: [`Clock::Virtual`] adds `-icount
    /// shift=0,sleep=off` and the board's `virtual_args`.
    pub clock: Clock,
    /// The board's `virtual_args` (used only in virtual time).
    pub virtual_args: Vec<String>,
    /// `boot = "disk"`: how the disk is attached, the UEFI firmware
    /// (`image` is then the disk every run copies).
    pub disk: Option<DiskBoot>,
    /// Where the run's own files go: the disk's copy and the UEFI
    /// variables' (see [`QemuCmd::files_in`]).
    pub files_dir: Option<PathBuf>,
}

impl QemuCmd {
    /// `board` booting `image` (its ELF, or on a `boot = "firmware"` board
    /// its ROM), stopped (`-S`) until QMP says `cont`, on the board's clock.
    pub fn new(board: &Board, image: &Path) -> QemuCmd {
        QemuCmd {
            binary: board.binary.clone(),
            machine: board.machine.clone(),
            accel: board.accel.clone(),
            memory: board.memory.clone(),
            ram: board.ram,
            cpu: board.cpu.clone(),
            firmware: board.firmware.clone(),
            qmp: None,
            serial: None,
            args: board.args.clone(),
            boot: board.boot,
            image: image.to_path_buf(),
            script: None,
            clock: board.clock,
            virtual_args: board.virtual_args.clone(),
            disk: board.disk.clone(),
            files_dir: None,
        }
    }

    /// Where the run's own files go (a disk board's copy of the disk and of
    /// the UEFI variables, written by [`QemuCmd::write_files`]); without it
    /// they are relative to QEMU's working directory.
    pub fn files_in(mut self, dir: &Path) -> QemuCmd {
        self.files_dir = Some(dir.to_path_buf());
        self
    }

    fn run_file(&self, name: &str) -> PathBuf {
        self.files_dir.as_deref().unwrap_or(Path::new(".")).join(name)
    }

    /// The run's copy of the disk (`boot = "disk"`).
    pub fn disk_copy(&self) -> PathBuf {
        self.run_file(RUN_DISK)
    }

    /// The run's copy of the UEFI variables.
    pub fn uefi_vars_copy(&self) -> PathBuf {
        self.run_file(RUN_UEFI_VARS)
    }

    /// The guest's clock (instead of the board's).
    pub fn clock(mut self, clock: Clock) -> QemuCmd {
        self.clock = clock;
        self
    }

    pub fn qmp(mut self, chardev: Chardev) -> QemuCmd {
        self.qmp = Some(chardev);
        self
    }

    /// The agent's serial port to a host file.
    pub fn serial_file(mut self, path: &Path) -> QemuCmd {
        self.serial = Some(Chardev::File(path.to_path_buf()));
        self
    }

    /// Appends arguments (after the board's).
    pub fn args<S: AsRef<str>>(mut self, extra: &[S]) -> QemuCmd {
        self.args.extend(extra.iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// The script (`None` or empty: none).
    pub fn script(mut self, text: Option<&str>, delivery: Delivery) -> QemuCmd {
        self.script = text.map(|t| Script { text: t.to_string(), delivery });
        self
    }

    /// The argument list (argv\[0\] is the binary).
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![self.binary.clone()];
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-S"]);
        push(&["-machine", &self.machine, "-accel", &self.accel, "-m", &self.memory]);
        match self.ram {
            Ram::Anonymous => {}
            Ram::Memfd => push(&[
                "-object",
                &format!("memory-backend-memfd,id=pvagent-ram,size={}", self.memory),
                "-machine",
                "memory-backend=pvagent-ram",
            ]),
        }
        if let Some(cpu) = &self.cpu {
            push(&["-cpu", cpu]);
        }
        if self.clock == Clock::Virtual {
            push(&Clock::ICOUNT);
            push(&self.virtual_args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if let Some(fw) = &self.firmware {
            push(&["-bios", &fw.to_string_lossy()]);
        }
        let uefi = self.disk.as_ref().and_then(|d| d.uefi.as_ref()).filter(|_| self.boot == Boot::Disk);
        if let Some(u) = uefi {
            let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={}", opt_path(&u.code));
            let vars = format!("if=pflash,format=raw,unit=1,file={}", opt_path(&self.uefi_vars_copy()));
            push(&["-drive", &code, "-drive", &vars]);
            if u.secure_boot {
                push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
        }
        if let Some(q) = &self.qmp {
            a.extend(q.qmp_args());
        }
        if let Some(s) = &self.serial {
            a.extend(s.serial_args("serial0"));
        }
        a.extend(self.args.iter().cloned());
        match (self.boot, &self.disk) {
            (Boot::Disk, Some(d)) => {
                a.push("-drive".into());
                a.push(format!("if=none,id=disk0,format=raw,file={}", opt_path(&self.disk_copy())));
                a.push("-device".into());
                a.push(d.bus.device("disk0"));
            }
            (Boot::Kernel | Boot::Disk, _) => {
                a.push("-kernel".into());
                a.push(self.image.to_string_lossy().into_owned());
            }
            (Boot::Firmware, _) => {
                a.push("-bios".into());
                a.push(self.image.to_string_lossy().into_owned());
            }
        }
        if let Some(s) = &self.script {
            a.extend(s.args());
        }
        a
    }

    /// Writes what the command line refers to and the run creates: the
    /// script file of `fw_cfg_file`; on a disk board the run's copy of the
    /// disk (with the script baked in for `image`) and of the UEFI
    /// variables.
    pub fn write_files(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        if let Some(Script { text, delivery: Delivery::FwCfgFile(file) }) = &self.script {
            std::fs::write(file, text.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
        }
        let Some(disk) = self.disk.as_ref().filter(|_| self.boot == Boot::Disk) else {
            return Ok(());
        };
        let baked = match &self.script {
            Some(Script { text, delivery: Delivery::Image }) => Some(text.as_str()),
            _ => None,
        };
        crate::disk::write_run_copy(&self.image, baked, &self.disk_copy())?;
        if let Some(u) = &disk.uefi {
            let copy = self.uefi_vars_copy();
            crate::disk::layout::copy_sparse(&u.vars, &copy).with_context(|| {
                format!(
                    "copying the UEFI variables {} to {} (package {}: `cargo xtask setup`)",
                    u.vars.display(),
                    copy.display(),
                    u.package
                )
            })?;
        }
        Ok(())
    }
}

/// The run's copy of the disk, in its directory.
pub const RUN_DISK: &str = "disk.raw";
/// The run's copy of the UEFI variables, in its directory.
pub const RUN_UEFI_VARS: &str = "uefi-vars.fd";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_ram_backs_the_boards_memory() {
        let q = QemuCmd::new(&board("ram = \"memfd\""), Path::new("/i")).argv();
        let m = q.iter().position(|x| x == "-m").unwrap();
        assert_eq!(q[m + 1], "128M");
        assert!(q.windows(2).any(|w| w == ["-object", "memory-backend-memfd,id=pvagent-ram,size=128M"]));
        assert!(q.windows(2).any(|w| w == ["-machine", "memory-backend=pvagent-ram"]));
        let plain = QemuCmd::new(&board(""), Path::new("/i")).argv();
        assert!(!plain.iter().any(|x| x.contains("memory-backend")));
        let e = crate::config::parse_board(
            Path::new("boards/pc.toml"),
            "name = \"pc\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"q\"\nmachine = \"pc\"\n\
             accel = \"tcg\"\nmemory = \"128M\"\npackage = \"p\"\nram = \"hugetlb\"\n",
            Path::new("/w"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ram") && e.contains("memfd"), "{e}");
    }

    fn board(extra: &str) -> Board {
        crate::config::parse_board(
            Path::new("boards/pc.toml"),
            &format!(
                "name = \"pc\"\ndescription = \"d\"\narch = \"x86_64\"\nbinary = \"qemu-system-x86_64\"\n\
                 machine = \"pc\"\naccel = \"tcg\"\nmemory = \"128M\"\n\
                 args = [\"-device\", \"isa-debug-exit,iobase=0xf4,iosize=0x04\"]\npackage = \"qemu-system-x86\"\n{extra}"
            ),
            Path::new("/w"),
        )
        .unwrap()
    }

    #[test]
    fn argv_escapes_commas() {
        let a = QemuCmd::new(&board(""), Path::new("/img"))
            .qmp(Chardev::Socket("/tmp/x,y/qmp.sock".into()))
            .serial_file(Path::new("/runs/a,b/serial.bin"))
            .args(&["-device", "pvpanic"])
            .script(Some("log:a,b; pvpanic.panicked"), Delivery::FwCfg)
            .argv();
        assert_eq!(a[0], "qemu-system-x86_64");
        assert!(a.contains(&"socket,id=qmp,path=/tmp/x,,y/qmp.sock,server=off".to_string()), "{a:?}");
        assert!(a.contains(&"file,id=serial0,path=/runs/a,,b/serial.bin".to_string()));
        assert!(a.contains(&"name=opt/pvagent/script,string=log:a,,b; pvpanic.panicked".to_string()));
        let k = a.iter().position(|x| x == "-kernel").unwrap();
        assert_eq!(a[k + 1], "/img");
        // The board's arguments come before the run's.
        let d = a.iter().position(|x| x == "isa-debug-exit,iobase=0xf4,iosize=0x04").unwrap();
        assert!(d < a.iter().position(|x| x == "pvpanic").unwrap());
        let b = QemuCmd::new(&board(""), Path::new("/img")).script(Some("a,b"), Delivery::Append).argv();
        assert_eq!(&b[b.len() - 2..], &["-append".to_string(), "a,b".to_string()]);
        let c = QemuCmd::new(&board(""), Path::new("/img")).argv();
        assert_eq!(c.last().unwrap(), "/img");
        assert!(!c.iter().any(|x| x == "-serial" || x == "-mon"), "{c:?}");
    }

    #[test]
    fn the_fw_cfg_file_is_next_to_the_serial_capture() {
        let tmp = tempfile::tempdir().unwrap();
        let cmd = QemuCmd::new(&board(""), Path::new("/img"))
            .serial_file(&tmp.path().join("serial.bin"))
            .script(Some("a\0b,c"), Delivery::of(ScriptVia::FwCfgFile, tmp.path()));
        let file = tmp.path().join("script.bin");
        assert_eq!(
            cmd.argv()[cmd.argv().len() - 2..],
            ["-fw_cfg".to_string(), format!("name=opt/pvagent/script,file={}", file.display())]
        );
        cmd.write_files().unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"a\0b,c");
    }

    #[test]
    fn boot_file_and_firmware_per_board() {
        let a = QemuCmd::new(&board("boot = \"firmware\""), Path::new("/run/pvagent-x86_64.rom"))
            .script(Some("x"), Delivery::FwCfg)
            .argv();
        let k = a.iter().position(|x| x == "-bios").unwrap();
        assert_eq!(a[k + 1], "/run/pvagent-x86_64.rom");
        assert!(!a.iter().any(|x| x == "-kernel"));
        let q =
            QemuCmd::new(&board("firmware = \"/usr/share/qemu/qboot.rom\"\ncpu = \"qemu64\""), Path::new("/i")).argv();
        let bios = q.iter().position(|x| x == "-bios").unwrap();
        assert_eq!(q[bios + 1], "/usr/share/qemu/qboot.rom");
        assert!(bios < q.iter().position(|x| x == "-kernel").unwrap());
        assert!(q.windows(2).any(|w| w == ["-cpu", "qemu64"]));
        let s390 = crate::config::parse_board(
            Path::new("boards/s390.toml"),
            "name = \"s390\"\ndescription = \"d\"\narch = \"s390x\"\nbinary = \"qemu-system-s390x\"\n\
             machine = \"s390-ccw-virtio\"\naccel = \"tcg\"\nmemory = \"128M\"\npackage = \"qemu-system-s390x\"\n",
            Path::new("/w"),
        )
        .unwrap();
        let a = QemuCmd::new(&s390, Path::new("/img"))
            .script(Some("s390.shutdown"), Delivery::of(s390.script_via, Path::new("/r")))
            .argv();
        assert_eq!(&a[a.len() - 4..], &["-kernel", "/img", "-append", "s390.shutdown"]);
        assert_eq!(a[0], "qemu-system-s390x");
    }

    #[test]
    fn virtual_time_adds_icount_and_the_boards_virtual_args() {
        let b = board("virtual_args = [\"-machine\", \"pit=off\"]");
        let real = QemuCmd::new(&b, Path::new("/img")).argv();
        assert!(!real.iter().any(|x| x == "-icount" || x == "pit=off"), "{real:?}");
        let v = QemuCmd::new(&b, Path::new("/img")).clock(Clock::Virtual).argv();
        let i = v.iter().position(|x| x == "-icount").unwrap();
        assert_eq!(v[i..i + 4], ["-icount", "shift=0,sleep=off", "-machine", "pit=off"]);
        // The board's own clock is the default.
        let b = board("clock = \"virtual\"");
        assert!(QemuCmd::new(&b, Path::new("/img")).argv().windows(2).any(|w| w == Clock::ICOUNT));
        assert!(!QemuCmd::new(&b, Path::new("/img")).clock(Clock::Real).argv().iter().any(|x| x == "-icount"));
    }

    #[test]
    fn chardevs() {
        assert_eq!(Chardev::Tty("/dev/ttyS1".into()).spec("qmp"), "serial,id=qmp,path=/dev/ttyS1");
        assert_eq!(
            Chardev::File("/r/con".into()).serial_args("l1console"),
            ["-chardev", "file,id=l1console,path=/r/con", "-serial", "chardev:l1console"]
        );
        assert_eq!(fw_cfg("opt/x", FwCfg::File(Path::new("/a,b"))), ["-fw_cfg", "name=opt/x,file=/a,,b"]);
    }
}
