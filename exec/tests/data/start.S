    .globl _start
    .text
_start:
    lea msg(%rip), %rsi
    mov $1, %edi
    mov $len, %edx
    mov $1, %eax
    syscall
    mov counter(%rip), %edi
    mov $231, %eax
    syscall
    .section .rodata
msg: .ascii "hello from a fixture\n"
    .set len, . - msg
    .data
counter: .long 0
    .bss
buf: .space 8192
