//! The seccomp filter that the command's process installs just before exec: every system call that can
//! reach a Unix socket by its path goes to the sandbox's supervisor (`SECCOMP_RET_USER_NOTIF`), which
//! decides and does the call itself; nothing else is slowed. Filters are inherited by every descendant and
//! cannot be removed, and the kernel lets no later filter add a listener of its own, so no process of the
//! sandbox gets around it.
//!
//! - `connect`, `sendmsg` and `sendmmsg` always: their address is in memory, which a filter cannot read.
//! - `sendto` only with an address (argument 4 not NULL): `send()` on a connected socket is most of a
//!   program's traffic, and a registers-only check has no race.
//! - `prctl(PR_SET_DUMPABLE, 0)` fails with EPERM: the supervisor takes a program's socket and reads its
//!   memory with the rights of a process of the same user, which the kernel refuses for a non-dumpable
//!   one, so such a program could make no checked call at all (TCP's included). The program learns it
//!   stays traceable by the sandbox's other processes, as a program does where prctl is refused (OpenSSH's
//!   ssh-agent goes on). An executable the caller cannot read is still run non-dumpable; the keeper
//!   opens for the supervisor what the kernel refuses it then (`helper`).
//! - `io_uring_setup` fails with ENOSYS (programs fall back to plain system calls): IORING_OP_CONNECT and
//!   IORING_OP_SENDMSG would run in the kernel without passing through seccomp.
//! - The same calls of another ABI fail with EACCES: x32 (the x32 bit in the number) and 32-bit programs
//!   (another `arch`), whose `socketcall` and `connect` the supervisor does not decode. Their other system
//!   calls are allowed, so such programs run, without sockets of their own.
//! - A system call of an architecture this filter does not know fails with ENOSYS.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use libc::sock_filter;

/// `linux/audit.h`; libc does not have them.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

/// The system calls of one architecture that the filter watches.
struct Table {
    arch: u32,
    /// Sent to the supervisor.
    notify: &'static [u32],
    /// Sent to the supervisor when argument 4 (the address) is not NULL.
    sendto: Option<u32>,
    /// Refused with EACCES.
    refuse: &'static [u32],
    io_uring_setup: u32,
    /// Checked for PR_SET_DUMPABLE 0 (None: the ABI's socket calls are refused anyway).
    prctl: Option<u32>,
}

/// This machine's own calls: libc names their numbers, which differ between x86_64 and aarch64.
const NATIVE: Table = Table {
    #[cfg(target_arch = "x86_64")]
    arch: AUDIT_ARCH_X86_64,
    #[cfg(target_arch = "aarch64")]
    arch: AUDIT_ARCH_AARCH64,
    notify: &[
        libc::SYS_connect as u32,
        libc::SYS_sendmsg as u32,
        libc::SYS_sendmmsg as u32,
    ],
    sendto: Some(libc::SYS_sendto as u32),
    refuse: &[],
    io_uring_setup: libc::SYS_io_uring_setup as u32,
    prctl: Some(libc::SYS_prctl as u32),
};

/// x32 shares x86_64's `arch` and sets this bit in the number; its socket calls are 42 (connect), 44
/// (sendto), 518 (sendmsg) and 538 (sendmmsg). The 64-bit numbers of sendmsg and sendmmsg are refused too,
/// whatever the kernel's x32 table says of them.
#[cfg(target_arch = "x86_64")]
const X32: Option<(u32, Table)> = Some((
    0x4000_0000,
    Table {
        arch: AUDIT_ARCH_X86_64,
        notify: &[],
        sendto: None,
        refuse: &[42, 44, 46, 307, 518, 538],
        io_uring_setup: 425,
        prctl: None,
    },
));

/// i386 under x86_64: socketcall (102), and the direct calls connect (362), sendto (369), sendmsg (370),
/// sendmmsg (345).
#[cfg(target_arch = "x86_64")]
const COMPAT: Table = Table {
    arch: AUDIT_ARCH_I386,
    notify: &[],
    sendto: None,
    refuse: &[102, 362, 369, 370, 345],
    io_uring_setup: 425,
    prctl: None,
};

#[cfg(target_arch = "aarch64")]
const X32: Option<(u32, Table)> = None;

/// 32-bit ARM (EABI) under aarch64: socketcall (102, OABI), connect (283), send (289), sendto (290),
/// sendmsg (296), sendmmsg (374).
#[cfg(target_arch = "aarch64")]
const COMPAT: Table = Table {
    arch: AUDIT_ARCH_ARM,
    notify: &[],
    sendto: None,
    refuse: &[102, 283, 289, 290, 296, 374],
    io_uring_setup: 425,
    prctl: None,
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the socket filter knows the system call numbers of x86_64 and aarch64 only");

/// `struct seccomp_data`: the number, then the architecture, then (after the instruction pointer) the six
/// arguments, 64 bits each.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low and high halves of arguments (little-endian).
const ARG0_LOW: u32 = 16;
const ARG1_LOW: u32 = 16 + 8;
const ARG1_HIGH: u32 = ARG1_LOW + 4;
const ARG4_LOW: u32 = 16 + 4 * 8;
const ARG4_HIGH: u32 = ARG4_LOW + 4;

/// A jump target, resolved when the program is assembled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    /// The instruction after this one.
    Next,
    /// This many instructions further than the next one.
    Skip(u8),
    /// Where the x32 part begins.
    X32,
    /// Where the other architecture's part begins.
    Compat,
    Allow,
    Notify,
    Eacces,
    Eperm,
    Enosys,
}

/// The returns, last in the program in this order.
const RETURNS: [Label; 5] = [
    Label::Allow,
    Label::Notify,
    Label::Eacces,
    Label::Eperm,
    Label::Enosys,
];

