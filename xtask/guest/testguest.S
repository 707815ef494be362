/*
 * The purpose-built test guest (multiboot, so `qemu -kernel` boots it).
 *
 * Deterministically:
 *  - leaves a known pattern at physical 0x300000 (one page: "VMI-TESTGUEST-PATTERN" then
 *    bytes i & 0xff);
 *  - builds its own 4-level paging: identity map of 0-8 MiB with 2 MiB pages, and a
 *    higher-half alias 0xffff800000000000 + x -> x of 0-2 MiB with 4 KiB pages; two
 *    PML4s (A and B) with the same mappings so that CR3 reloads change CR3;
 *  - loops forever through code sites where tests place breakpoints (`site_*`), a write
 *    to a watched variable, a CR3 reload, an MSR write (IA32_KERNEL_GS_BASE), CPUID,
 *    LGDT/LIDT;
 *  - reports on the serial port (COM1) in the same `VMI-TEST` marker format as the Linux
 *    guest's /init: addresses as `VMI-TEST kallsyms <name>=<hex>`, then `VMI-TEST ready`,
 *    then `VMI-TEST tick <n>` every 2^16 iterations.
 *
 * The loop runs with the higher-half addresses, so breakpoint sites and the watched
 * variable have virtual addresses different from their physical ones.
 */
    .set COM1, 0x3f8
    .set HIGH, 0xffff800000000000
    .set KERNEL_GS_BASE, 0xc0000102

    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002
    .long 0
    .long -(0x1BADB002)

    .section .text
    .code32
    .globl _start
