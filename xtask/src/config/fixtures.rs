//! Boards and scenario tables the config, matcher and case tests share.

use std::path::Path;

use super::{Board, Scenarios, parse_board, parse_scenarios};

pub const PC: &str = r#"
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

pub const S390: &str = r#"
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

pub const VIRT: &str = r#"
name = "virt"
description = "aarch64 virt"
arch = "aarch64"
binary = "qemu-system-aarch64"
machine = "virt"
accel = "tcg"
memory = "128M"
cpu = "max"
args = ["-semihosting-config", "enable=on,target=native"]
package = "qemu-system-arm"
"#;

/// The `pc` board alone.
pub fn boards() -> Vec<Board> {
    vec![parse_board(Path::new("boards/pc.toml"), PC, Path::new("/w")).unwrap()]
}

/// `pc` (@x86 @pci), `fast` (firmware boot, @x86 @pci), `micro` (@x86),
/// `s390` (@big).
pub fn mixed_boards() -> Vec<Board> {
    let root = Path::new("/w");
    let pc = format!("{PC}groups = [\"x86\", \"pci\"]\n");
    let fast = format!("{}boot = \"firmware\"\ngroups = [\"x86\", \"pci\"]\n", PC.replace("\"pc\"\n", "\"fast\"\n"));
    let micro = format!("{}groups = [\"x86\"]\n", PC.replace("\"pc\"\n", "\"micro\"\n"));
    vec![
        parse_board(Path::new("boards/pc.toml"), &pc, root).unwrap(),
        parse_board(Path::new("boards/fast.toml"), &fast, root).unwrap(),
        parse_board(Path::new("boards/micro.toml"), &micro, root).unwrap(),
        parse_board(Path::new("boards/s390.toml"), S390, root).unwrap(),
    ]
}

/// `text` as `scenarios.toml` against [`boards`].
pub fn parse(text: &str) -> Result<Scenarios, String> {
    parse_with(text, &boards())
}

pub fn parse_with(text: &str, boards: &[Board]) -> Result<Scenarios, String> {
    parse_scenarios(Path::new("scenarios.toml"), text, boards)
}

pub fn err_of(text: &str) -> String {
    parse(text).unwrap_err()
}

pub const GOOD: &str = r#"
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

pub const LIST: &str = r#"
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

pub const TIMED: &str = r#"
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

/// For [`mixed_boards`].
pub const GROUPED: &str = r#"
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