enum Step {
    Load(u32),
    And(u32),
    /// If the accumulator equals k go to the first label, else the second.
    JumpIfEqual(u32, Label, Label),
    /// If the accumulator has any bit of k go to the first label, else the second.
    JumpIfAny(u32, Label, Label),
    Jump(Label),
}

/// The `arch` of this machine's own system calls, the only ones the filter sends to the supervisor.
pub(super) fn native_arch() -> u32 {
    NATIVE.arch
}

/// The program, for this machine's architectures.
pub fn program() -> Vec<sock_filter> {
    let (steps, sections) = steps(&NATIVE, X32.as_ref(), &COMPAT);
    assemble(&steps, &sections)
}

/// Where the parts of a program begin.
struct Sections {
    x32: usize,
    compat: usize,
}

fn steps(native: &Table, x32: Option<&(u32, Table)>, compat: &Table) -> (Vec<Step>, Sections) {
    let mut steps = vec![
        Step::Load(ARCH),
        Step::JumpIfEqual(native.arch, Label::Next, Label::Compat),
        Step::Load(NR),
    ];
    let mut sections = Sections { x32: 0, compat: 0 };
    if let Some((bit, table)) = x32 {
        steps.push(Step::JumpIfAny(*bit, Label::X32, Label::Next));
        table_steps(&mut steps, native);
        sections.x32 = steps.len();
        steps.push(Step::And(!bit));
        table_steps(&mut steps, table);
    } else {
        table_steps(&mut steps, native);
    }
    sections.compat = steps.len();
    steps.push(Step::JumpIfEqual(compat.arch, Label::Next, Label::Enosys));
    steps.push(Step::Load(NR));
    table_steps(&mut steps, compat);
    (steps, sections)
}

/// With the number in the accumulator: one architecture's decisions, ending in a jump to a return.
fn table_steps(steps: &mut Vec<Step>, table: &Table) {
    for &nr in table.notify {
        steps.push(Step::JumpIfEqual(nr, Label::Notify, Label::Next));
    }
    for &nr in table.refuse {
        steps.push(Step::JumpIfEqual(nr, Label::Eacces, Label::Next));
    }
    steps.push(Step::JumpIfEqual(
        table.io_uring_setup,
        Label::Enosys,
        Label::Next,
    ));
    if let Some(prctl) = table.prctl {
        steps.extend([
            Step::JumpIfEqual(prctl, Label::Next, Label::Skip(6)),
            Step::Load(ARG0_LOW),
            Step::JumpIfEqual(libc::PR_SET_DUMPABLE as u32, Label::Next, Label::Allow),
            Step::Load(ARG1_LOW),
            Step::JumpIfEqual(0, Label::Next, Label::Allow),
            Step::Load(ARG1_HIGH),
            Step::JumpIfEqual(0, Label::Eperm, Label::Allow),
        ]);
    }
    match table.sendto {
        Some(sendto) => {
            steps.push(Step::JumpIfEqual(sendto, Label::Next, Label::Allow));
            steps.push(Step::Load(ARG4_LOW));
            steps.push(Step::JumpIfEqual(0, Label::Next, Label::Notify));
            steps.push(Step::Load(ARG4_HIGH));
            steps.push(Step::JumpIfEqual(0, Label::Allow, Label::Notify));
        }
        None => steps.push(Step::Jump(Label::Allow)),
    }
}

fn assemble(steps: &[Step], sections: &Sections) -> Vec<sock_filter> {
    let target = |at: usize, label: Label| match label {
        Label::Next => at + 1,
        Label::Skip(n) => at + 1 + usize::from(n),
        Label::X32 => sections.x32,
        Label::Compat => sections.compat,
        other => steps.len() + RETURNS.iter().position(|&r| r == other).unwrap_or(0),
    };
    // Every jump goes forward, by fewer than 256 instructions: the programs `steps` makes are about 40
    // long, and the unit tests check each jump by running them.
    let offset = |at: usize, label: Label| (target(at, label) - at - 1) as u8;
    let instruction = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut program: Vec<sock_filter> = steps
        .iter()
        .enumerate()
        .map(|(at, step)| match *step {
            Step::Load(k) => instruction(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, k),
            Step::And(k) => instruction(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, k),
            Step::JumpIfEqual(k, yes, no) => instruction(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                offset(at, yes),
                offset(at, no),
                k,
            ),
            Step::JumpIfAny(k, yes, no) => instruction(
                libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
                offset(at, yes),
                offset(at, no),
                k,
            ),
            Step::Jump(label) => instruction(
                libc::BPF_JMP | libc::BPF_JA,
                0,
                0,
                (target(at, label) - at - 1) as u32,
            ),
        })
        .collect();
    program.extend(
        RETURNS
            .iter()
            .map(|&label| instruction(libc::BPF_RET | libc::BPF_K, 0, 0, action(label))),
    );
    program
}

fn action(label: Label) -> u32 {
    match label {
        Label::Notify => libc::SECCOMP_RET_USER_NOTIF,
        Label::Eacces => libc::SECCOMP_RET_ERRNO | libc::EACCES as u32,
        Label::Eperm => libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        Label::Enosys => libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        Label::Allow | Label::Next | Label::Skip(_) | Label::X32 | Label::Compat => {
            libc::SECCOMP_RET_ALLOW
        }
    }
}

/// Installs the filter on the calling thread (the command's process is single-threaded) and returns its
/// listener. Needs no_new_privs. `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (Linux 5.19): once the
/// supervisor has taken a call, only a fatal signal interrupts it, so a send the supervisor did on the
/// program's behalf is never sent again by a restarted call.
pub fn install() -> io::Result<OwnedFd> {
    let program = program();
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the program outlives the call, which copies it; the returned descriptor is ours alone.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests;
