//! Which system the program measures, told apart only by what any Linux program can see:
//! `uname`, and for the accelerator of a virtual machine, CPUID's hypervisor leaves.
//!
//! On Linux the program labels its records `policy=linux accel=linux`, as it always has. On
//! `mmkernel` (a kernel with the Linux system-call ABI whose `uname` says sysname `Linux` and a
//! release ending in `-mmkernel`) it labels them `policy=user`, the kernel's faults taken by a
//! user program, with `accel` the hypervisor QEMU ran it under (`KVM` or `TCG` from the
//! hypervisor signature, `qemu` when the guest cannot tell).

use crate::sys::Uname;

/// The measured system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// Linux (the host, or any Linux).
    Linux,
    /// `mmkernel`, in a QEMU virtual machine.
    Mmkernel,
}

/// The release suffix `mmkernel` reports.
const MMKERNEL_RELEASE_SUFFIX: &str = "-mmkernel";

impl System {
    pub fn from_uname(u: &Uname) -> System {
        if u.sysname == "Linux" && u.release.ends_with(MMKERNEL_RELEASE_SUFFIX) {
            System::Mmkernel
        } else {
            System::Linux
        }
    }

    /// The `policy` of its `BENCH` lines.
    pub fn policy(self) -> &'static str {
        match self {
            System::Linux => "linux",
            System::Mmkernel => "user",
        }
    }

    /// The header's `accel`.
    pub fn accel(self) -> &'static str {
        match self {
            System::Linux => "linux",
            System::Mmkernel => hypervisor_accel(hypervisor_signature()),
        }
    }
}

/// What a hypervisor signature says about QEMU's accelerator.
fn hypervisor_accel(signature: Option<[u8; 12]>) -> &'static str {
    match signature.as_ref().map(|s| &s[..]) {
        Some(b"KVMKVMKVM\0\0\0") => "KVM",
        Some(b"TCGTCGTCGTCG") => "TCG",
        _ => "qemu",
    }
}

/// CPUID leaf 0x4000_0000's vendor signature, if the CPU says it runs under a hypervisor
/// (leaf 1, ECX bit 31).
fn hypervisor_signature() -> Option<[u8; 12]> {
    use std::arch::x86_64::__cpuid;
    // CPUID exists on every x86-64 CPU (so `__cpuid` is safe); leaf 1 always does.
    let leaf1 = __cpuid(1);
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    // With the hypervisor bit set, leaf 0x4000_0000 is the hypervisor's.
    let r = __cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    for (chunk, reg) in sig.chunks_mut(4).zip([r.ebx, r.ecx, r.edx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    Some(sig)
}

/// The CPU's brand string (CPUID leaves 0x8000_0002..=4), which is what Linux's
/// `/proc/cpuinfo` calls `model name`, trimmed.
pub fn cpu_brand() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    // Leaf 0x8000_0000 (the highest extended leaf) exists on every x86-64 CPU.
    let max = __cpuid(0x8000_0000).eax;
    if max < 0x8000_0004 {
        return None;
    }
    let mut bytes = Vec::with_capacity(48);
    for leaf in 0x8000_0002..=0x8000_0004u32 {
        // At most the highest extended leaf, checked above.
        let r = __cpuid(leaf);
        for reg in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend_from_slice(&reg.to_le_bytes());
        }
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let brand = String::from_utf8_lossy(&bytes[..end]).trim().to_owned();
    (!brand.is_empty()).then_some(brand)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uname(sysname: &str, release: &str) -> Uname {
        Uname {
            sysname: sysname.into(),
            nodename: "box".into(),
            release: release.into(),
        }
    }

    #[test]
    fn tells_mmkernel_from_linux_by_uname() {
        let mm = System::from_uname(&uname("Linux", "6.8.0-mmkernel"));
        assert_eq!(mm, System::Mmkernel);
        assert_eq!(mm.policy(), "user");
        for (sys, rel) in [
            ("Linux", "6.8.0-45-generic"),
            ("Linux", "6.8.0-mmkernel-rc1"),
            ("FreeBSD", "14.0-mmkernel"),
        ] {
            let s = System::from_uname(&uname(sys, rel));
            assert_eq!(s, System::Linux, "{sys} {rel}");
            assert_eq!((s.policy(), s.accel()), ("linux", "linux"));
        }
        // The host running these tests is not mmkernel.
        let host = crate::sys::uname().expect("uname");
        assert_eq!(System::from_uname(&host), System::Linux);
    }

    #[test]
    fn hypervisor_signatures() {
        assert_eq!(hypervisor_accel(Some(*b"KVMKVMKVM\0\0\0")), "KVM");
        assert_eq!(hypervisor_accel(Some(*b"TCGTCGTCGTCG")), "TCG");
        assert_eq!(hypervisor_accel(Some(*b"Microsoft Hv")), "qemu");
        assert_eq!(hypervisor_accel(None), "qemu");
    }
}
