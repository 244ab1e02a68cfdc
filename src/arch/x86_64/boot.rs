//! The PVH entry point: QEMU (through the firmware's pvh option ROM) jumps to
//! `pvh_start` in 32-bit protected mode, paging off, EBX = `hvm_start_info`.
//!
//! The same image also boots as the firmware itself (`-bios`, see
//! `cargo xtask build`): `pvagent_rom_entry`, reached from the reset vector
//! in real mode, enters protected mode, copies the image from ROM to where
//! it is linked (1 MiB) and joins `pvh_start` with EBX = 1 ("no start info,
//! booted as firmware").
//!
//! The stub zeroes `.bss`, identity-maps 0–4 GiB with 2 MiB pages (PCI BARs
//! sit just below 4 GiB) except the stack's guard page (its 2 MiB page is
//! split into 4 KiB pages, the guard left unmapped), enables long mode,
//! loads the agent's GDT (code, data and a TSS whose IST 1 is the double
//! fault's own stack) and calls `pvagent_main(start_info)` on the agent's
//! own stack. The CPU's tables are set up here, in a few straight-line
//! instructions, rather than in Rust at run time: under TCG the first run
//! of any code costs its translation, and this is the boot's critical path.

use core::arch::global_asm;

// The ELF note that makes QEMU boot the image through PVH:
// XEN_ELFNOTE_PHYS32_ENTRY (18) whose descriptor is the 32-bit entry address.
global_asm!(
    r#"
    .pushsection .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4
    .popsection
    "#
);

