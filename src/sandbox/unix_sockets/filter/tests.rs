use super::*;

/// Runs `program` as the kernel would on one system call: the classic BPF subset the filter uses.
fn run(program: &[sock_filter], arch: u32, nr: u32, arg4: u64) -> u32 {
    run_with(program, arch, nr, [0, 0, 0, 0, arg4, 0])
}

fn run_with(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (at, arg) in args.iter().enumerate() {
        data[16 + at * 8..24 + at * 8].copy_from_slice(&arg.to_le_bytes());
    }
    let word = |at: u32| {
        let at = at as usize;
        u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
    };
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let i = program[pc];
        let code = u32::from(i.code);
        pc += 1;
        match code {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => a = word(i.k),
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= i.k,
            c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
            c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                pc += usize::from(if a == i.k { i.jt } else { i.jf })
            }
            c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => {
                pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf })
            }
            c if c == libc::BPF_RET | libc::BPF_K => return i.k,
            other => panic!("instruction {other:#x} at {}", pc - 1),
        }
    }
}

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
const EACCES: u32 = libc::SECCOMP_RET_ERRNO | libc::EACCES as u32;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn native(nr: i64, arg4: u64) -> u32 {
    run(&program(), NATIVE.arch, nr as u32, arg4)
}

#[test]
fn calls_that_can_name_a_socket_go_to_the_supervisor() {
    for nr in [libc::SYS_connect, libc::SYS_sendmsg, libc::SYS_sendmmsg] {
        assert_eq!(native(nr, 0), NOTIFY, "{nr}");
    }
    // sendto with an address, whichever half of the pointer is set; without one (send()), untouched.
    assert_eq!(native(libc::SYS_sendto, 0x7fff_0000_1000), NOTIFY);
    assert_eq!(native(libc::SYS_sendto, 0x1000), NOTIFY);
    assert_eq!(native(libc::SYS_sendto, 0x7fff_0000_0000), NOTIFY);
    assert_eq!(native(libc::SYS_sendto, 0), ALLOW);
    assert_eq!(native(libc::SYS_io_uring_setup, 0), ENOSYS);
    for nr in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_socket,
        libc::SYS_bind,
        libc::SYS_accept4,
        libc::SYS_recvmsg,
        libc::SYS_io_uring_enter,
        libc::SYS_execve,
    ] {
        assert_eq!(native(nr, 0x1000), ALLOW, "{nr}");
    }
}

/// Only PR_SET_DUMPABLE 0 is refused: the supervisor could take no call of a non-dumpable program.
#[test]
fn a_program_cannot_make_itself_non_dumpable() {
    let program = program();
    let prctl = |option: u64, arg2: u64| {
        run_with(
            &program,
            NATIVE.arch,
            libc::SYS_prctl as u32,
            [option, arg2, 0, 0, 0, 0],
        )
    };
    let dumpable = libc::PR_SET_DUMPABLE as u64;
    assert_eq!(prctl(dumpable, 0), EPERM);
    assert_eq!(prctl(dumpable, 1), ALLOW);
    // Values the kernel refuses itself (EINVAL), the high half of arg2 included.
    assert_eq!(prctl(dumpable, 2), ALLOW);
    assert_eq!(prctl(dumpable, 1 << 32), ALLOW);
    // The option is an int: its high half is not looked at, as the kernel does not.
    assert_eq!(prctl((1 << 32) | dumpable, 0), EPERM);
    assert_eq!(prctl(libc::PR_GET_DUMPABLE as u64, 0), ALLOW);
    assert_eq!(prctl(libc::PR_SET_NAME as u64, 0), ALLOW);
    assert_eq!(prctl(libc::PR_SET_PDEATHSIG as u64, 0), ALLOW);
    // The check does not leak into the calls after it in the program.
    assert_eq!(native(libc::SYS_connect, 0), NOTIFY);
    assert_eq!(native(libc::SYS_sendto, 0), ALLOW);
    assert_eq!(native(libc::SYS_sendto, 0x1000), NOTIFY);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_and_i386_socket_calls_are_refused() {
    let program = program();
    let x32 = |nr: u32| run(&program, AUDIT_ARCH_X86_64, 0x4000_0000 | nr, 0x1000);
    for nr in [42, 44, 518, 538, 46, 307] {
        assert_eq!(x32(nr), EACCES, "x32 {nr}");
    }
    assert_eq!(x32(425), ENOSYS);
    // The rest of x32 is left to the kernel (which may not have x32 at all).
    assert_eq!(x32(0), ALLOW);
    assert_eq!(x32(1), ALLOW);
    let i386 = |nr: u32| run(&program, AUDIT_ARCH_I386, nr, 0);
    for nr in [102, 362, 369, 370, 345] {
        assert_eq!(i386(nr), EACCES, "i386 {nr}");
    }
    assert_eq!(i386(425), ENOSYS);
    // read, write, exit, and i386's 42 (pipe), which is x86_64's connect.
    for nr in [3, 4, 1, 42] {
        assert_eq!(i386(nr), ALLOW, "i386 {nr}");
    }
}

#[test]
fn an_unknown_architecture_gets_nothing() {
    let program = program();
    for nr in [0, 3, 42, libc::SYS_connect as u32] {
        assert_eq!(run(&program, 0xdead_beef, nr, 0), ENOSYS);
    }
}

#[test]
fn every_jump_lands_inside_the_program() {
    let program = program();
    for (at, i) in program.iter().enumerate() {
        let code = u32::from(i.code);
        let targets: Vec<usize> = if code == libc::BPF_JMP | libc::BPF_JA {
            vec![at + 1 + i.k as usize]
        } else if code & 0x07 == libc::BPF_JMP {
            vec![at + 1 + usize::from(i.jt), at + 1 + usize::from(i.jf)]
        } else {
            Vec::new()
        };
        assert!(targets.iter().all(|&t| t < program.len()), "{at}");
    }
    let last = program.last().unwrap();
    assert_eq!(u32::from(last.code), libc::BPF_RET | libc::BPF_K);
}
