//! The image's first bytes and the interrupt entry stubs.
//!
//! QEMU starts the CPU at 0x10000 with PSW mask 0x0000000180000000 (64-bit
//! addressing, everything disabled) and copies `-append` to 0x10480 (its
//! size limit, terminating NUL included: the u64 at 0x10430). QEMU re-loads the image on a re-IPL but
//! does not zero `.bss`, so the stub does.

use core::arch::global_asm;
use core::sync::atomic::AtomicU64;

/// Where a program check resumes when an instruction that may be refused
/// armed it (the diag288 calls); 0 = a program check is a crash.
#[unsafe(no_mangle)]
pub static PVAGENT_PGM_FIXUP: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .section .head, "ax"
    .globl _start
_start:
    j pvagent_start
    .org 0x408
    .quad 0, 0              /* -initrd start and size (unused) */
    .org 0x430
    .quad 1032              /* -append's size limit, NUL included: the whole area below. A
                               script of 1025..1031 bytes reaches the agent (script error);
                               QEMU itself refuses longer ones */
    .org 0x480
    .globl pvagent_cmdline
pvagent_cmdline:
    .fill 1032, 1, 0        /* file-backed, so QEMU copies -append here */

    .text
pvagent_start:
    larl %r15, pvagent_stack_top
    aghi %r15, -160
    /* Zero .bss (256 bytes at a time; its end is 256-aligned). */
    larl %r2, __bss_start
    larl %r3, __bss_end
1:  clgr %r2, %r3
    jhe 2f
    xc 0(256,%r2), 0(%r2)
    la %r2, 256(%r2)
    j 1b
2:  larl %r1, pvagent_cr0
    lctlg %c0, %c0, 0(%r1)
    larl %r1, pvagent_zero
    lctlg %c6, %c6, 0(%r1)
    /* New PSWs: restart, external, SVC, program, machine check, I/O. */
    larl %r1, pvagent_new_psws
    mvc 0x1a0(96,%r0), 0(%r1)
    brasl %r14, pvagent_main
3:  j 3b

/* Program check: resume at the armed fix-up, else report and stop. */
pvagent_pgm_entry:
    stmg %r0, %r15, 0xe00
    larl %r1, PVAGENT_PGM_FIXUP
    lg %r2, 0(%r1)
    ltgr %r2, %r2
    jz 1f
    xc 0(8,%r1), 0(%r1)
    stg %r2, 0x158
    lmg %r0, %r15, 0xe00
    lpswe 0x150
1:  larl %r15, pvagent_pgm_stack_top
    aghi %r15, -160
    brasl %r14, pvagent_program_check
2:  j 2b

/* Restart interrupt (QEMU's watchdog action inject-nmi): log it, resume. */
pvagent_restart_entry:
    stmg %r0, %r15, 0xf00
    larl %r15, pvagent_restart_stack_top
    aghi %r15, -160
    brasl %r14, pvagent_restart
    lmg %r0, %r15, 0xf00
    lpswe 0x120

/* External interrupt: only the clock comparator is ever enabled, to end
   a sleep's enabled wait: resume after the wait, with EXT and WAIT off. */
pvagent_ext_entry:
    ni 0x130, 0xfe
    ni 0x131, 0xfd
    lpswe 0x130

    .section .rodata.pvagent_boot, "a"
    .balign 8
pvagent_cr0:
    .quad 0x40000           /* CR0: AFP registers on, every subclass off */
pvagent_zero:
    .quad 0
pvagent_new_psws:
    .quad 0x0000000180000000, pvagent_restart_entry
    .quad 0x0000000180000000, pvagent_ext_entry
    .quad 0x0002000180000000, 0xbadfc00     /* SVC: unexpected */
    .quad 0x0000000180000000, pvagent_pgm_entry
    .quad 0x0002000180000000, 0xbadfe00     /* machine check: unexpected */
    .quad 0x0002000180000000, 0xbadff00     /* I/O: unexpected */

    .section .bss.pvagent_stacks, "aw", @nobits
    .balign 4096
    .skip 32768
pvagent_stack_top:
    .skip 8192
pvagent_pgm_stack_top:
    .skip 8192
pvagent_restart_stack_top:
    "#
);
