//! What the device tree QEMU passes says about the machine: where the
//! UART, fw_cfg, the PCIe host bridge and the GIC are, how PSCI is called,
//! and the command line. Read once, before anything else runs.

use fdt::Fdt;

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

fn first_reg(fdt: &Fdt<'_>, compatible: &[&str]) -> Option<usize> {
    let node = fdt.find_compatible(compatible)?;
    node.reg()?.next().map(|r| r.starting_address as usize)
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
        platform.uart = first_reg(&fdt, &["arm,pl011"]);
        platform.fw_cfg = first_reg(&fdt, &["qemu,fw-cfg-mmio"]);
        platform.bootargs = fdt.chosen().bootargs().unwrap_or("");
        platform.psci = fdt.find_compatible(&["arm,psci-1.0", "arm,psci-0.2"]).and_then(|psci| {
            match psci.property("method").and_then(|m| m.as_str()) {
                Some("hvc") => Some(Conduit::Hvc),
                Some("smc") => Some(Conduit::Smc),
                _ => None,
            }
        });
        if let Some(gic) = fdt.find_compatible(&["arm,cortex-a15-gic", "arm,gic-400", "arm,gic-v3"]) {
            let v3 = gic.compatible().is_some_and(|c| c.all().any(|c| c == "arm,gic-v3"));
            let mut regs = gic.reg().into_iter().flatten().map(|r| r.starting_address as usize);
            if let (Some(a), Some(b)) = (regs.next(), regs.next()) {
                platform.gic = Some(if v3 {
                    Gic::V3 { distributor: a, redistributor: b }
                } else {
                    Gic::V2 { distributor: a, cpu: b }
                });
            }
        }
        if let Some(host) = fdt.find_compatible(&["pci-host-ecam-generic"])
            && let Some(ecam) = host.reg().and_then(|mut r| r.next())
        {
            let buses = ecam.size.map_or(1, |size| (size as u64 >> 20).clamp(1, 256));
            let mem32 = host.property("ranges").and_then(|r| crate::pci::mem32_range(r.value));
            platform.pci = Some(PciHost { ecam: ecam.starting_address as usize, buses, mem32 });
        }
        platform
    }
}
