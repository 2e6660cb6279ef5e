#!/usr/bin/env python3
"""Drive a tlsmgr socket with Postfix's per-handshake mix, a fixed number of
handshakes over N connections, independently of our own client code.

Per handshake: seed 32, lookup (a resumption half the time), update on a
miss (1-2.5 KiB session), tktkey with an empty name. Every reply is read
and its status checked. Prints the number of requests sent.

usage: mix.py SOCKET HANDSHAKES [CONNECTIONS]
"""
import base64
import os
import random
import socket
import sys
import threading


def attrs(*pairs):
    out = b""
    for name, value in pairs:
        out += name + b"\0" + value + b"\0"
    return out + b"\0"


def data(b):
    return base64.b64encode(b)


def parse_list(b):
    """(attributes, bytes used) of one complete list at the start of b, or
    None: NUL-terminated name, value, name, value, ..., then an empty name."""
    pos, attrs = 0, {}
    while True:
        end = b.find(b"\0", pos)
        if end < 0:
            return None
        name = b[pos:end]
        pos = end + 1
        if not name:
            return attrs, pos
        end = b.find(b"\0", pos)
        if end < 0:
            return None
        attrs[name] = b[pos:end]
        pos = end + 1


def read_list(sock, buf):
    while True:
        got = parse_list(buf[0])
        if got is not None:
            attrs, used = got
            buf[0] = buf[0][used:]
            return attrs
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("server closed the connection")
        buf[0] += chunk


def status_of(attrs):
    if b"status" not in attrs:
        raise SystemExit("reply without status: %r" % attrs)
    return int(attrs[b"status"])


def worker(path, handshakes, seed, counts, idx):
    rnd = random.Random(seed)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    buf = [b""]
    read_list(s, buf)  # the announcement
    stored = []
    sent = 0

    def ask(req):
        nonlocal sent
        s.sendall(req)
        sent += 1
        return status_of(read_list(s, buf))

    for n in range(handshakes):
        if ask(attrs((b"request", b"seed"), (b"size", b"32"))) != 0:
            raise SystemExit("seed failed")
        if stored and rnd.random() < 0.5:
            cid = rnd.choice(stored)
        else:
            cid = b"%d-%d-%d" % (seed, idx, n)
        st = ask(attrs((b"request", b"lookup"), (b"cache_type", b"smtpd"),
                       (b"cache_id", cid)))
        if st != 0:
            session = os.urandom(rnd.randint(1024, 2560))
            if ask(attrs((b"request", b"update"), (b"cache_type", b"smtpd"),
                         (b"cache_id", cid), (b"session", data(session)))) != 0:
                raise SystemExit("update failed")
            stored.append(cid)
        if ask(attrs((b"request", b"tktkey"), (b"keyname", b""))) != 0:
            raise SystemExit("tktkey failed")
    s.close()
    counts[idx] = sent


def main():
    path, handshakes = sys.argv[1], int(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    per = handshakes // conns
    counts = [0] * conns
    threads = [threading.Thread(target=worker, args=(path, per, 7, counts, i))
               for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if 0 in counts:
        raise SystemExit("a connection failed")
    print(sum(counts))


if __name__ == "__main__":
    main()
