/* Minimal multiboot kernel: enters long mode, loads recognisable register values, halts. */
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002
    .long 0x00000000
    .long -(0x1BADB002)

    .section .text
    .code32
    .globl _start
_start:
    cli
    movl $0xdeadbeef, %eax
    movl $0x0badf00d, %esi
    movl $0x8000, %esp
pm_halt:
    hlt
    jmp pm_halt
    /* PML4[0] -> PDPT, PDPT[0] -> PD, PD[0..3] = 2 MiB identity pages */
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    movl $pd, %eax
    orl $3, %eax
    movl %eax, pdpt
    movl $0x83, pd
    movl $0x200083, pd+8
    movl $0x400083, pd+16
    movl $0x600083, pd+24
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax          /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x901, %eax         /* LME | NXE | SCE */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax    /* PG | PE */
    movl %eax, %cr0
    lgdt gdtr
    lidt idtr
    ljmp $0x08, $long_entry

    .code64
long_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movw $0x18, %ax
    ltr %ax
    /* FS base via MSR */
    movl $0xC0000100, %ecx
    movl $0x12345000, %eax
    movl $0x00007fff, %edx
    wrmsr
    movq $5, %rax
    movq %rax, %cr8
    movabsq $0xffff888000001000, %rax
    movq %rax, %dr0
    movq $0x00000000000f0401, %rax
    movq %rax, %dr7
    movabsq $0x1111111111111111, %rax
    movabsq $0x2222222222222222, %rbx
    movabsq $0x3333333333333333, %rcx
    movabsq $0x4444444444444444, %rdx
    movabsq $0x5555555555555555, %rsi
    movabsq $0x6666666666666666, %rdi
    movabsq $0x7777777777777777, %rbp
    movq $0x90000, %rsp
    movabsq $0x8888888888888888, %r8
    movabsq $0x9999999999999999, %r9
    movabsq $0xaaaaaaaaaaaaaaaa, %r10
    movabsq $0xbbbbbbbbbbbbbbbb, %r11
    movabsq $0xcccccccccccccccc, %r12
    movabsq $0xdddddddddddddddd, %r13
    movabsq $0xeeeeeeeeeeeeeeee, %r14
    movabsq $0xffffffff80001234, %r15
halt_loop:
    hlt
    jmp halt_loop

    .section .data
    .align 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff     /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff     /* 0x10: data */
    .quad 0x0000892000000067     /* 0x18: 64-bit TSS, base 0x200000, limit 0x67 */
    .quad 0
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .long gdt
idtr:
    .word 0xfff
    .long 0x300000

    .section .bss
    .align 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4096
