//! What the header says about the machine, and the TLB shootdown count, from `/proc` where the
//! system has it (on a system without `/proc` the keys are left out).

use std::fs;

/// The first `model name` of `/proc/cpuinfo`.
pub fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    model_name(&text)
}

fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// TLB shootdown IPIs received by all CPUs so far: the `TLB:` row of `/proc/interrupts`.
/// System-wide, so other programs' shootdowns count too.
pub fn tlb_shootdowns() -> Option<u64> {
    let text = fs::read_to_string("/proc/interrupts").ok()?;
    tlb_row(&text)
}

fn tlb_row(interrupts: &str) -> Option<u64> {
    let cpus = interrupts.lines().next()?.split_whitespace().count();
    let row = interrupts
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("TLB:"))?;
    let counts: Vec<u64> = row
        .split_whitespace()
        .take(cpus)
        .map_while(|w| w.parse().ok())
        .collect();
    (counts.len() == cpus).then(|| counts.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(model_name(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        let interrupts = "           CPU0       CPU1       \n  0:         34          0   IO-APIC    2-edge      timer\nTLB:      32225      32440   TLB shootdowns\n";
        assert_eq!(tlb_row(interrupts), Some(64665));
        assert_eq!(tlb_row("           CPU0\nNMI: 1 Non-maskable\n"), None);
    }
}
