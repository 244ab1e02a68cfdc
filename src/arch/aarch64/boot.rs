//! The image's first bytes (the arm64 Linux Image header), the entry, and
//! the exception vectors.
//!
//! QEMU loads an Image at RAM base + `text_offset` and enters it at EL1
//! (EL2 with `virtualization=on`, which the entry leaves for EL1) with the
//! MMU and caches off and x0 = the device tree's address. The entry turns
//! the MMU on with an identity map (RAM Normal, the rest Device), zeroes
//! `.bss` (QEMU reloads the file's bytes on a reset, not the rest), lets
//! EL1 use the FP/SIMD registers (the compiler may), and calls
//! `pvagent_main(dtb, by_uefi)` on the agent's stack. Every exception goes to
//! `pvagent_exception(kind)`, which returns only for the one it handles
//! (the semihosting probe); all registers it may clobber are saved.

use core::arch::global_asm;

global_asm!(
    r#"
    /* The image's first 2 KiB are also the exception vector table
       (VBAR_EL1 = _start): 16 slots of 0x80 bytes. The agent runs on
       SP_EL1 and has no lower EL, so only slots 4-7 (current EL, SPx) can
       be taken; slots 0-3 (current EL, SP0) hold the Image header and the
       entry instead. Every slot that can be taken saves x0/x1, puts its
       number in x0 and joins slot 4's common path. */
    .section .text.head, "ax"
    .globl _start
    .globl pvagent_vectors
_start:
pvagent_vectors:
    b       pvagent_entry           /* code0 */
    .long   0                       /* code1 */
    .quad   0x80000                 /* text_offset */
    .quad   __image_size            /* image_size: file and .bss, .stack, .noinit */
    .quad   0x2                     /* flags: little-endian, 4 KiB pages */
    .quad   0, 0, 0                 /* res2..res4 */
    .ascii  "ARM\x64"               /* magic */
    .long   0                       /* res5: no PE header */

pvagent_entry:
    mov     x20, #0                 /* booted as an Image (-kernel) */
pvagent_entry_common:
    mov     x19, x0                 /* the device tree, kept across the set-up */
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #2
    b.ne    1f
    /* EL2: run EL1 as AArch64 and drop to it, interrupts masked. */
    mov     x1, #(1 << 31)
    msr     hcr_el2, x1
    mov     x1, #0x3c5              /* EL1h, D A I F masked */
    msr     spsr_el2, x1
    adr     x1, 1f
    msr     elr_el2, x1
    eret
1:  msr     daifset, #0xf
    ldr     x1, =__stack_top
    mov     sp, x1
    /* FP/SIMD at EL1 and EL0 (CPACR_EL1.FPEN = 0b11). */
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    adr     x1, pvagent_vectors
    msr     vbar_el1, x1
    /* The MMU: an identity map of 1 GiB blocks (39-bit addresses, one
       level-1 table): 0-1 GiB (flash, the devices, the PCI 32-bit window)
       and 256-512 GiB (the high ECAM) are Device memory, 1-256 GiB (RAM)
       Normal write-back memory. With the MMU off every access is to
       Device memory, which QEMU's TCG checks on a slow path: the agent
       ran several times slower. */
    ldr     x1, =pvagent_page_table
    mov     x2, #0
5:  lsl     x3, x2, #30
    cmp     x2, #1
    b.lo    6f
    cmp     x2, #256
    b.hs    6f
    mov     x4, #0x705              /* block, AttrIndx 1 (Normal), inner shareable, AF */
    b       7f
6:  mov     x4, #0x401              /* block, AttrIndx 0 (Device), AF */
    orr     x4, x4, #(3 << 53)      /* never executed: PXN, UXN */
7:  orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
    add     x2, x2, #1
    cmp     x2, #512
    b.lo    5b
    mov     x2, #0xff00             /* MAIR: attr0 Device-nGnRnE, attr1 Normal WB */
    msr     mair_el1, x2
    /* TCR: T0SZ 25, walks cached (WB) and inner shareable, 4 KiB granule,
       no TTBR1 walks (EPD1), 40-bit physical addresses. */
    ldr     x2, =(25 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23 | 2 << 32)
    msr     tcr_el1, x2
    msr     ttbr0_el1, x1
    dsb     sy
    isb
    tlbi    vmalle1
    dsb     sy
    isb
    mrs     x2, sctlr_el1
    orr     x2, x2, #1              /* M: the MMU */
    orr     x2, x2, #(1 << 2)       /* C: data cache */
    orr     x2, x2, #(1 << 12)      /* I: instruction cache */
    msr     sctlr_el1, x2
    isb
    /* Zero .bss, 16 bytes at a time (both ends are 16-aligned). */
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
2:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:  mov     x0, x19
    mov     x1, x20
    bl      pvagent_main
4:  wfi
    b       4b
    .ltorg

    /* UEFI boot: the loader (uefi-boot/) copied the image where it is
       linked, cleaned it to the point of coherency, left boot services
       and jumps here with x0 = the device tree, interrupts masked, at EL1
       or EL2, with the firmware's MMU and caches on. Off with them: the
       entry above sets up the agent's own identity map. */
    .pushsection .text.pvagent_uefi, "ax"
    .globl pvagent_entry_uefi
pvagent_entry_uefi:
    .macro  PVAGENT_MMU_OFF sctlr
    mrs     x1, \sctlr
    bic     x1, x1, #1              /* M */
    bic     x1, x1, #(1 << 2)       /* C */
    bic     x1, x1, #(1 << 12)      /* I */
    msr     \sctlr, x1
    isb
    .endm
    mov     x20, #1                 /* booted by UEFI */
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #2
    b.eq    8f
    PVAGENT_MMU_OFF sctlr_el1
    b       pvagent_entry_common
8:  PVAGENT_MMU_OFF sctlr_el2
    b       pvagent_entry_common
    .popsection

    /* Slot 4: a synchronous exception at EL1; the common path. */
    .org    0x200
    sub     sp, sp, #0xb0
    stp     x0, x1, [sp]
    mov     x0, #4
pvagent_exception_entry:
    stp     x2, x3, [sp, #0x10]
    stp     x4, x5, [sp, #0x20]
    stp     x6, x7, [sp, #0x30]
    stp     x8, x9, [sp, #0x40]
    stp     x10, x11, [sp, #0x50]
    stp     x12, x13, [sp, #0x60]
    stp     x14, x15, [sp, #0x70]
    stp     x16, x17, [sp, #0x80]
    stp     x18, x29, [sp, #0x90]
    str     x30, [sp, #0xa0]
    bl      pvagent_exception
    b       pvagent_exception_return

    /* Slots 5-15: IRQ, FIQ, SError at EL1, and the lower-EL ones (never
       taken: there is no EL0). */
    .irp slot, 5,6,7,8,9,10,11,12,13,14,15
    .org    \slot * 0x80
    sub     sp, sp, #0xb0
    stp     x0, x1, [sp]
    mov     x0, #\slot
    b       pvagent_exception_entry
    .endr

pvagent_exception_return:
    ldp     x2, x3, [sp, #0x10]
    ldp     x4, x5, [sp, #0x20]
    ldp     x6, x7, [sp, #0x30]
    ldp     x8, x9, [sp, #0x40]
    ldp     x10, x11, [sp, #0x50]
    ldp     x12, x13, [sp, #0x60]
    ldp     x14, x15, [sp, #0x70]
    ldp     x16, x17, [sp, #0x80]
    ldp     x18, x29, [sp, #0x90]
    ldr     x30, [sp, #0xa0]
    ldp     x0, x1, [sp]
    add     sp, sp, #0xb0
    eret
"#
);
