//! What the device tree QEMU passes says about the machine: where the
//! UART, fw_cfg, the PCIe host bridge and the GIC are, how PSCI is called,
//! and the command line. Read once, before anything else runs.

use fdt::Fdt;
use fdt::node::FdtNode;

/// How PSCI calls reach the firmware (the `/psci` node's `method`).
#[derive(Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum Conduit {
    Hvc,
    Smc,
}

/// The interrupt controller, for the timer interrupt that wakes `wfi`.
#[derive(Clone, Copy, defmt::Format)]
pub enum Gic {
    V2 { distributor: usize, cpu: usize },
    V3 { distributor: usize, redistributor: usize },
}

/// The PCIe host bridge (`pci-host-ecam-generic`).
#[derive(Clone, Copy, defmt::Format)]
pub struct PciHost {
    pub ecam: usize,
    pub buses: u64,
    /// The 32-bit memory range BARs can be placed in: `[base, end)`.
    pub mem32: Option<(u64, u64)>,
}

#[derive(Clone, Copy)]
pub struct Platform {
    pub dtb: usize,
    pub uart: Option<usize>,
    pub fw_cfg: Option<usize>,
    pub pci: Option<PciHost>,
    pub gic: Option<Gic>,
    pub psci: Option<Conduit>,
    pub bootargs: &'static str,
}

fn first_reg(node: &FdtNode<'_, '_>) -> Option<usize> {
    node.reg()?.next().map(|r| r.starting_address as usize)
}

/// What a node is, from its `compatible` list (or, for `/chosen`, its name).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uart,
    FwCfg,
    Psci,
    Gic { v3: bool },
    PciHost,
}

fn kind(compatible: &str) -> Option<Kind> {
    Some(match compatible {
        "arm,pl011" => Kind::Uart,
        "qemu,fw-cfg-mmio" => Kind::FwCfg,
        "arm,psci-1.0" | "arm,psci-0.2" => Kind::Psci,
        "arm,cortex-a15-gic" | "arm,gic-400" => Kind::Gic { v3: false },
        "arm,gic-v3" => Kind::Gic { v3: true },
        "pci-host-ecam-generic" => Kind::PciHost,
        _ => return None,
    })
}

impl Platform {
    /// Reads the device tree at `dtb`; a missing or broken one gives a
    /// platform without devices (the log then says so).
    ///
    /// # Safety
    ///
    /// `dtb` is what QEMU put in x0: the address of a flattened device
    /// tree that stays in place (QEMU puts it in RAM the agent never uses).
    pub unsafe fn read(dtb: usize) -> Platform {
        let mut platform = Platform { dtb, uart: None, fw_cfg: None, pci: None, gic: None, psci: None, bootargs: "" };
        // SAFETY: by this function's contract.
        let Ok(fdt) = (unsafe { Fdt::from_ptr(dtb as *const u8) }) else {
            return platform;
        };
        // One walk over every node: each lookup of its own would walk the
        // tree again, and the walk is most of what reading the tree costs.
        for node in fdt.all_nodes() {
            if node.name == "chosen" {
                platform.bootargs = node.property("bootargs").and_then(|p| p.as_str()).unwrap_or("");
                continue;
            }
            let Some(kind) = node.compatible().and_then(|c| c.all().find_map(kind)) else {
                continue;
            };
            match kind {
                Kind::Uart if platform.uart.is_none() => platform.uart = first_reg(&node),
                Kind::FwCfg if platform.fw_cfg.is_none() => platform.fw_cfg = first_reg(&node),
                Kind::Psci if platform.psci.is_none() => {
                    platform.psci = match node.property("method").and_then(|m| m.as_str()) {
                        Some("hvc") => Some(Conduit::Hvc),
                        Some("smc") => Some(Conduit::Smc),
                        _ => None,
                    }
                }
                Kind::Gic { v3 } if platform.gic.is_none() => {
                    let mut regs = node.reg().into_iter().flatten().map(|r| r.starting_address as usize);
                    if let (Some(a), Some(b)) = (regs.next(), regs.next()) {
                        platform.gic = Some(if v3 {
                            Gic::V3 { distributor: a, redistributor: b }
                        } else {
                            Gic::V2 { distributor: a, cpu: b }
                        });
                    }
                }
                Kind::PciHost if platform.pci.is_none() => {
                    if let Some(ecam) = node.reg().and_then(|mut r| r.next()) {
                        let buses = ecam.size.map_or(1, |size| (size as u64 >> 20).clamp(1, 256));
                        let mem32 = node.property("ranges").and_then(|r| crate::pci::mem32_range(r.value));
                        platform.pci = Some(PciHost { ecam: ecam.starting_address as usize, buses, mem32 });
                    }
                }
                _ => {}
            }
        }
        platform
    }
}
