//! The agent's watchdog abstraction (embedded-hal 1.0 has none) and its
//! models: ib700 and i6300esb on x86, diag288 on s390x.

pub mod diag288;
pub mod i6300esb;
pub mod ib700;

pub use {diag288::Diag288, i6300esb::I6300Esb, ib700::Ib700};

/// Which watchdog a step addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(image, derive(defmt::Format))]
pub enum Model {
    Ib700,
    I6300Esb,
    Diag288,
}

impl Model {
    pub const fn name(self) -> &'static str {
        match self {
            Model::Ib700 => "ib700",
            Model::I6300Esb => "i6300esb",
            Model::Diag288 => "diag288",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Model::Ib700, Model::I6300Esb, Model::Diag288].into_iter().find(|m| m.name() == name)
    }

    /// The architecture the device exists on.
    pub const fn arch(self) -> crate::Arch {
        match self {
            Model::Ib700 | Model::I6300Esb => crate::Arch::X86_64,
            Model::Diag288 => crate::Arch::S390x,
        }
    }
}

/// How a watchdog is armed; computed (and checked) when the script is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Ib700(ib700::Timeout),
    I6300Esb(i6300esb::Settings),
    Diag288(diag288::Timeout),
}

impl Timeout {
    /// The watchdog the timeout is for.
    pub const fn model(self) -> Model {
        match self {
            Timeout::Ib700(_) => Model::Ib700,
            Timeout::I6300Esb(_) => Model::I6300Esb,
            Timeout::Diag288(_) => Model::Diag288,
        }
    }
}

/// What every watchdog driver offers.
pub trait Watchdog {
    /// The device's own representation of a timeout.
    type Timeout;
    /// Starts (or restarts) the countdown.
    fn arm(&mut self, timeout: &Self::Timeout);
    /// Restarts the countdown of an armed watchdog.
    fn feed(&mut self);
    /// Stops the countdown; false if the device cannot be stopped.
    fn stop(&mut self) -> bool;
    /// Whether `stop` can work (an i6300esb whose lock bit is set cannot
    /// be stopped until the machine resets).
    fn can_stop(&mut self) -> bool;
}
