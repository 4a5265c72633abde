//! The GDT and TSS: kernel code/data segments and a task-state segment whose first interrupt
//! stack (IST 0) is a separate stack for double faults, so a kernel stack overflow ends in a
//! readable dump instead of a triple fault. Every CPU gets its own pair ([`CpuTables`]).

use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;

/// Size of each CPU's double-fault stack.
pub const DOUBLE_FAULT_STACK_SIZE: usize = 16 * 1024;

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

    /// Loads these tables on the calling CPU. They must live forever, hence `'static`.
    pub fn load(&'static mut self) {
        // The TSS descriptor holds the TSS's address, so it is built from its final place.
        let tss: &'static TaskStateSegment = &self.tss;
        self.code = self.gdt.append(Descriptor::kernel_code_segment());
        self.data = self.gdt.append(Descriptor::kernel_data_segment());
        self.tss_sel = self.gdt.append(Descriptor::tss_segment(tss));
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
