"""Runs one python grader inside the sandbox; started by ``graders.sandbox`` as ``python -I THIS_FILE``.

Standard library only, and nothing of openft is imported: this file runs before the locks close.
It reads ``{"source", "sample", "item", "limits", "allow"}`` as JSON on stdin, locks itself in, then
runs ``grade(sample, item)`` and writes one JSON line to the result pipe (its original stdout):
``{"reward": float}``, ``{"runtime_error": str}`` or ``{"server_error": str}``.

The locks, in order; if any cannot be set the grader is not run (``server_error``):

1. rlimits: address space, CPU seconds, file size, open files, no core dumps.
2. stdout and stderr go to /dev/null (a grader's prints are discarded); the result pipe is kept.
3. every capability dropped (a root worker's grader is root without powers) and no_new_privs.
4. Landlock: the file system is read-only and limited to the Python installation (its prefixes
   and site-packages) and a few system files; the temporary working directory is the only
   writable place. TCP bind/connect, abstract unix sockets and signals outside the sandbox are
   refused too, where the kernel's Landlock version has them.
5. seccomp: no sockets of any family, no new processes (threads are allowed), no exec, no
   ptrace or reading other processes' memory, no signals to other processes, no raising limits,
   no io_uring, bpf, namespaces, mounts, modules or clock changes.
"""

import ctypes
import json
import math
import os
import platform
import resource
import struct
import sys
import traceback

# ---- Landlock (include/uapi/linux/landlock.h) ----
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_TRUNCATE = 1 << 14
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE
_FS_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

