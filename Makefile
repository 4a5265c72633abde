# mmkernel: `make run` boots it in QEMU, `make test` runs every test. Both install what is
# missing first (the pinned toolchain, QEMU).

SMP     ?= 8
MEM     ?= 1G
UEFI    ?= 0
KVM     ?= 0
TIMEOUT ?= 300
PROFILE ?= release
LOG     ?= info
# make bench-linux: thread counts (default: 1,2,4,8 up to the CPU count), workloads, repetitions
THREADS   ?=
WORKLOADS ?= page_fault1,pft,churn
REPS      ?= 3

TARGET  := x86_64-unknown-none
BOOT    := target/release/boot
KERNEL   = target/$(TARGET)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))/kernel
SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)
BENCH_DIR   := target/bench
FAULT_BENCH := target/user/x86_64-unknown-linux-musl/release/fault_bench

RUN_FLAGS := --smp $(SMP) --mem $(MEM) --timeout $(TIMEOUT) \
             $(if $(filter 1,$(UEFI)),--uefi) $(if $(filter 1,$(KVM)),--kvm)

.PHONY: all run gdb test test-long host-test kernel-test loom mutants check setup toolchain qemu ovmf boot-tool kernel clean \
        bench-linux bench-report user-toolchain

all: kernel

## run: build and boot in QEMU (SMP=8 MEM=1G UEFI=0 KVM=0 TIMEOUT=300)
run: setup $(if $(filter 1,$(UEFI)),ovmf) boot-tool kernel
	$(BOOT) run $(KERNEL) $(RUN_FLAGS)

## gdb: boot a debug kernel that waits for GDB on localhost:1234
gdb: PROFILE = dev
gdb: setup boot-tool kernel
	@echo "In another terminal: gdb -ex 'add-symbol-file $(KERNEL) -o 0xffffffff80000000' -ex 'target remote :1234' -ex 'hbreak kernel::init' -ex c"
	$(BOOT) run $(KERNEL) $(RUN_FLAGS) --gdb --timeout 0

## test: every test: host tests of mm/ and boot/, then the in-QEMU test kernels; one summary line
test: setup boot-tool
	$(BOOT) test

## test-long: the host property and fault-injection tests with many more cases (MM_TEST_LONG=1),
## release build
test-long: setup
	MM_TEST_LONG=1 cargo test -p mm --release --lib -- prop inject

## loom: model-check the lock protocols (bounded; CI runs it)
loom: setup
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p mm --release --lib loom

## mutants: applies each protocol bug listed in scripts/mutants.py (one at a time, the file
## restored after each) and runs the tests that must catch it; fails if one is missed
## (RUNS=n repeats each run to spot tests that catch a bug only sometimes)
RUNS ?= 1
mutants: setup
	python3 scripts/mutants.py --runs $(RUNS)

## bench-linux: the benchmark's workloads on this machine's Linux -> target/bench/linux.log, then
## the report (THREADS=1,2 WORKLOADS=page_fault1,pft,churn REPS=3)
bench-linux: user-toolchain
	cd user && CARGO_TARGET_DIR=$(CURDIR)/target/user cargo build --release
	@! command -v file >/dev/null || file $(FAULT_BENCH) | grep -q 'static' || \
	  { echo "$(FAULT_BENCH) is not a static binary" >&2; exit 1; }
	mkdir -p $(BENCH_DIR)
	$(FAULT_BENCH) $(if $(THREADS),--threads $(THREADS)) --workloads $(WORKLOADS) --reps $(REPS) \
	  > $(BENCH_DIR)/linux.log.part
	mv $(BENCH_DIR)/linux.log.part $(BENCH_DIR)/linux.log
	@cat $(BENCH_DIR)/linux.log
	$(MAKE) --no-print-directory bench-report

## bench-report: report.md and SVG plots in target/bench from the logs there: serial.log (make
## bench), linux.log (make bench-linux), either or both
bench-report: toolchain
	@logs=""; for f in $(BENCH_DIR)/serial.log $(BENCH_DIR)/linux.log; do \
	  if [ -f $$f ]; then logs="$$logs $$f"; fi; done; \
	if [ -z "$$logs" ]; then echo "no logs in $(BENCH_DIR): run make bench or make bench-linux" >&2; exit 1; fi; \
	echo "cargo run -q -p benchreport -- --out $(BENCH_DIR)$$logs"; \
	cargo run -q -p benchreport -- --out $(BENCH_DIR) $$logs

# The stable toolchain with the musl target that user/rust-toolchain.toml names.
user-toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required: https://rustup.rs" >&2; exit 1; }
	@cd user && { rustup toolchain install >/dev/null 2>&1 || rustup toolchain install; }

## check: clippy over the host crates and the kernel
check: setup
	cargo clippy -p mm -p boot -p benchreport --all-targets
	cargo clippy -p kernel -p ktests --target $(TARGET) --all-targets

kernel:
	KERNEL_LOG=$(LOG) cargo build -p kernel --target $(TARGET) --profile $(PROFILE)

boot-tool:
	cargo build --release -p boot

setup: toolchain qemu

toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required: https://rustup.rs" >&2; exit 1; }
	@rustup toolchain install >/dev/null 2>&1 || rustup toolchain install

qemu:
	@command -v qemu-system-x86_64 >/dev/null || { \
	  echo "installing QEMU (qemu-system-x86)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q qemu-system-x86; }

ovmf:
	@test -f /usr/share/ovmf/OVMF.fd || { \
	  echo "installing UEFI firmware (ovmf)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q ovmf; }

clean:
	cargo clean
