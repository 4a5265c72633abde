//! The GDT and TSS: kernel and user code/data segments and a task-state segment whose first
//! interrupt stack (IST 0) is a separate stack for double faults, so a kernel stack overflow ends
//! in a readable dump instead of a triple fault. Every CPU gets its own pair ([`CpuTables`]).
//!
//! The order of the segments is the one `SYSCALL`/`SYSRET` require (`STAR`): kernel code, then
//! kernel data; user data, then user code. The TSS's `rsp0` is the stack an interrupt or
//! exception from ring 3 lands on: the running user thread's kernel stack ([`set_rsp0`]).

use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;

/// Size of each CPU's double-fault stack.
pub const DOUBLE_FAULT_STACK_SIZE: usize = 16 * 1024;

/// The kernel's code segment selector.
pub const KERNEL_CS: u16 = 0x08;
/// The kernel's data (and stack) segment selector.
pub const KERNEL_DS: u16 = 0x10;
/// The user data (and stack) segment selector, RPL 3.
pub const USER_DS: u16 = 0x18 | 3;
/// The user (64-bit) code segment selector, RPL 3.
pub const USER_CS: u16 = 0x20 | 3;

/// One CPU's descriptor tables.
pub struct CpuTables {
    gdt: GlobalDescriptorTable,
    tss: TaskStateSegment,
    code: SegmentSelector,
    data: SegmentSelector,
    tss_sel: SegmentSelector,
}

impl CpuTables {
    /// Tables whose double-fault stack ends at `df_stack_top`.
    pub const fn new(df_stack_top: VirtAddr) -> Self {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = df_stack_top;
        CpuTables {
            gdt: GlobalDescriptorTable::new(),
            tss,
            code: SegmentSelector(0),
            data: SegmentSelector(0),
            tss_sel: SegmentSelector(0),
        }
    }

    /// Loads these tables on the calling CPU (whose per-CPU area must be set up). They must live
    /// forever, hence `'static`.
    pub fn load(&'static mut self) {
        // The TSS descriptor holds the TSS's address, so it is built from its final place. From
        // here on the TSS is reached only through this pointer (`set_rsp0` writes through it).
        let tss: *mut TaskStateSegment = &raw mut self.tss;
        self.code = self.gdt.append(Descriptor::kernel_code_segment());
        self.data = self.gdt.append(Descriptor::kernel_data_segment());
        let user_data = self.gdt.append(Descriptor::user_data_segment());
        let user_code = self.gdt.append(Descriptor::user_code_segment());
        // SAFETY: the TSS lives forever (`'static`) and is not moved: it is a field of `self`.
        let tss_descriptor = unsafe { Descriptor::tss_segment_unchecked(tss) };
        self.tss_sel = self.gdt.append(tss_descriptor);
        assert_eq!(
            (self.code.0, self.data.0, user_data.0, user_code.0),
            (KERNEL_CS, KERNEL_DS, USER_DS, USER_CS),
            "GDT layout (SYSCALL/SYSRET depend on it)"
        );
        super::percpu::this_cpu()
            .tss
            .store(tss, core::sync::atomic::Ordering::Release);
        let gdt: &'static GlobalDescriptorTable = &self.gdt;
        gdt.load();
        // SAFETY: the selectors were just appended to the GDT loaded above, code as a 64-bit code
        // segment, data and TSS as what they are; the tables are 'static.
        unsafe {
            CS::set_reg(self.code);
            DS::set_reg(self.data);
            ES::set_reg(self.data);
            SS::set_reg(self.data);
            load_tss(self.tss_sel);
        }
    }
}

/// The bootstrap CPU's double-fault stack and tables (other CPUs allocate theirs).
static mut BSP_DF_STACK: [u8; DOUBLE_FAULT_STACK_SIZE] = [0; DOUBLE_FAULT_STACK_SIZE];
static BSP_TABLES: spin::Once<()> = spin::Once::new();

/// Loads the bootstrap CPU's GDT and TSS. Runs once.
pub fn init_bsp() {
    BSP_TABLES.call_once(|| {
        let top = VirtAddr::from_ptr(&raw const BSP_DF_STACK) + DOUBLE_FAULT_STACK_SIZE as u64;
        static mut TABLES: Option<CpuTables> = None;
        // SAFETY: `call_once` runs this exactly once, on the bootstrap CPU before any other CPU
        // starts, so nothing else touches TABLES.
        let slot: *mut Option<CpuTables> = &raw mut TABLES;
        // SAFETY: (as above) the only access to TABLES, ever.
        let tables = unsafe { (*slot).insert(CpuTables::new(top)) };
        tables.load();
    });
}

/// Sets the stack an interrupt or exception from ring 3 lands on, on this CPU: the top of the
/// user thread about to run here. Called with interrupts off (by the scheduler, at the switch).
pub fn set_rsp0(top: u64) {
    let tss = super::percpu::this_cpu()
        .tss
        .load(core::sync::atomic::Ordering::Relaxed);
    assert!(!tss.is_null(), "set_rsp0 before this CPU's GDT is loaded");
    // The CPU reads `rsp0` only at a privilege change, impossible here (kernel, interrupts off).
    // SAFETY: the TSS lives forever (`CpuTables::load`: `'static`); only this CPU writes it.
    unsafe { (*tss).privilege_stack_table[0] = VirtAddr::new(top) };
}