# ---- seccomp (x86_64) ----
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_AUDIT_ARCH_X86_64 = 0xC000003E
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_EPERM, _ENOSYS = 1, 38
_CLONE_THREAD = 0x00010000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_X86_64 = {
    "socket": 41, "socketpair": 53, "fork": 57, "vfork": 58, "execve": 59, "ptrace": 101,
    "syslog": 103, "mknod": 133, "pivot_root": 155, "adjtimex": 159, "setrlimit": 160, "chroot": 161,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173,
    "init_module": 175, "delete_module": 176, "quotactl": 179, "tkill": 200, "clock_settime": 227,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "mknodat": 259,
    "unshare": 272, "perf_event_open": 298, "prlimit64": 302, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "execveat": 322, "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434,
    "pidfd_getfd": 438, "mount_setattr": 442,
}  # fmt: skip
_X86_64_CLONE, _X86_64_CLONE3, _X86_64_KILL, _X86_64_TGKILL = 56, 435, 62, 234

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _fail(what):
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _set_limits(limits):
    pairs = [
        (resource.RLIMIT_AS, limits["memory_bytes"]),
        (resource.RLIMIT_CPU, limits["cpu_seconds"]),
        (resource.RLIMIT_FSIZE, limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ]
    for which, value in pairs:
        # CPU: SIGXCPU (which ends the interpreter) at the soft limit, SIGKILL one second later
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        resource.setrlimit(which, (value, hard))


def _drop_capabilities():
    for cap in range(64):
        _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last capability; EPERM unprivileged
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two {effective, permitted, inheritable} words, all zero
    if _libc.syscall(125, header, data) != 0:  # capset
        _fail("capset")
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("prctl(PR_SET_NO_NEW_PRIVS)")


def _landlock(read_paths, write_paths):
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        _fail("Landlock is not available")
    handled_fs = (1 << 13) - 1  # ABI 1: EXECUTE ... MAKE_SYM
    if abi >= 2:
        handled_fs |= 1 << 13  # REFER
    if abi >= 3:
        handled_fs |= 1 << 14  # TRUNCATE
    if abi >= 5:
        handled_fs |= 1 << 15  # IOCTL_DEV
    attr = struct.pack("Q", handled_fs)
    if abi >= 4:
        attr += struct.pack("Q", _NET_BIND_TCP | _NET_CONNECT_TCP)
    if abi >= 6:
        attr += struct.pack("Q", _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    ruleset = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    if ruleset < 0:
        _fail("landlock_create_ruleset")
    for path, rights in [(p, _FS_READ) for p in read_paths] + [(p, handled_fs) for p in write_paths]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a path this system does not have
        try:
            if not os.path.isdir(path):
                rights &= _FS_FILE_RIGHTS
            rule = struct.pack("<Qi", rights & handled_fs, fd)
            if _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
                _fail(f"landlock_add_rule({path})")
        finally:
            os.close(fd)
    if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        _fail("landlock_restrict_self")
    os.close(ruleset)
    return abi


def _seccomp():
    if platform.machine() != "x86_64":
        raise OSError(f"the seccomp filter is written for x86_64, not {platform.machine()}")
    pid = os.getpid()
    deny = _RET_ERRNO | _EPERM

    def op(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)

    program = [
        op(_LD_ABS, 4),  # seccomp_data.arch
        op(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        op(_RET, _RET_KILL_PROCESS),
        op(_LD_ABS, 0),  # seccomp_data.nr
        op(_JGE, 0x40000000, 0, 1),  # the x32 ABI
        op(_RET, deny),
        # clone: threads only
        op(_JEQ, _X86_64_CLONE, 0, 4),
        op(_LD_ABS, 16),  # args[0], low half: the clone flags
        op(_JSET, _CLONE_THREAD, 0, 1),
        op(_RET, _RET_ALLOW),
        op(_RET, deny),
        # kill and tgkill: only this process
        op(_JEQ, _X86_64_KILL, 0, 4),
        op(_LD_ABS, 16),
        op(_JEQ, pid, 0, 1),
        op(_RET, _RET_ALLOW),
        op(_RET, deny),
        op(_JEQ, _X86_64_TGKILL, 0, 4),
        op(_LD_ABS, 16),
        op(_JEQ, pid, 0, 1),
        op(_RET, _RET_ALLOW),
        op(_RET, deny),
        # clone3 cannot be inspected: ENOSYS makes the C library fall back to clone
        op(_JEQ, _X86_64_CLONE3, 0, 1),
        op(_RET, _RET_ERRNO | _ENOSYS),
    ]
    for nr in _X86_64.values():
        program += [op(_JEQ, nr, 0, 1), op(_RET, deny)]
    program.append(op(_RET, _RET_ALLOW))
    code = b"".join(program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(buffer))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        _fail("prctl(PR_SET_SECCOMP)")


def _number(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"grade() returned {type(value).__name__} {str(value)[:80]!r}; it must return a number"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"grade() returned {value}; it must return a finite number")
    return value


def main():
    payload = json.loads(sys.stdin.buffer.read())
    result = os.fdopen(os.dup(1), "w", encoding="utf-8")
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        _set_limits(payload["limits"])
        _drop_capabilities()
        _landlock(payload["allow"]["read"], payload["allow"]["write"])
        _seccomp()
    except Exception as exc:
        result.write(json.dumps({"server_error": f"{type(exc).__name__}: {exc}"}) + "\n")
        result.flush()
        return
    try:
        namespace = {"__name__": "__grader__", "__builtins__": __builtins__}
        exec(compile(payload["source"], "<grader>", "exec"), namespace)
        reward = _number(namespace["grade"](payload["sample"], payload["item"]))
        line = {"reward": reward}
    except BaseException as exc:  # noqa: BLE001 - whatever the grader does is reported, not raised
        trace = traceback.format_exception(type(exc), exc, exc.__traceback__)
        lines = [t for t in trace if "sandbox_boot.py" not in t]
        line = {"runtime_error": "".join(lines)[-4000:]}
    result.write(json.dumps(line) + "\n")
    result.flush()
    os._exit(0)  # now: threads the grader left running must not keep the process alive


if __name__ == "__main__":
    main()
