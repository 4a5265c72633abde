# mmkernel: `make run` boots it in QEMU, `make test` runs every test. Both install what is
# missing first (the pinned toolchain, QEMU).

SMP     ?= 8
MEM     ?= 1G
UEFI    ?= 0
KVM     ?= 0
TIMEOUT ?= 300
PROFILE ?= release
LOG     ?= info

TARGET  := x86_64-unknown-none
BOOT    := target/release/boot
KERNEL   = target/$(TARGET)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))/kernel
SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)

RUN_FLAGS := --smp $(SMP) --mem $(MEM) --timeout $(TIMEOUT) \
             $(if $(filter 1,$(UEFI)),--uefi) $(if $(filter 1,$(KVM)),--kvm)

.PHONY: all run gdb test test-long host-test kernel-test loom check setup toolchain qemu ovmf boot-tool kernel clean

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

## test-long: the host property tests with many more cases (MM_TEST_LONG=1), release build
test-long: setup
	MM_TEST_LONG=1 cargo test -p mm --release --lib prop

## loom: model-check the lock protocols (bounded; CI runs it)
loom: setup
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p mm --release --lib loom

## check: clippy over the host crates and the kernel
check: setup
	cargo clippy -p mm -p boot --all-targets
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