global_asm!(
    r#"
    /* The agent's own tables, built the same way from 32-bit protected
       mode (PVH, firmware, disk) and from 64-bit long mode (UEFI): the
       instructions below mean the same in both (zero-extending moves,
       32-bit addresses). Uses EAX, EBX, ECX, EDX, EDI. */
    .macro PVAGENT_TABLES
    /* Zero .bss (the page tables live there), four bytes at a time:
       each iteration of a string instruction costs TCG the same. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT; PDPT[0..4] -> PD[0..4]; 2048 PD entries of 2 MiB. */
    movl $(boot_pdpt + 0x3), boot_pml4
    mov $boot_pdpt, %edi
    mov $(boot_pd + 0x3), %eax
    mov $4, %ecx
1:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 1b
    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
2:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b

    /* The stack's guard page: the 2 MiB page holding it becomes 512
       identity-mapped 4 KiB pages, minus the guard. Running into it is a
       stack overflow, reported through the double-fault handler. */
    mov $__stack_guard, %edx
    mov %edx, %ebx
    and $0xffe00000, %ebx
    mov $boot_guard_pt, %edi
    lea 0x3(%ebx), %eax
    mov $512, %ecx
3:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 3b
    mov %edx, %edi
    sub %ebx, %edi
    shr $9, %edi
    movl $0, boot_guard_pt(%edi)
    shr $21, %edx
    movl $(boot_guard_pt + 0x3), boot_pd(,%edx,8)

    /* The TSS descriptor (64-bit available TSS, limit 103) for boot_tss. */
    mov $boot_tss, %eax
    mov %eax, %edx
    shl $16, %edx
    or $0x67, %edx
    mov %edx, boot_gdt_tss
    mov %eax, %edx
    shr $16, %edx
    mov %edx, %ecx
    and $0xff, %ecx
    and $0xff00, %edx
    shl $16, %edx
    or %ecx, %edx
    or $0x8900, %edx
    mov %edx, boot_gdt_tss + 4

    .endm

    .pushsection .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %esi

    PVAGENT_TABLES

    /* PAE, page tables, EFER.LME, then paging: long mode. */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $pvh_long_mode

    .code64
pvh_long_mode:
    xor %r15d, %r15d            /* no SMBIOS entry point to pass on */
    /* Both entries (PVH/firmware/disk above, UEFI below) end here, in
       long mode on the agent's tables and GDT, ESI = start_info, R15 =
       the SMBIOS entry point's address. */
pvagent_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $0x18, %ax
    ltr %ax
    mov $__stack_top, %rsp
    mov %esi, %edi
    mov %r15, %rsi
    call pvagent_main
3:  hlt
    jmp 3b

    /* UEFI boot: the loader (uefi-boot/) copied the image to where it is
       linked, left boot services, and jumps here in long mode, interrupts
       off, on its own stack, with RDI = the SMBIOS entry point's address
       (0: none). The firmware's identity map covers this code, the
       agent's too: switching CR3 is seamless. */
    .code64
    .global pvagent_entry64
pvagent_entry64:
    cli
    cld
    mov %rdi, %r15
    PVAGENT_TABLES
    mov $boot_pml4, %eax
    mov %rax, %cr3
    lgdt boot_gdt_ptr64
    mov $3, %esi                /* start_info 3: booted by UEFI */
    push $0x08
    lea pvagent_long_mode(%rip), %rax
    push %rax
    lretq
    .popsection

    /* Firmware boot: the reset vector jumps here in real mode. Disk boot:
       the boot sector (below) loaded the ROM's 64 KiB at 0x10000 and
       jumps here with CS = 0x1000. Position-independent: it finds itself
       with call/pop and CS * 16 (at the reset vector CS is 0xf000, whose
       0xf0000 aliases the ROM's last 64 KiB). */
    .pushsection .text.boot.rom, "ax"
    .code16
    .global pvagent_rom_entry
pvagent_rom_entry:
    cli
    cld
    inb $0x92, %al              /* A20 on (fast A20 gate), no reset */
    orb $0x02, %al
    andb $0xfe, %al
    outb %al, $0x92
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7000, %sp
    movw %cs, %dx
    movzwl %dx, %edx
    shll $4, %edx               /* the CS segment's base */
    calll pvagent_rom_here
pvagent_rom_here:
    popl %ebx                   /* its offset in the CS segment */
    movzwl %bx, %ebx
    addl %edx, %ebx             /* its linear address */
    movl $1, %ebp               /* EBX for pvh_start: 1 firmware, 2 disk */
    cmpl $0xf0000, %edx
    je 1f
    movl $2, %ebp
1:
    leal (pvagent_rom_gdt - pvagent_rom_here)(%ebx), %eax
    pushl %eax
    pushw $(pvagent_rom_gdt_end - pvagent_rom_gdt - 1)
    movw %sp, %si
    lgdtl (%si)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    leal (pvagent_rom_32 - pvagent_rom_here)(%ebx), %eax
    pushl $0x08
    pushl %eax
    lretl

    .code32
pvagent_rom_32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7000, %esp
    /* The image's ROM copy starts where it is linked plus the offset
       between this code's linear and linked addresses. */
    mov %ebx, %esi
    sub $pvagent_rom_here, %esi
    add $__image_start, %esi
    mov $__image_start, %edi
    mov $__file_end, %ecx
    sub $__image_start, %ecx
    shr $2, %ecx
    rep movsl
    mov %ebp, %ebx
    mov $pvh_start, %eax
    jmp *%eax

    .balign 8
pvagent_rom_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 32-bit flat code */
    .quad 0x00cf92000000ffff    /* flat data */
pvagent_rom_gdt_end:
    .code64
    .popsection

    /* The disk's boot sector (a legacy BIOS boots it at 0x7c00, DL = the
       drive): reads the ROM's 64 KiB (the disk's sectors `lba` on, 128 of
       them, 32 at a time) to 0x10000 with INT 13h's extended read, and
       jumps to the ROM entry at 0x1000:`entry`. Not part of the image: a
       section of its own that `cargo xtask image` copies to sector 0,
       filling `lba` and `entry` (at fixed offsets, see the xtask) and the
       partition table. On a read error it writes a line to COM1 and halts. */
    .pushsection .pvagent_mbr, "", @progbits
    .code16
pvagent_mbr:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    sti
    movw $4, %cx                /* 4 reads of 32 sectors: 64 KiB */
2:  movw $(0x7c00 + pvagent_mbr_dap - pvagent_mbr), %si
    movb $0x42, %ah
    int $0x13
    jc 3f
    addw $0x400, (0x7c00 + pvagent_mbr_dap - pvagent_mbr + 6)   /* segment += 16 KiB */
    addl $32, (0x7c00 + pvagent_mbr_dap - pvagent_mbr + 8)      /* lba += 32 */
    loop 2b
    cli
    ljmp *(0x7c00 + pvagent_mbr_entry - pvagent_mbr)
3:  movw $(0x7c00 + pvagent_mbr_error - pvagent_mbr), %si
    movw $0x3f8, %dx
4:  lodsb
    testb %al, %al
    jz 5f
    outb %al, %dx
    jmp 4b
5:  cli
    hlt
    jmp 5b
pvagent_mbr_error:
    .asciz "pvagent: error: the boot sector could not read the agent from the disk (INT 13h)\r\n"
    .org 0x180
pvagent_mbr_dap:
    .byte 0x10, 0               /* size, reserved */
    .word 32                    /* sectors */
    .word 0, 0x1000             /* buffer 0x1000:0000 */
    .quad 0                     /* lba: filled by the xtask */
pvagent_mbr_entry:
    .word 0, 0x1000             /* entry offset (filled by the xtask), segment */
    .org 0x1b8
    .code64
    .popsection

    /* Written at boot (the TSS descriptor) and by the CPU (its busy bit). */
    .pushsection .data.boot, "aw"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_tss:
    .quad 0, 0                  /* 0x18: the TSS (16 bytes in long mode) */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
boot_gdt_ptr64:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    /* The 64-bit TSS: only IST 1 is used (the double fault's stack, see
       interrupts.rs); no I/O bitmap (its offset is the TSS's size). */
    .balign 16
boot_tss:
    .long 0
    .quad 0, 0, 0               /* RSP0..2 */
    .quad 0
    .quad pvagent_double_fault_stack_top    /* IST1 */
    .quad 0, 0, 0, 0, 0, 0      /* IST2..7 */
    .quad 0
    .word 0
    .word 104
    .popsection

    .pushsection .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
    .global boot_pd
boot_pd:
    .skip 4 * 4096
    .popsection

    /* What needs no initial value is not zeroed, so it sits in its own
       section after .bss: the stacks and the guard's page table (written
       whole above). */
    .pushsection .stack, "aw", @nobits
    .balign 4096
boot_guard_pt:
    .skip 4096
    /* Unmapped (above): running into it is a stack overflow, reported
       through the double-fault handler. */
    .global __stack_guard
__stack_guard:
    .skip 4096
    .skip 32 * 1024
    .global __stack_top
__stack_top:
    .skip 8192
pvagent_double_fault_stack_top:
    .popsection
    "#,
    options(att_syntax)
);
