#!/usr/bin/env python3
"""Start a command as Postfix's master(8) starts a tlsmgr child (spec §4.1):
the flow pipe on fds 3/4, one end of the status socketpair on fd 5, a
listening UNIX socket bound at SOCKET on fd 6, a clean environment with
MAIL_CONFIG, GENERATION and MAIL_LOGTAG, stdin/stdout on /dev/null.

Like master, the launcher reads every status record as it arrives (an
unread channel would fill and block the child) and checks that they
alternate TAKEN/AVAIL, starting with TAKEN, as master(8) requires (it
panics on two TAKEN or two AVAIL in a row). SIGTERM is passed on to the
child (`postfix stop`); the launcher then exits with the child's status,
after printing the record count to stderr.

usage: master-child.py CONFIG_DIR SOCKET COMMAND [ARG...]
"""
import os
import signal
import socket
import struct
import sys
import threading

GENERATION = "17"


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    config_dir, path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    # master's backlog for a unix service.
    listener.listen(100)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    flow_r, flow_w = os.pipe()
    env = {
        "MAIL_CONFIG": config_dir,
        "MAIL_LOGTAG": "postfix",
        "GENERATION": GENERATION,
        "LANG": "C",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    pid = os.fork()
    if pid == 0:
        # dup2 clears close-on-exec on the targets; staged through high
        # numbers so no source is overwritten before it is copied.
        srcs = [flow_r, flow_w, theirs.fileno(), listener.fileno()]
        staged = [os.dup2(fd, 100 + i) for i, fd in enumerate(srcs)]
        for i, fd in enumerate(staged):
            os.dup2(fd, 3 + i)
        for fd in staged:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.closerange(7, 100)
        os.closerange(100 + len(srcs), 1024)
        os.execvpe(argv[0], argv, env)
    theirs.close()
    listener.close()
    os.close(flow_r)
    os.close(flow_w)

    counts = {"records": 0, "bad": 0}

    def drain():
        buf, expect = b"", 0
        while True:
            chunk = ours.recv(4096)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 12:
                rpid, gen, avail = struct.unpack("=iIi", buf[:12])
                buf = buf[12:]
                counts["records"] += 1
                if rpid != pid or gen != int(GENERATION, 8) or avail != expect:
                    counts["bad"] += 1
                expect = 1 - avail

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    # The child's end is closed now: the rest arrives at once.
    drainer.join(5)
    print(
        f"master-child: {counts['records']} status records, "
        f"{counts['bad']} out of order",
        file=sys.stderr,
    )
    sys.exit(1 if counts["bad"] else os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
