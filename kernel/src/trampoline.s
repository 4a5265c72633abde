# Real mode -> protected mode -> long mode, for application processors started by SIPI.
# Copied to TRAMPOLINE (a page below 1 MiB, identity-mapped while CPUs start) and run there, so
# every address is computed relative to that base. The bootstrap CPU fills the data words at
# the end (page table, CR4, EFER, stack, entry point, argument) before each SIPI.

.set TRAMPOLINE, 0x8000

.section .text.ap_trampoline, "ax"
.global ap_trampoline_start
.global ap_trampoline_end
.global ap_trampoline_cr3
.global ap_trampoline_cr4
.global ap_trampoline_efer
.global ap_trampoline_stack
.global ap_trampoline_entry
.global ap_trampoline_arg

.code16
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    lgdtl (ap_trampoline_gdt_ptr - ap_trampoline_start + TRAMPOLINE)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(ap_trampoline_prot32 - ap_trampoline_start + TRAMPOLINE)

.code32
ap_trampoline_prot32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl (ap_trampoline_cr4 - ap_trampoline_start + TRAMPOLINE), %eax
    movl %eax, %cr4
    movl (ap_trampoline_cr3 - ap_trampoline_start + TRAMPOLINE), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    movl (ap_trampoline_efer - ap_trampoline_start + TRAMPOLINE), %eax
    xorl %edx, %edx
    wrmsr
    # After INIT, CR0 has CD and NW set (caches off): clear them, then turn on paging,
    # write protection and protected mode.
    movl %cr0, %eax
    andl $0x9fffffff, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl $0x18, $(ap_trampoline_long64 - ap_trampoline_start + TRAMPOLINE)

.code64
ap_trampoline_long64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (ap_trampoline_stack - ap_trampoline_start + TRAMPOLINE), %rsp
    movq (ap_trampoline_arg - ap_trampoline_start + TRAMPOLINE), %rdi
    movq (ap_trampoline_entry - ap_trampoline_start + TRAMPOLINE), %rax
    callq *%rax
    ud2

.balign 8
ap_trampoline_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
ap_trampoline_gdt_ptr:
    .word ap_trampoline_gdt_ptr - ap_trampoline_gdt - 1
    .long ap_trampoline_gdt - ap_trampoline_start + TRAMPOLINE

.balign 8
ap_trampoline_cr3:   .quad 0
ap_trampoline_cr4:   .quad 0
ap_trampoline_efer:  .quad 0
ap_trampoline_stack: .quad 0
ap_trampoline_entry: .quad 0
ap_trampoline_arg:   .quad 0
ap_trampoline_end:
