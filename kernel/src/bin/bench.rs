//! The benchmark kernel: boots like the kernel, runs the fault-scaling benchmark
//! (`kernel::bench`) with the options `make bench` built it with, and leaves QEMU with success
//! only if every measurement went well.

#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::bench::config::{Config, RawConfig};
use kernel::qemu::{ExitCode, exit};

bootloader_api::entry_point!(bench_main, config = &kernel::BOOTLOADER_CONFIG);

fn bench_main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    let raw = RawConfig {
        workloads: option_env!("BENCH_WORKLOADS"),
        policies: option_env!("BENCH_POLICIES"),
        threads: option_env!("BENCH_THREADS"),
        reps: option_env!("BENCH_REPS"),
        warmup_ms: option_env!("BENCH_WARMUP_MS"),
        window_ms: option_env!("BENCH_WINDOW_MS"),
        region_mib: option_env!("BENCH_REGION_MIB"),
        piece_mib: option_env!("BENCH_PIECE_MIB"),
        profile: option_env!("BENCH_PROFILE"),
        fork: option_env!("BENCH_FORK"),
        host_cores: option_env!("BENCH_HOST_CORES"),
        accel: option_env!("BENCH_ACCEL"),
    };
    let ok = match Config::parse(&raw) {
        Ok(cfg) => kernel::bench::run(&cfg),
        Err(e) => {
            kernel::error!("bench: {e}");
            false
        }
    };
    exit(if ok {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}
