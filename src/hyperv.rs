//! Hyper-V crash reporting: the CPUID checks and the crash-MSR sequence.
//!
//! Under KVM with `-cpu …,hv-crash`, writing the five parameters to
//! HV_X64_MSR_CRASH_P0..P4 and then the notify bit to HV_X64_MSR_CRASH_CTL
//! makes QEMU emit `GUEST_PANICKED` with `info.type = "hyper-v"` and
//! `arg1..arg5` = P0..P4. The sequence is pure: it runs against a
//! [`CpuAccess`], which the agent implements with `cpuid`/`wrmsr` and the
//! unit tests with a recorder.

/// CPUID leaf 1, ECX bit 31: running under a hypervisor.
pub const CPUID_FEATURES: u32 = 0x1;
pub const HYPERVISOR_BIT: u32 = 1 << 31;
/// Hypervisor vendor leaf: EAX = highest hypervisor leaf, EBX:ECX:EDX = vendor.
pub const LEAF_VENDOR: u32 = 0x4000_0000;
/// Interface leaf: EAX = "Hv#1" for the Hyper-V interface.
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
pub const HV_SIGNATURE: u32 = 0x3123_7648;
/// Feature leaf: EDX bit 10 = guest crash MSRs available.
pub const LEAF_FEATURES: u32 = 0x4000_0003;
pub const CRASH_MSRS_BIT: u32 = 1 << 10;

/// HV_X64_MSR_CRASH_P0; P1..P4 follow.
pub const MSR_CRASH_P0: u32 = 0x4000_0100;
/// HV_X64_MSR_CRASH_CTL and its notify bit.
pub const MSR_CRASH_CTL: u32 = 0x4000_0105;
pub const CRASH_NOTIFY: u64 = 1 << 63;

/// An instruction raised a general-protection fault (#GP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneralProtection;

/// The CPU operations the sequence needs.
pub trait CpuAccess {
    /// `cpuid` with ECX = 0: [EAX, EBX, ECX, EDX].
    fn cpuid(&mut self, leaf: u32) -> [u32; 4];
    /// `wrmsr`; `Err` if it raised #GP.
    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), GeneralProtection>;
}

/// What the CPU advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub hypervisor: bool,
    /// Highest hypervisor leaf (0 without a hypervisor).
    pub max_leaf: u32,
    /// Vendor string of leaf 0x40000000 (e.g. "Microsoft Hv", "TCGTCGTCGTCG").
    pub vendor: [u8; 12],
    /// EAX of leaf 0x40000001.
    pub interface: u32,
    /// EDX of leaf 0x40000003.
    pub features_edx: u32,
}

/// The first check that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// CPUID.1:ECX bit 31 is clear: no hypervisor at all.
    NoHypervisor,
    /// The interface signature is not "Hv#1" (QEMU only exposes the Hyper-V
    /// leaves with an `hv-*` CPU flag, and only under KVM with Hyper-V).
    NotHyperV,
    /// Hyper-V, but CPUID 0x40000003 EDX bit 10 (crash MSRs) is clear.
    NoCrashMsrs,
}

impl Probe {
    /// Reads the leaves the crash path depends on.
    pub fn read(cpu: &mut impl CpuAccess) -> Self {
        let hypervisor = cpu.cpuid(CPUID_FEATURES)[2] & HYPERVISOR_BIT != 0;
        let mut probe = Probe { hypervisor, max_leaf: 0, vendor: [0; 12], interface: 0, features_edx: 0 };
        if !hypervisor {
            return probe;
        }
        let [max, b, c, d] = cpu.cpuid(LEAF_VENDOR);
        probe.max_leaf = max;
        for (chunk, reg) in probe.vendor.chunks_mut(4).zip([b, c, d]) {
            chunk.copy_from_slice(&reg.to_le_bytes());
        }
        if max >= LEAF_INTERFACE {
            probe.interface = cpu.cpuid(LEAF_INTERFACE)[0];
        }
        if max >= LEAF_FEATURES && probe.interface == HV_SIGNATURE {
            probe.features_edx = cpu.cpuid(LEAF_FEATURES)[3];
        }
        probe
    }

    /// The vendor as text ("?" for non-printable bytes).
    pub fn vendor_str(&self) -> &str {
        let end = self.vendor.iter().position(|&b| b == 0).unwrap_or(12);
        core::str::from_utf8(&self.vendor[..end]).unwrap_or("?")
    }

