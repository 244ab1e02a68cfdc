//! The guest architectures the agent is built for and boots on. A leaf
//! module: boards (`arch = "…"` in `boards/*.toml`), images and the bench
//! all name an architecture through this type.

use std::fmt;

/// A guest architecture the agent is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    X86_64,
    S390x,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::S390x, Arch::Aarch64];

    /// The name boards use (`arch = "…"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::S390x => "s390x",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The architecture called `s` (see [`Arch::as_str`]).
    pub fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The known names, for messages: `x86_64, s390x, aarch64`.
    pub fn known() -> String {
        Arch::ALL.map(Arch::as_str).join(", ")
    }

    /// The Rust target that builds the image (see `.cargo/config.toml`).
    pub const fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::S390x => "s390x-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-none",
        }
    }

    /// ELF `e_machine` → architecture.
    pub const fn from_elf_machine(machine: u16) -> Option<Arch> {
        match machine {
            62 => Some(Arch::X86_64),   // EM_X86_64
            22 => Some(Arch::S390x),    // EM_S390
            183 => Some(Arch::Aarch64), // EM_AARCH64
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `board.arch == "s390x"` reads as the board file does.
impl PartialEq<&str> for Arch {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Arch {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_targets_and_elf_machines() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.as_str()), Some(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        assert_eq!(Arch::parse("mips"), None);
        assert_eq!(Arch::known(), "x86_64, s390x, aarch64");
        assert_eq!(Arch::S390x.target(), "s390x-unknown-linux-gnu");
        assert_eq!(Arch::Aarch64.target(), "aarch64-unknown-none");
        assert_eq!(Arch::from_elf_machine(62), Some(Arch::X86_64));
        assert_eq!(Arch::from_elf_machine(183), Some(Arch::Aarch64));
        assert_eq!(Arch::from_elf_machine(40), None); // EM_ARM (32-bit)
        assert!(Arch::S390x == "s390x" && Arch::X86_64 != "s390x");
    }
}
