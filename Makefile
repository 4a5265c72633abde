# mmkernel: `make run` boots it in QEMU, `make test` runs every test. Both install what is
# missing first (the pinned toolchain, QEMU).

SMP     ?= 8
MEM     ?= 1G
UEFI    ?= 0
KVM     ?= 0
TIMEOUT ?= 300
PROFILE ?= release
LOG     ?= info
# make run: a static x86-64 Linux program to pack into the ramdisk, and its arguments
PROG    ?=
ARGS    ?=
# make soak: minutes
DURATION  ?= 10
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
USER_PROGS   = $(FAULT_BENCH) $(patsubst user/difftest/src/bin/%.rs,target/user/x86_64-unknown-linux-musl/release/%,$(wildcard user/difftest/src/bin/*.rs))

RUN_FLAGS := --smp $(SMP) --mem $(MEM) --timeout $(TIMEOUT) \
             $(if $(filter 1,$(UEFI)),--uefi) $(if $(filter 1,$(KVM)),--kvm)
# ARGS goes to the shell in single quotes (a ' inside becomes '\'') and `boot` splits it.
PROG_FLAGS = $(if $(PROG),--prog '$(PROG)' $(if $(ARGS),--args '$(subst ','\'',$(ARGS))'))
# make run without PROG: these user programs start at once after the kernel-thread demos
# (threads faulting on every CPU, 64 threads on futexes, a process killed by a segfault, an exit
# code), as a show of the whole system
DEMO_PROGS := faults threads segv_write_ro exit_code
DEMO_FLAGS  = $(foreach p,$(DEMO_PROGS),--prog target/user/x86_64-unknown-linux-musl/release/$(p)) --together

.PHONY: all run gdb test test-long test-loop soak host-test kernel-test loom mutants check setup toolchain qemu ovmf boot-tool kernel clean \
        bench bench-kernel bench-linux bench-user bench-report user user-toolchain

all: kernel

## run: build and boot in QEMU (SMP=8 MEM=1G UEFI=0 KVM=0 TIMEOUT=300): the kernel's demos, then
## user programs at once (DEMO_PROGS); PROG=<static ELF> ARGS="a 'b c'" runs that program instead
run: setup $(if $(filter 1,$(UEFI)),ovmf) boot-tool kernel $(if $(PROG),,user-progs)
	$(BOOT) run $(KERNEL) $(RUN_FLAGS) $(if $(PROG),$(PROG_FLAGS),$(DEMO_FLAGS))

## gdb: boot a debug kernel that waits for GDB on localhost:1234
gdb: PROFILE = dev
gdb: setup boot-tool kernel
	@echo "In another terminal: gdb -ex 'add-symbol-file $(KERNEL) -o 0xffffffff80000000' -ex 'target remote :1234' -ex 'hbreak kernel::init' -ex c"
	$(BOOT) run $(KERNEL) $(RUN_FLAGS) $(PROG_FLAGS) --gdb --timeout 0

## test: every test: host tests of mm/, exec/ and boot/, then the in-QEMU test kernels and the
## differential tests of the user programs (Linux and this kernel); one summary line
test: setup boot-tool user-progs
	$(BOOT) test

## test-long: the host property and fault-injection tests with many more cases (MM_TEST_LONG=1),
## release build
test-long: setup
	MM_TEST_LONG=1 cargo test -p mm --release --lib -- prop inject

## test-loop: the in-QEMU test kernels N times in a row (N=20); stops at the first failure or
## at a warning no test expects (the deliberate segfault/OOM lines of the tests are expected)
N ?= 20
test-loop: setup boot-tool
	@mkdir -p target/test-loop; for i in $$(seq $(N)); do \
	  log=target/test-loop/run-$$i.log; \
	  if ! cargo ktest > $$log 2>&1; then echo "test-loop: run $$i of $(N) FAILED (see $$log)"; exit 1; fi; \
	  bad=$$(grep -E 'WARN|ERROR' $$log | grep -vcE 'segmentation fault at|out of memory at|expected panic'); \
	  if [ "$$bad" != 0 ]; then echo "test-loop: run $$i of $(N) printed $$bad unexpected warnings (see $$log)"; exit 1; fi; \
	  echo "test-loop: run $$i of $(N) ok ($$(grep -c ' ok, 0 failed' $$log) kernels)"; \
	done; echo "test-loop: $(N) of $(N) runs clean"

## soak: the soak test kernel (tests/soak.rs) for DURATION minutes (default 10) on SMP CPUs,
## release build; progress every minute, then one line of totals (not part of `make test`)
soak: setup boot-tool
	SOAK_SECONDS=$$(( $(DURATION) * 60 )) KTEST_SMP=$(SMP) KTEST_TIMEOUT=$$(( $(DURATION) * 60 + 600 )) \
	  cargo test --release -p ktests --target $(TARGET) --test soak

## loom: model-check the lock protocols and the scheduler's handoff protocol (bounded; CI runs it)
loom: setup
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p mm -p sched-core --release --lib loom

## mutants: applies each protocol bug listed in scripts/mutants.py (one at a time, the file
## restored after each) and runs the tests that must catch it; fails if one is missed
## (RUNS=n repeats each run to spot tests that catch a bug only sometimes)
RUNS ?= 1
mutants: setup
	python3 scripts/mutants.py --runs $(RUNS)

## user: the same as user-progs
user: user-progs

## bench-linux: the benchmark's workloads on this machine's Linux -> target/bench/linux.log, then
## the report (THREADS=1,2 WORKLOADS=page_fault1,pft,churn REPS=3)
bench-linux: user
	@! command -v file >/dev/null || file $(FAULT_BENCH) | grep -q 'static' || \
	  { echo "$(FAULT_BENCH) is not a static binary" >&2; exit 1; }
	mkdir -p $(BENCH_DIR)
	$(FAULT_BENCH) $(if $(THREADS),--threads $(THREADS)) --workloads $(WORKLOADS) --reps $(REPS) \
	  > $(BENCH_DIR)/linux.log.part
	mv $(BENCH_DIR)/linux.log.part $(BENCH_DIR)/linux.log
	@cat $(BENCH_DIR)/linux.log
	$(MAKE) --no-print-directory bench-report

## bench-report: report.md and SVG plots in target/bench from the logs there: serial.log (make
## bench), user.log (make bench USER=1), linux.log (make bench-linux), any of them
bench-report: toolchain
	@logs=""; for f in $(BENCH_DIR)/serial.log $(BENCH_DIR)/user.log $(BENCH_DIR)/linux.log; do \
	  if [ -f $$f ]; then logs="$$logs $$f"; fi; done; \
	if [ -z "$$logs" ]; then echo "no logs in $(BENCH_DIR): run make bench, make bench USER=1 or make bench-linux" >&2; exit 1; fi; \
	echo "cargo run -q -p benchreport -- --out $(BENCH_DIR)$$logs"; \
	cargo run -q -p benchreport -- --out $(BENCH_DIR) $$logs

## user-progs: the static user programs of user/ (the differential test programs of
## user/difftest, fault_bench) -> target/user/x86_64-unknown-linux-musl/release
.PHONY: user-progs
user-progs: user-toolchain
	cd user && CARGO_TARGET_DIR=$(CURDIR)/target/user cargo build --release
	@! command -v file >/dev/null || for f in $(USER_PROGS); do \
	  file $$f | grep -q 'static' || { echo "$$f is not a static binary" >&2; exit 1; }; done

# The stable toolchain with the musl target that user/rust-toolchain.toml names.
user-toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required: https://rustup.rs" >&2; exit 1; }
	@cd user && { rustup toolchain install >/dev/null 2>&1 || rustup toolchain install; }

## bench: the fault-scaling benchmark in QEMU; serial log and report in target/bench/.
##   SMP=2 (scaling figures on this host's cores; SMP=8 THREADS=1,2,4,8 works too)
##   THREADS=1,2 WORKLOADS=page_fault1,pft,churn POLICIES=vma,mmap,floor REPS=3 KVM=0
##   (empty: the kernel's defaults; also BENCH_WINDOW_MS, BENCH_WARMUP_MS, BENCH_REGION_MIB,
##   BENCH_PIECE_MIB, BENCH_PROFILE=0|1, BENCH_FORK=0|1 (the fork-cost table), BENCH_TIMEOUT seconds)
##   USER=1: the same workloads as a user program (fault_bench, as make bench-linux runs it) on
##   the plain kernel -> target/bench/user.log (policy=user), then the report with every log
BENCH_SMP     := $(if $(filter command line environment,$(origin SMP)),$(SMP),2)
BENCH_TIMEOUT ?= 3600
BENCH_KERNEL  := target/$(TARGET)/release/bench
ifeq ($(USER),1)
bench: bench-user
else
bench: setup boot-tool bench-kernel
	@mkdir -p $(BENCH_DIR)
	@echo "bench: booting $(BENCH_KERNEL) on $(BENCH_SMP) CPUs; serial log: $(BENCH_DIR)/serial.log"
	@( $(BOOT) run $(BENCH_KERNEL) --smp $(BENCH_SMP) --mem $(MEM) --timeout $(BENCH_TIMEOUT) \
	     $(if $(filter 1,$(KVM)),--kvm); echo $$? > $(BENCH_DIR)/status ) \
	   | tee $(BENCH_DIR)/serial.log | { grep --line-buffered -E '(bench:|^BENCH|ERROR|panic)' || true; }
	@status=$$(cat $(BENCH_DIR)/status); rm -f $(BENCH_DIR)/status; \
	 if [ "$$status" != 0 ]; then echo "bench: the benchmark kernel failed (see $(BENCH_DIR)/serial.log)" >&2; exit 1; fi
	@$(MAKE) --no-print-directory bench-report
endif

# fault_bench's options from the kernel benchmark's (its defaults where those are empty): the
# pft/churn region is the kernel's per-thread piece times the largest thread count (the CPU
# count when THREADS is empty).
BENCH_USER_MAX_T = $$(echo $(or $(THREADS),$(BENCH_SMP)) | tr , '\n' | sort -n | tail -n 1)
BENCH_USER_ARGS = $(if $(THREADS),--threads $(THREADS)) --workloads $(WORKLOADS) --reps $(REPS) \
  --warmup-ms $(or $(BENCH_WARMUP_MS),200) --window-ms $(or $(BENCH_WINDOW_MS),1000) \
  --region-mib $(or $(BENCH_REGION_MIB),32) \
  --pft-mib $$(( $(or $(BENCH_PIECE_MIB),16) * $(BENCH_USER_MAX_T) ))
USER_KERNEL := target/$(TARGET)/release/kernel

## bench-user: make bench USER=1
bench-user: setup boot-tool user
	KERNEL_LOG=$(LOG) cargo build -p kernel --target $(TARGET) --release --bin kernel
	@mkdir -p $(BENCH_DIR)
	@args="$(BENCH_USER_ARGS)"; \
	 echo "bench: booting $(USER_KERNEL) on $(BENCH_SMP) CPUs with fault_bench $$args; serial log: $(BENCH_DIR)/user-serial.log"; \
	 ( $(BOOT) run $(USER_KERNEL) --smp $(BENCH_SMP) --mem $(MEM) --timeout $(BENCH_TIMEOUT) \
	     $(if $(filter 1,$(KVM)),--kvm) --prog $(FAULT_BENCH) --args "$$args"; echo $$? > $(BENCH_DIR)/status ) \
	   | tee $(BENCH_DIR)/user-serial.log | { grep --line-buffered -E '(^user [0-9]+ |ERROR|panic)' || true; }
	@status=$$(cat $(BENCH_DIR)/status); rm -f $(BENCH_DIR)/status; \
	 if [ "$$status" != 0 ]; then echo "bench: fault_bench failed on the kernel (see $(BENCH_DIR)/user-serial.log)" >&2; exit 1; fi
	@# The program's standard output: its BENCH lines.
	sed -n 's/^user [0-9][0-9]* out| //p' $(BENCH_DIR)/user-serial.log > $(BENCH_DIR)/user.log
	@$(MAKE) --no-print-directory bench-report

# The options reach the kernel at build time (option_env!); cargo rebuilds when they change.
bench-kernel:
	BENCH_THREADS="$(THREADS)" BENCH_WORKLOADS="$(WORKLOADS)" BENCH_POLICIES="$(POLICIES)" \
	BENCH_REPS="$(REPS)" BENCH_ACCEL="$(if $(filter 1,$(KVM)),KVM,TCG)" BENCH_HOST_CORES="$$(nproc)" \
	KERNEL_LOG=$(LOG) cargo build -p kernel --target $(TARGET) --release --features bench --bin bench

## check: rustfmt (every crate) and clippy with warnings as errors (host crates, mm with its
## optional modules, the kernel, the bench kernel; mm's missing docs are warnings too); CI runs
## it before the tests
check: setup
	cargo fmt --all --check
	cargo clippy -p mm -p sched-core -p exec -p boot -p benchreport --all-targets -- -D warnings
	cargo clippy -p mm --features emulated,fault-profile -- -D warnings
	cargo clippy -p kernel -p ktests --target $(TARGET) --all-targets -- -D warnings
	cargo clippy -p kernel --target $(TARGET) --features bench --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps -p mm -p exec -p sched-core
	RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps -p kernel --target $(TARGET)

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