    /// Whether the crash MSRs can be used, else the first check that failed.
    pub fn check(&self) -> Result<(), Unavailable> {
        if !self.hypervisor {
            Err(Unavailable::NoHypervisor)
        } else if self.interface != HV_SIGNATURE {
            Err(Unavailable::NotHyperV)
        } else if self.features_edx & CRASH_MSRS_BIT == 0 {
            Err(Unavailable::NoCrashMsrs)
        } else {
            Ok(())
        }
    }
}

/// Writes P0..P4, then CRASH_CTL with the notify bit (last, since it is the
/// write that makes KVM report the crash). `Err(msr)`: that write raised #GP.
pub fn report_crash(cpu: &mut impl CpuAccess, args: [u64; 5]) -> Result<(), u32> {
    for (msr, value) in (MSR_CRASH_P0..).zip(args) {
        cpu.wrmsr(msr, value).map_err(|_| msr)?;
    }
    cpu.wrmsr(MSR_CRASH_CTL, CRASH_NOTIFY).map_err(|_| MSR_CRASH_CTL)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    #[derive(Default)]
    struct Recorder {
        leaves: Vec<(u32, [u32; 4])>,
        cpuid_calls: Vec<u32>,
        writes: Vec<(u32, u64)>,
        gp_on: Option<u32>,
    }

    impl CpuAccess for Recorder {
        fn cpuid(&mut self, leaf: u32) -> [u32; 4] {
            self.cpuid_calls.push(leaf);
            self.leaves.iter().find(|(l, _)| *l == leaf).map_or([0; 4], |(_, r)| *r)
        }
        fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), GeneralProtection> {
            if self.gp_on == Some(msr) {
                return Err(GeneralProtection);
            }
            self.writes.push((msr, value));
            Ok(())
        }
    }

    fn regs(s: &[u8; 12]) -> [u32; 3] {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        [w(0), w(4), w(8)]
    }

    fn hyperv(features_edx: u32) -> Recorder {
        let [b, c, d] = regs(b"Microsoft Hv");
        Recorder {
            leaves: std::vec![
                (CPUID_FEATURES, [0, 0, HYPERVISOR_BIT, 0]),
                (LEAF_VENDOR, [0x4000_0005, b, c, d]),
                (LEAF_INTERFACE, [HV_SIGNATURE, 0, 0, 0]),
                (LEAF_FEATURES, [0, 0, 0, features_edx]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn writes_the_five_parameters_then_the_notify_bit_last() {
        let mut cpu = hyperv(0x408);
        let probe = Probe::read(&mut cpu);
        assert_eq!(probe.vendor_str(), "Microsoft Hv");
        assert_eq!(probe.check(), Ok(()));
        let args = [0x1e, 0xffff_ffff_ffff_fff0, 0x20001, 0, 0x1234_5678_9abc_def0];
        assert_eq!(report_crash(&mut cpu, args), Ok(()));
        assert_eq!(
            cpu.writes,
            [
                (0x4000_0100, 0x1e),
                (0x4000_0101, 0xffff_ffff_ffff_fff0),
                (0x4000_0102, 0x20001),
                (0x4000_0103, 0),
                (0x4000_0104, 0x1234_5678_9abc_def0),
                (0x4000_0105, 0x8000_0000_0000_0000),
            ]
        );
    }

    #[test]
    fn names_the_check_that_failed() {
        let mut bare = Recorder::default();
        let probe = Probe::read(&mut bare);
        assert_eq!(probe.check(), Err(Unavailable::NoHypervisor));
        assert_eq!(bare.cpuid_calls, [CPUID_FEATURES]);

        let [b, c, d] = regs(b"TCGTCGTCGTCG");
        let mut tcg = Recorder {
            leaves: std::vec![(CPUID_FEATURES, [0, 0, HYPERVISOR_BIT, 0]), (LEAF_VENDOR, [0x4000_0001, b, c, d])],
            ..Default::default()
        };
        let probe = Probe::read(&mut tcg);
        assert_eq!(probe.vendor_str(), "TCGTCGTCGTCG");
        assert_eq!(probe.check(), Err(Unavailable::NotHyperV));

        assert_eq!(Probe::read(&mut hyperv(0x008)).check(), Err(Unavailable::NoCrashMsrs));
    }

    #[test]
    fn a_gp_stops_the_sequence_before_the_notify_bit() {
        let mut cpu = hyperv(0x408);
        cpu.gp_on = Some(0x4000_0102);
        assert_eq!(report_crash(&mut cpu, [1, 2, 3, 4, 5]), Err(0x4000_0102));
        assert_eq!(cpu.writes, [(0x4000_0100, 1), (0x4000_0101, 2)]);
    }
}
