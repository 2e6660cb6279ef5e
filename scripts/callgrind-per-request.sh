#!/usr/bin/env bash
# Instructions per request of a tlsmgr binary under valgrind --tool=callgrind:
# the marginal cost between a short and a long run of Postfix's handshake mix
# over 8 connections (scripts/mix.py), so start-up and shutdown cancel out.
#
# usage: scripts/callgrind-per-request.sh [BINARY] [SHORT] [LONG]
#   BINARY defaults to target/release/tlsmgr; SHORT/LONG are handshakes
#   (default 2000 and 10000). Prints Ir of each run and Ir per request.
set -euo pipefail
bin=${1:-target/release/tlsmgr}
short=${2:-2000}
long=${3:-10000}
here=$(cd "$(dirname "$0")" && pwd)
run() {
    local n=$1 dir
    dir=$(mktemp -d)
    mkdir -p "$dir/data"
    cat > "$dir/main.cf" <<EOT
queue_directory = $dir
data_directory = $dir/data
smtpd_tls_session_cache_database = btree:\${data_directory}/smtpd_scache
tlsmgr_io_threads = 2
EOT
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$bin" serve -c "$dir" 2>"$dir/vg.log" &
    local pid=$!
    for _ in $(seq 1 600); do
        [ -S "$dir/private/tlsmgr" ] && break
        sleep 0.1
    done
    local reqs
    reqs=$(python3 "$here/mix.py" "$dir/private/tlsmgr" "$n" 8)
    kill -TERM "$pid"
    wait "$pid" || true
    local ir
    ir=$(grep -h '^summary:' "$dir"/cg.out* | awk '{s += $2} END {print s}')
    echo "$n handshakes: $reqs requests, $ir instructions" >&2
    rm -rf "$dir"
    echo "$reqs $ir"
}
read -r r1 i1 < <(run "$short")
read -r r2 i2 < <(run "$long")
awk -v r1="$r1" -v i1="$i1" -v r2="$r2" -v i2="$i2" \
    'BEGIN { printf "marginal: %.0f instructions per request ((%d - %d) / (%d - %d))\n", (i2 - i1) / (r2 - r1), i2, i1, r2, r1 }'