_start:
    cli
    movl $stack_top, %esp
    /* PML4A[0] -> PDPT_LO -> PD_LO: four 2 MiB identity pages. */
    movl $pdpt_lo + 3, pml4_a
    movl $pd_lo + 3, pdpt_lo
    movl $0x000083, pd_lo
    movl $0x200083, pd_lo + 8
    movl $0x400083, pd_lo + 16
    movl $0x600083, pd_lo + 24
    /* PML4A[256] -> PDPT_HI -> PD_HI -> PT_HI: 512 4 KiB pages of 0-2 MiB. */
    movl $pdpt_hi + 3, pml4_a + 256 * 8
    movl $pd_hi + 3, pdpt_hi
    movl $pt_hi + 3, pd_hi
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    orl $3, %eax
    movl %eax, pt_hi(, %ecx, 8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b
    /* PML4B = PML4A. */
    movl $pdpt_lo + 3, pml4_b
    movl $pdpt_hi + 3, pml4_b + 256 * 8
    /* The pattern page. */
    movl $pattern, %edi
    xorl %ecx, %ecx
2:  movb %cl, (%edi, %ecx)
    incl %ecx
    cmpl $4096, %ecx
    jb 2b
    movl $pattern_magic, %esi
    movl $pattern, %edi
    movl $pattern_magic_len, %ecx
    rep movsb
    /* Long mode. */
    movl $pml4_a, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                 /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x901, %eax                /* LME | NXE | SCE */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* PG | PE */
    movl %eax, %cr0
    lgdt gdtr
    ljmp $0x08, $long_entry

    .code64
long_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movabsq $HIGH, %rax
    addq %rax, %rsp
    /* Continue in the higher half. */
    movabsq $HIGH + high_entry, %rax
    jmp *%rax
high_entry:
    call serial_init
    leaq msg_banner(%rip), %rsi
    call puts
    /* Publish addresses (higher-half virtual) and the pattern's physical address. */
    leaq name_site1(%rip), %rsi
    leaq site_1(%rip), %rax
    call put_sym
    leaq name_site2(%rip), %rsi
    leaq site_2(%rip), %rax
    call put_sym
    leaq name_site3(%rip), %rsi
    leaq site_3(%rip), %rax
    call put_sym
    leaq name_watched(%rip), %rsi
    leaq watched(%rip), %rax
    call put_sym
    leaq name_counter(%rip), %rsi
    leaq counter(%rip), %rax
    call put_sym
    leaq name_pml4a(%rip), %rsi
    movq $pml4_a, %rax
    call put_sym
    leaq name_pml4b(%rip), %rsi
    movq $pml4_b, %rax
    call put_sym
    leaq name_pattern(%rip), %rsi
    movq $pattern, %rax
    call put_sym
    /* The iteration counter, set before `ready`: a tool that pauses the guest as soon
     * as it reads `ready` and writes r12 must not see the guest zero it afterwards
     * (puts and putc leave r12 alone). */
    xorq %r12, %r12
    leaq msg_ready(%rip), %rsi
    call puts
main_loop:
    .globl site_1
site_1:
    nop
    incq %r12
    movq %r12, counter(%rip)
    .globl site_2
site_2:
    /* The watched variable changes every iteration. */
    movq %r12, %rax
    shlq $1, %rax
    movq %rax, watched(%rip)
    /* CR3 reload: alternate between the two PML4s. */
    movq %cr3, %rax
    cmpq $pml4_a, %rax
    movq $pml4_a, %rax
    movq $pml4_b, %rbx
    cmoveq %rbx, %rax
    movq %rax, %cr3
    /* MSR write. */
    movl $KERNEL_GS_BASE, %ecx
    movl %r12d, %eax
    xorl %edx, %edx
    wrmsr
    /* CPUID. */
    movl $0, %eax
    xorl %ecx, %ecx
    cpuid
    /* LGDT / LIDT (same values). */
    movabsq $HIGH + gdtr64, %rax
    lgdt (%rax)
    movabsq $HIGH + idtr64, %rax
    lidt (%rax)
    .globl site_3
site_3:
    testl $0xffff, %r12d
    jnz main_loop
    leaq msg_tick(%rip), %rsi
    call puts
    movq %r12, %rax
    shrq $16, %rax
    call puthex
    movb $'\n', %al
    call putc
    jmp main_loop

/* COM1 at 115200 8N1, polled. */
serial_init:
    movw $COM1 + 1, %dx
    xorb %al, %al
    outb %al, %dx                   /* no interrupts */
    movw $COM1 + 3, %dx
    movb $0x80, %al
    outb %al, %dx                   /* DLAB */
    movw $COM1, %dx
    movb $1, %al
    outb %al, %dx
    movw $COM1 + 1, %dx
    xorb %al, %al
    outb %al, %dx
    movw $COM1 + 3, %dx
    movb $3, %al
    outb %al, %dx                   /* 8N1 */
    ret

/* putc(al) */
putc:
    pushq %rdx
    pushq %rax
    movw $COM1 + 5, %dx
1:  inb %dx, %al
    testb $0x20, %al
    jz 1b
    popq %rax
    movw $COM1, %dx
    outb %al, %dx
    popq %rdx
    ret

/* puts(rsi: NUL-terminated) */
puts:
    lodsb
    testb %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret

/* puthex(rax): 16 hex digits */
puthex:
    pushq %rcx
    pushq %rbx
    movq %rax, %rbx
    movl $16, %ecx
1:  rolq $4, %rbx
    movb %bl, %al
    andb $0xf, %al
    addb $'0', %al
    cmpb $'9', %al
    jbe 2f
    addb $('a' - '9' - 1), %al
2:  call putc
    loop 1b
    popq %rbx
    popq %rcx
    ret

/* put_sym(rsi: name, rax: value): "VMI-TEST kallsyms <name>=<hex>\n" */
put_sym:
    pushq %rax
    pushq %rsi
    leaq msg_sym(%rip), %rsi
    call puts
    popq %rsi
    call puts
    movb $'=', %al
    call putc
    popq %rax
    call puthex
    movb $'\n', %al
    call putc
    ret

    .section .data
    .align 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff        /* 0x10: data */
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .long gdt
    .align 16
gdtr64:
    .word gdt_end - gdt - 1
    .quad HIGH + gdt
    .align 16
idtr64:
    .word 0xfff
    .quad HIGH + 0x380000
    .align 8
    .globl watched
watched: .quad 0
    .globl counter
counter: .quad 0
pattern_magic: .ascii "VMI-TESTGUEST-PATTERN"
    .set pattern_magic_len, . - pattern_magic
msg_banner: .asciz "VMI-TEST banner=vmi test guest (multiboot, 4-level paging)\n"
msg_sym: .asciz "VMI-TEST kallsyms "
msg_ready: .asciz "VMI-TEST ready\n"
msg_tick: .asciz "VMI-TEST tick "
name_site1: .asciz "site_1"
name_site2: .asciz "site_2"
name_site3: .asciz "site_3"
name_watched: .asciz "watched"
name_counter: .asciz "counter"
name_pml4a: .asciz "pml4_a"
name_pml4b: .asciz "pml4_b"
name_pattern: .asciz "pattern_phys"

    .section .bss
    .align 4096
pml4_a: .skip 4096
pml4_b: .skip 4096
pdpt_lo: .skip 4096
pd_lo: .skip 4096
pdpt_hi: .skip 4096
pd_hi: .skip 4096
pt_hi: .skip 4096
stack: .skip 16384
stack_top:

    .section .pattern, "aw"
pattern: .skip 4096
