//! The host's KVM: can it give the direct Hyper-V board its crash MSRs?

use std::fs;
use std::os::fd::AsRawFd;

const KVMIO: libc::c_ulong = 0xAE;
const KVM_CHECK_EXTENSION: libc::c_ulong = (KVMIO << 8) | 0x03;
/// `_IOWR(KVMIO, 0x02, struct kvm_msr_list)` (the struct is one u32 + array).
const KVM_GET_MSR_INDEX_LIST: libc::c_ulong = 0xC004_AE02;
const KVM_CAP_HYPERV: libc::c_ulong = 44;
const HV_X64_MSR_CRASH_CTL: u32 = 0x4000_0105;

/// Can the *direct* board (`-accel kvm -cpu …,hv-crash` on this host) emit the
/// Hyper-V crash event? Checks `/dev/kvm`, `KVM_CAP_HYPERV` and that KVM
/// lists the crash-control MSR (QEMU's own conditions for `hv-crash`).
pub fn direct_hyperv_available() -> std::result::Result<(), String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not usable: {e}"))?;
    let fd = f.as_raw_fd();
    // SAFETY: KVM_CHECK_EXTENSION takes an integer argument and returns an int.
    let cap = unsafe { libc::ioctl(fd, KVM_CHECK_EXTENSION as _, KVM_CAP_HYPERV) };
    if cap <= 0 {
        return Err("this host's KVM has no Hyper-V emulation (KVM_CAP_HYPERV = 0)".into());
    }
    if !kvm_msr_index_list(fd)?.contains(&HV_X64_MSR_CRASH_CTL) {
        return Err("this host's KVM has Hyper-V but not the crash MSRs (no HV_X64_MSR_CRASH_CTL)".into());
    }
    Ok(())
}

/// `KVM_GET_MSR_INDEX_LIST` on an open `/dev/kvm`: the MSRs KVM saves and
/// restores (QEMU enables `hv-crash` only if CRASH_CTL is among them).
fn kvm_msr_index_list(fd: libc::c_int) -> std::result::Result<Vec<u32>, String> {
    // struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; }: ask for the
    // count first (E2BIG), then fetch.
    let mut buf: Vec<u32> = vec![0; 1];
    // SAFETY: nmsrs = 0 with a 4-byte buffer: the kernel only writes nmsrs.
    unsafe { libc::ioctl(fd, KVM_GET_MSR_INDEX_LIST as _, buf.as_mut_ptr()) };
    let n = buf[0] as usize;
    if n == 0 || n > 65536 {
        return Err("KVM_GET_MSR_INDEX_LIST failed".into());
    }
    buf = vec![0; n + 1];
    buf[0] = n as u32;
    // SAFETY: the buffer has room for nmsrs = n entries after the count.
    let r = unsafe { libc::ioctl(fd, KVM_GET_MSR_INDEX_LIST as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(format!("KVM_GET_MSR_INDEX_LIST failed: {}", std::io::Error::last_os_error()));
    }
    let got = (buf[0] as usize).min(n);
    Ok(buf[1..=got].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_msr_list_when_kvm_is_usable() {
        // Runs wherever /dev/kvm opens; every KVM saves IA32_SYSENTER_CS (0x174).
        let Ok(f) = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
            return;
        };
        let msrs = kvm_msr_index_list(f.as_raw_fd()).unwrap();
        assert!(msrs.contains(&0x174), "{msrs:x?}");
    }
}
