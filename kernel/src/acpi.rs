//! ACPI tables through the `acpi` crate: which CPUs the MADT lists and where the local APIC is.

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::InterruptModel;
use acpi::platform::ProcessorState;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use x86_64::PhysAddr;

/// Maps ACPI tables through the bootloader's physical-memory mapping.
#[derive(Clone, Copy, Debug)]
struct PhysMapHandler;

impl AcpiHandler for PhysMapHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let virt = crate::memory::phys_to_virt(PhysAddr::new(physical as u64));
        let ptr = NonNull::new(virt.as_mut_ptr::<T>()).expect("physical mapping at null");
        // SAFETY: all physical memory is mapped at the offset for the kernel's lifetime, so the
        // region is valid for `size` bytes and never needs unmapping.
        unsafe { PhysicalMapping::new(physical, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The CPUs the firmware lists.
#[derive(Clone, Debug)]
pub struct Cpus {
    /// APIC ids of every usable CPU, bootstrap CPU first.
    pub apic_ids: Vec<u32>,
    /// Physical address of the local APIC registers (xAPIC mode).
    pub local_apic_address: u64,
}

/// Why the CPU list could not be read.
#[derive(Debug)]
pub enum AcpiError {
    NoRsdp,
    Tables(acpi::AcpiError),
    NotApic,
    NoProcessorInfo,
}

/// Reads the MADT.
pub fn cpus(rsdp: Option<u64>) -> Result<Cpus, AcpiError> {
    let rsdp = rsdp.ok_or(AcpiError::NoRsdp)?;
    // SAFETY: `rsdp` is the RSDP address the bootloader found, and the handler maps physical
    // memory correctly.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMapHandler, rsdp as usize) }
        .map_err(AcpiError::Tables)?;
    let info = tables.platform_info().map_err(AcpiError::Tables)?;
    let InterruptModel::Apic(apic) = info.interrupt_model else {
        return Err(AcpiError::NotApic);
    };
    let procs = info.processor_info.ok_or(AcpiError::NoProcessorInfo)?;
    let mut apic_ids = Vec::with_capacity(1 + procs.application_processors.len());
    apic_ids.push(procs.boot_processor.local_apic_id);
    apic_ids.extend(
        procs
            .application_processors
            .iter()
            .filter(|p| p.state != ProcessorState::Disabled)
            .map(|p| p.local_apic_id),
    );
    Ok(Cpus {
        apic_ids,
        local_apic_address: apic.local_apic_address,
    })
}
