#!/usr/bin/env bash
# Instructions per request of a tlsmgr binary under valgrind --tool=callgrind:
# the marginal cost between a short and a long run of Postfix's handshake mix
# over 8 connections (scripts/mix.py), so start-up and shutdown cancel out.
#
# usage: scripts/callgrind-per-request.sh [--serve|--master] [BINARY] [SHORT] [LONG]
#   --serve (the default) runs `tlsmgr serve -c DIR`; --master runs it as
#   master(8) starts it (scripts/master-child.py: fds 3-6, MAIL_CONFIG,
#   `-l -t unix -u`, no chroot; as root it drops to mail_owner=postfix).
#   BINARY defaults to target/release/tlsmgr; SHORT/LONG are handshakes
#   (default 2000 and 10000). Prints Ir of each run and Ir per request.
#   KEEP=DIR keeps each run's callgrind output as DIR/cg-MODE-N.out, for
#   callgrind_annotate.
set -euo pipefail
mode=serve
case "${1:-}" in
--serve) shift ;;
--master) mode=master; shift ;;
esac
bin=$(realpath "${1:-target/release/tlsmgr}")
short=${2:-2000}
long=${3:-10000}
here=$(cd "$(dirname "$0")" && pwd)
run() {
    local n=$1 dir sock pid
    dir=$(mktemp -d)
    chmod 755 "$dir"
    mkdir -p "$dir/data" "$dir/config" "$dir/private" "$dir/cg"
    sock=$dir/private/tlsmgr
    cat > "$dir/main.cf" <<EOT
queue_directory = $dir
data_directory = $dir/data
smtpd_tls_session_cache_database = btree:\${data_directory}/smtpd_scache
tlsmgr_io_threads = 2
EOT
    local vg=(valgrind --tool=callgrind --callgrind-out-file="$dir/cg/cg.out")
    if [ "$mode" = master ]; then
        cp "$dir/main.cf" "$dir/config/main.cf"
        if [ "$(id -u)" = 0 ]; then
            chown postfix: "$dir/data"
            # callgrind creates its output file at start, as root, and
            # writes it at exit, as mail_owner: an existing file keeps its
            # owner.
            touch "$dir/cg/cg.out"
            chown postfix: "$dir/cg/cg.out"
        else
            echo "mail_owner = $(id -un)" >> "$dir/config/main.cf"
        fi
        python3 "$here/master-child.py" "$dir/config" "$sock" \
            "${vg[@]}" "$bin" -l -t unix -u 2>"$dir/vg.log" &
        pid=$!
    else
        "${vg[@]}" "$bin" serve -c "$dir" 2>"$dir/vg.log" &
        pid=$!
    fi
    for _ in $(seq 1 600); do
        [ -S "$sock" ] && break
        sleep 0.1
    done
    local reqs
    reqs=$(python3 "$here/mix.py" "$sock" "$n" 8)
    kill -TERM "$pid"
    wait "$pid" || true
    local ir
    ir=$(grep -h '^summary:' "$dir"/cg/cg.out* | awk '{s += $2} END {print s}')
    echo "$mode, $n handshakes: $reqs requests, $ir instructions" >&2
    grep -h '^master-child:' "$dir/vg.log" >&2 || true
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        cp "$dir/cg/cg.out" "$KEEP/cg-$mode-$n.out"
    fi
    rm -rf "$dir"
    echo "$reqs $ir"
}
read -r r1 i1 < <(run "$short")
read -r r2 i2 < <(run "$long")
awk -v m="$mode" -v r1="$r1" -v i1="$i1" -v r2="$r2" -v i2="$i2" \
    'BEGIN { printf "%s marginal: %.0f instructions per request ((%d - %d) / (%d - %d))\n", m, (i2 - i1) / (r2 - r1), i2, i1, r2, r1 }'
