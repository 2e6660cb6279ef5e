#!/usr/bin/env python3
"""Writes the hex dumps of spec section 1.6 (requests and replies: the
replies are good noise for a request decoder) as seed files of a fuzz
corpus, plus the master wakeup. Usage:

    scripts/fuzz_seeds.py SPEC.md fuzz/seeds/request_decoder

Each dump is the indented block of `OFFSET  HEX ... |ascii|` lines after a
prose line; the file is named <n>-<words of that line>."""
import os
import re
import sys

spec, out = sys.argv[1], sys.argv[2]
text = open(spec, encoding="utf-8").read()
section = text.split("### 1.6 ", 1)[1].split("\n## ", 1)[0]
dumps, label, cur = [], "", None
for line in section.splitlines():
    m = re.match(r"^    ([0-9a-f]{4})  ((?:[0-9a-f]{2} ?)+)", line)
    if m:
        if cur is None:
            cur = (label, bytearray())
            dumps.append(cur)
        cur[1].extend(bytes.fromhex(m.group(2).replace(" ", "")))
    else:
        cur = None
        if line.strip():
            label = line.strip()
dumps.append(("master wakeup", bytearray(b"W\0")))
os.makedirs(out, exist_ok=True)
for n, (label, data) in enumerate(dumps):
    words = re.findall(r"[a-z0-9]+", label.lower())[:4]
    name = "%02d-%s" % (n, "-".join(words))
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    print(name, len(data))
