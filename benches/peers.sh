#!/usr/bin/env bash
# Side-by-side throughput of flowplane and two collectors operators already run, on this machine,
# in one run and against the same generator: nfdump's nfcapd (flows to binary files) and pmacct's
# nfacctd (memory plugin aggregating on the 5-tuple), then `flowplane bench` (both sinks live).
# For each collector it climbs a ladder of offered rates, restarting the collector fresh for every
# step, and reports the highest loss-free rate (loss < 0.01 %) and the ratio flowplane/collector
# (issue 5; see docs/benchmarks.md for what the numbers mean).
#
#   benches/peers.sh [--out DIR] [--rates LIST] [--step-secs N] [--collectors LIST] [--bisect]
#   benches/peers.sh --self-check [--out DIR]
#
# Options (each also an environment variable, the option wins):
#
#   --out DIR         FLOWPLANE_PEERS_OUT         where peers.md and peers.json go
#                                                 (default: bench-results/peers-DATE)
#   --rates LIST      FLOWPLANE_PEERS_RATES       offered records/s, k and M allowed (default
#                                                 250k,500k,1M,1.5M,2M,2.5M,3M,4M,5M,6M)
#   --step-secs N     FLOWPLANE_PEERS_STEP_SECS   seconds per step (default 30, the shortest
#                                                 sustained step issue 5 accepts; a shorter step
#                                                 is reported as a short check)
#   --collectors L    FLOWPLANE_PEERS_COLLECTORS  any of nfcapd,nfacctd,flowplane (default all)
#   --bisect          FLOWPLANE_PEERS_BISECT=1    one extra step halfway between the last pass and
#                                                 the first failure
#   --keep-rmem       FLOWPLANE_PEERS_RAISE_RMEM=0  leave net.core.rmem_max alone. By default,
#                                                 as root, it is raised to the requested receive
#                                                 buffer for the run and restored at exit: nfcapd
#                                                 (-B) and nfacctd (nfacctd_pipe_size) ask with
#                                                 SO_RCVBUF, which that limit caps, while flowplane
#                                                 gets its buffer through SO_RCVBUFFORCE; without
#                                                 it the peers would run with smaller buffers
#   --self-check      one 2-second step at 20000 records/s for every collector whose tools are
#                     present; exits non-zero unless each has a loss-free step (run by
#                     tests/tests/peers.rs so that CI notices when this script rots)
#
#   FLOWPLANE_PEERS_FORMAT (v9), _FLOWS (100000), _EXPORTERS (4), _RPD (records per datagram,
#   24), _PORT (UDP port every collector listens on, 20555), _RCVBUF (receive buffer asked of
#   every collector, bytes; default 33554432, flowplane's engine.rcvbuf_bytes), _DRAIN_SECS (2),
#   _GEN (auto, gen or replay; auto uses `flowplane gen` when the binary has it, else a stand-in:
#   `flowplane replay` of _CAPTURE in a loop, a NetFlow v9 capture of the shared corpus),
#   FLOWPLANE_BIN (a built flowplane; default: cargo build --release --bin flowplane), TMPDIR
#   (where nfcapd writes its files: a 30 s step at 2M records/s is several GB, deleted once
#   counted; the report names the file system, since a slow disk is part of nfcapd's result).
#
# Cores: with 2 or more CPUs the generator is pinned to CPU 0 and each collector (all of its
# processes and threads) to the other CPUs with taskset; with one CPU they share it. The report
# says which. The generator and the collectors share the machine, so every figure is a floor.
#
# How loss is read (each step starts a fresh collector, so all counts are per step):
#   generator   records it sent (`flowplane gen --json`: "records"); the stand-in sends whole
#               passes of the capture, records = passes x records per pass (`flowplane decode`).
#   nfcapd      records in its files after SIGTERM (it writes what it holds on exit):
#               `nfdump -R DIR -I`, line "Flows:". Its own "Flows:" log line is kept as a cross
#               check.
#   nfacctd     sum of the FLOWS counter (aggregate primitive `flows`: flow records processed) over
#               the memory table, `pmacct -s -u -O csv`. nfacctd holds up to plugin_buffer_size
#               bytes of records in its core process until the buffer fills, without a timer, so
#               after the generator stops a flush load of NetFlow v5 records with IP protocol 253
#               (which the generator never sends) is sent from 127.0.0.254; their rows are left
#               out of the sum, and a step only counts when some of them reached the table (the
#               queue is FIFO, so everything sent before them did too).
#   all         the kernel's drops for the collector's socket (/proc/net/udp "drops", datagrams),
#               read before the collector stops, are reported next to the record loss; the loss
#               itself is (sent - counted) / sent and already includes them.
#   flowplane   `flowplane bench`'s bench.json: its steps and its own accounting.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."
# A path as the caller meant it (relative to where the script was started).
from_caller() { case $1 in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }

die() {
  echo "peers: $*" >&2
  exit 1
}
note() { echo "peers: $*" >&2; }

out=${FLOWPLANE_PEERS_OUT:-}
rates_arg=${FLOWPLANE_PEERS_RATES:-250k,500k,1M,1.5M,2M,2.5M,3M,4M,5M,6M}
step_secs=${FLOWPLANE_PEERS_STEP_SECS:-30}
collectors=${FLOWPLANE_PEERS_COLLECTORS:-nfcapd,nfacctd,flowplane}
bisect=${FLOWPLANE_PEERS_BISECT:-0}
raise_rmem=${FLOWPLANE_PEERS_RAISE_RMEM:-1}
format=${FLOWPLANE_PEERS_FORMAT:-v9}
flows=${FLOWPLANE_PEERS_FLOWS:-100000}
exporters=${FLOWPLANE_PEERS_EXPORTERS:-4}
rpd=${FLOWPLANE_PEERS_RPD:-24}
port=${FLOWPLANE_PEERS_PORT:-20555}
rcvbuf=${FLOWPLANE_PEERS_RCVBUF:-33554432}
drain=${FLOWPLANE_PEERS_DRAIN_SECS:-2}
gen_mode=${FLOWPLANE_PEERS_GEN:-auto}
capture=${FLOWPLANE_PEERS_CAPTURE:+$(from_caller "$FLOWPLANE_PEERS_CAPTURE")}
capture=${capture:-../shared/corpus/pmacct/101-NFv9-CISCO-cust_primitives_traffic-00.pcap}
self_check=0

while [ $# -gt 0 ]; do
  case $1 in
  --out) out=$2; shift ;;
  --rates) rates_arg=$2; shift ;;
  --step-secs) step_secs=$2; shift ;;
  --collectors) collectors=$2; shift ;;
  --bisect) bisect=1 ;;
  --keep-rmem) raise_rmem=0 ;;
  --self-check) self_check=1 ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument $1 (try --help)" ;;
  esac
  shift
done

if [ "$self_check" = 1 ]; then
  rates_arg=20000
  step_secs=2
  bisect=0
fi
if [ -n "$out" ]; then
  out=$(from_caller "$out")
else
  out=bench-results/peers-$(date -u +%Y%m%dT%H%M%SZ)
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# 250k, 1.5M, 2000000 -> integers, in the order given.
rates=()
IFS=, read -ra parts <<<"$rates_arg"
for r in "${parts[@]}"; do
  n=$(awk -v r="$r" 'BEGIN {
    m = 1; s = r
    if (s ~ /[kK]$/) { m = 1000; sub(/[kK]$/, "", s) } else if (s ~ /[mM]$/) { m = 1000000; sub(/[mM]$/, "", s) }
    if (s !~ /^[0-9]+(\.[0-9]+)?$/) exit 1
    printf "%d", s * m + 0.5 }') || die "bad rate '$r' in '$rates_arg'"
  [ "$n" -gt 0 ] || die "rate '$r' is zero"
  rates+=("$n")
done
[ ${#rates[@]} -gt 0 ] || die "no rates"
if ! [[ $step_secs =~ ^[0-9]+$ ]] || [ "$step_secs" -lt 1 ]; then
  die "step seconds must be a whole number >= 1"
fi

for tool in jq taskset ss python3 awk; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed: run scripts/install-deps.sh"
done

if [ -n "${FLOWPLANE_BIN:-}" ]; then
  bin=$(from_caller "$FLOWPLANE_BIN")
else
  cargo build --release --bin flowplane >&2
  bin=${CARGO_TARGET_DIR:-target}/release/flowplane
fi
[ -x "$bin" ] || die "flowplane binary $bin not found"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

dir=$(mktemp -d)
started_services=0
saved_rmem=""
coll_pid=""
cleanup() {
  if [ -n "$coll_pid" ] && kill -0 "$coll_pid" 2>/dev/null; then
    kill -TERM "$coll_pid" 2>/dev/null || true
    wait "$coll_pid" 2>/dev/null || true
  fi
  if [ -n "$saved_rmem" ]; then
    echo "$saved_rmem" >/proc/sys/net/core/rmem_max || true
  fi
  if [ "$started_services" = 1 ]; then
    scripts/services.sh stop >&2 || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Which collectors run: asked for, and their tools present (the self-check skips the absent ones;
# a real run fails so that a missing tool is not mistaken for a result).
has_bench=0
"$bin" bench --help >/dev/null 2>&1 && has_bench=1
has_gen=0
"$bin" gen --help >/dev/null 2>&1 && has_gen=1
run_list=()
skipped=()
IFS=, read -ra asked <<<"$collectors"
for c in "${asked[@]}"; do
  case $c in
  nfcapd) need=(nfcapd nfdump) ;;
  nfacctd) need=(nfacctd pmacct) ;;
  flowplane) need=() ;;
  *) die "unknown collector '$c' (nfcapd, nfacctd, flowplane)" ;;
  esac
  missing=""
  for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || missing="$missing $t"; done
  if [ "$c" = flowplane ] && [ "$has_bench" = 0 ]; then missing=" flowplane-bench"; fi
  if [ -n "$missing" ]; then
    [ "$self_check" = 1 ] || die "$c cannot run, missing:$missing (scripts/install-deps.sh)"
    skipped+=("$c (missing:$missing)")
    note "self-check: skipping $c, missing:$missing"
    continue
  fi
  run_list+=("$c")
done
[ ${#run_list[@]} -gt 0 ] || die "no collector to run"

case $gen_mode in
auto) [ "$has_gen" = 1 ] && gen_mode=gen || gen_mode=replay ;;
gen) [ "$has_gen" = 1 ] || die "this flowplane has no 'gen' command" ;;
replay) ;;
*) die "FLOWPLANE_PEERS_GEN must be auto, gen or replay" ;;
esac
if [ "$gen_mode" = replay ]; then
  [ -f "$capture" ] || die "stand-in capture $capture not found (FLOWPLANE_PEERS_CAPTURE)"
  # Records and datagrams in one pass of the capture, as flowplane decodes them.
  cap_summary=$("$bin" decode --json "$capture" 2>&1 >/dev/null | tail -n 1)
  cap_records=$(jq -r '.records' <<<"$cap_summary")
  cap_datagrams=$(jq -r '.datagrams' <<<"$cap_summary")
  cap_formats=$(jq -r '.formats // {} | with_entries(select(.value > 0)) | keys | join("+")' <<<"$cap_summary" 2>/dev/null || true)
  if ! [[ $cap_records =~ ^[1-9][0-9]*$ && $cap_datagrams =~ ^[1-9][0-9]*$ ]]; then
    die "cannot count the records of $capture: $cap_summary"
  fi
  note "generator: flowplane gen is not in this binary; stand-in: flowplane replay of $capture \
($cap_records records in $cap_datagrams datagrams a pass)"
fi

# Cores: generator on CPU 0, collectors on the rest.
cpus=$(nproc)
if [ "$cpus" -ge 2 ]; then
  gen_cpu=0
  coll_cpus="1-$((cpus - 1))"
  coll_list=$(seq -s, 1 $((cpus - 1)))
  cores_text="$cpus CPUs: generator pinned to CPU 0, collector to CPU(s) $coll_cpus (taskset)"
else
  gen_cpu=""
  coll_cpus=""
  coll_list=""
  cores_text="1 CPU: generator and collector share it"
fi
# Command prefixes (taskset execs the program, so $! is the collector itself).
pin_coll=()
pin_gen=()
[ -n "$coll_cpus" ] && pin_coll=(taskset -c "$coll_cpus")
[ -n "$gen_cpu" ] && pin_gen=(taskset -c "$gen_cpu")

rmem_max=$(cat /proc/sys/net/core/rmem_max)
rmem_text="net.core.rmem_max: $rmem_max"
if [ "$raise_rmem" = 1 ] && [ "$rmem_max" -lt "$rcvbuf" ]; then
  if echo "$rcvbuf" 2>/dev/null >/proc/sys/net/core/rmem_max; then
    saved_rmem=$rmem_max
    note "net.core.rmem_max raised from $saved_rmem to $rcvbuf for this run"
    rmem_text="net.core.rmem_max: raised from $saved_rmem to $rcvbuf for the run, so every collector could get the buffer it asked for"
    rmem_max=$rcvbuf
  else
    note "cannot raise net.core.rmem_max (not root?): nfcapd and nfacctd get at most $rmem_max"
  fi
fi
if [ "$rmem_max" -lt "$rcvbuf" ]; then
  rmem_text="net.core.rmem_max: $rmem_max, below the buffer asked for: nfcapd and nfacctd got less receive buffer than flowplane (SO_RCVBUFFORCE); see the granted sizes below"
fi

port_hex=$(printf '%04X' "$port")
# /proc/net/udp line of our socket (127.0.0.1:port).
udp_line() { awk -v a="0100007F:$port_hex" '$2 == a' /proc/net/udp; }
port_bound() { [ -n "$(udp_line)" ]; }
kernel_drops() { udp_line | awk '{ s += $NF } END { print s + 0 }'; }
# Receive buffer the kernel granted the collector's socket (ss: skmem rb).
granted_rb() { ss -Huanm "sport = :$port" 2>/dev/null | grep -o 'rb[0-9]*' | head -n 1 | tr -d rb; }

wait_free() {
  local i
  for ((i = 0; i < 100; i++)); do port_bound || return 0; sleep 0.1; done
  die "UDP port $port stays taken: $(udp_line)"
}
wait_bound() {
  local what=$1 log=$2 i
  for ((i = 0; i < 100; i++)); do
    port_bound && return 0
    kill -0 "$coll_pid" 2>/dev/null || { cat "$log" >&2; die "$what exited at start"; }
    sleep 0.1
  done
  cat "$log" >&2
  die "$what did not bind 127.0.0.1:$port"
}
stop_coll() {
  local sig=$1 i
  kill "-$sig" "$coll_pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do kill -0 "$coll_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$coll_pid" 2>/dev/null && kill -KILL "$coll_pid" 2>/dev/null
  wait "$coll_pid" 2>/dev/null || true
  coll_pid=""
}

# Runs the generator for one step; sets gen_sent (records), gen_secs, gen_rate (records/s it
# reached) and gen_errors.
generate() {
  local rate=$1 json=$2
  if [ "$gen_mode" = gen ]; then
    local cpu_arg=()
    [ -n "$gen_cpu" ] && cpu_arg=(--cpu "$gen_cpu")
    "$bin" gen --to "127.0.0.1:$port" --format "$format" --rate "$rate" --duration "$step_secs" \
      --exporters "$exporters" --records-per-datagram "$rpd" --flows "$flows" "${cpu_arg[@]}" \
      --json >"$json" 2>"$json.err" || { cat "$json.err" >&2; die "flowplane gen failed"; }
    gen_sent=$(jq -r '.records' "$json")
    gen_secs=$(jq -r '.duration_secs' "$json")
    gen_errors=$(jq -r '.send_errors' "$json")
  else
    # Whole passes only, so that the records sent are known exactly.
    local passes dgps line sent_dg
    passes=$(((rate * step_secs + cap_records - 1) / cap_records))
    dgps=$(((rate * cap_datagrams + cap_records - 1) / cap_records))
    line=$("${pin_gen[@]}" "$bin" replay "$capture" --to "127.0.0.1:$port" --loop "$passes" \
      --rate "$dgps" --senders 1 2>&1 | grep 'replay: sent' | tail -n 1) || die "replay failed"
    sent_dg=$(grep -o 'sent [0-9]*' <<<"$line" | cut -d' ' -f2)
    gen_secs=$(grep -o 'in [0-9.]* s' <<<"$line" | cut -d' ' -f2)
    gen_errors=$((passes * cap_datagrams - sent_dg))
    gen_sent=$((sent_dg == passes * cap_datagrams ? passes * cap_records : 0))
    [ "$gen_sent" -gt 0 ] || die "replay sent $sent_dg of $((passes * cap_datagrams)) datagrams: $line"
    jq -n --arg line "$line" --argjson passes "$passes" --argjson records "$gen_sent" \
      --argjson secs "$gen_secs" '{standin: "flowplane replay", summary: $line, passes: $passes,
      records: $records, duration_secs: $secs}' >"$json"
  fi
  gen_rate=$(awk -v r="$gen_sent" -v s="$gen_secs" 'BEGIN { printf "%d", (s > 0 ? r / s : 0) }')
}

# NetFlow v5 flush load for nfacctd (see the header): N records, IP protocol 253, from 127.0.0.254.
flush_v5() {
  python3 - "$port" "$1" <<'PY'
import socket, struct, sys, time
port, left = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.254", 0))
rec = struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", socket.inet_aton("198.51.100.1"),
                  socket.inet_aton("198.51.100.2"), bytes(4), 0, 0, 1, 64, 0, 0, 0, 0, 0, 0,
                  253, 0, 0, 0, 0, 0, 0)
seq = 0
while left > 0:
    n = min(30, left)
    s.sendto(struct.pack("!HHIIIIBBH", 5, n, 0, int(time.time()), 0, seq, 0, 0, 0) + rec * n,
             ("127.0.0.1", port))
    seq += n
    left -= n
    time.sleep(0.0002)
PY
}

# nfacctd: what an operator would set for millions of records/s. The socket buffer is the one every
# collector asks for; the core->plugin queue is 100 MB in 100 kB chunks (CONFIG-KEYS: a ratio
# between 1:100 and 1:1000 is good practice; the 4 MB default queue and unbuffered transfers are
# for small sites); the memory table gets up to 256 pools of 1 MiB (the default, 16 pools of
# 8 kB, cannot hold 100000 aggregates, and 0 pools, documented as "grow as needed", still logs
# "Unable to allocate more memory pools" in 1.7.7) and a prime number of buckets above the flow
# count.
pm_buffer=102400
pm_pipe=102400000
pm_buckets=131071
pm_pools=256
pm_pool_size=1048576
# Flush load: twice the buffer at 64 bytes a record (a queued record takes several hundred).
pm_flush=$((2 * pm_buffer / 64))

# One step of a peer collector. Appends a JSON object to $dir/steps-$name.jsonl and sets
# step_loss and step_pass.
run_peer_step() {
  local name=$1 rate=$2 sd counted drops rb extra="{}" log
  sd="$dir/$name-$rate"
  mkdir -p "$sd"
  log="$sd/$name.log"
  wait_free
  case $name in
  nfcapd)
    mkdir -p "$sd/flows"
    # No compression (the cheapest way to write), rotation longer than a step so that one file
    # holds it, no config file.
    "${pin_coll[@]}" nfcapd -w "$sd/flows" -b 127.0.0.1 -p "$port" -B "$rcvbuf" -t 3600 -C none \
      >"$log" 2>&1 &
    ;;
  nfacctd)
    cat >"$sd/nfacctd.conf" <<CONF
daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: $port
nfacctd_pipe_size: $rcvbuf
plugins: memory
aggregate: src_host, dst_host, src_port, dst_port, proto, flows
imt_path: $sd/pmacct.pipe
imt_buckets: $pm_buckets
imt_mem_pools_number: $pm_pools
imt_mem_pools_size: $pm_pool_size
plugin_buffer_size: $pm_buffer
plugin_pipe_size: $pm_pipe
CONF
    "${pin_coll[@]}" nfacctd -f "$sd/nfacctd.conf" >"$log" 2>&1 &
    ;;
  esac
  coll_pid=$!
  wait_bound "$name" "$log"
  if [ "$name" = nfacctd ]; then
    # The memory plugin answers on its pipe once it is up.
    local i
    for ((i = 0; i < 50; i++)); do
      pmacct -p "$sd/pmacct.pipe" -t >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  rb=$(granted_rb)
  generate "$rate" "$sd/gen.json"
  sleep "$drain"
  local table flush_seen=0 packets entries attempt complete=true
  if [ "$name" = nfacctd ]; then
    # A plugin still working through a backlog may not have reached the flush yet, or the queue
    # may have dropped it: wait, and flush again, up to three times.
    for ((attempt = 1; attempt <= 3; attempt++)); do
      flush_v5 "$pm_flush"
      sleep "$drain"
      pmacct -p "$sd/pmacct.pipe" -s -u -O csv >"$sd/table.csv" 2>"$sd/table.err" || true
      table=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
        $h["PROTOCOL"] == 253 { f += $h["FLOWS"]; next }
        { r += $h["FLOWS"]; p += $h["PACKETS"]; n++ }
        END { printf "%d %d %d %d", r, f, p, n }' "$sd/table.csv")
      read -r counted flush_seen packets entries <<<"$table"
      [ "$flush_seen" -gt 0 ] && break
    done
    if [ "$flush_seen" -eq 0 ]; then
      complete=false
      note "nfacctd: no flush record reached the memory table after 3 flushes; the count is a \
lower bound and the step's loss an upper bound"
    fi
  fi
  drops=$(kernel_drops)
  case $name in
  nfcapd)
    stop_coll TERM
    counted=$({ nfdump -R "$sd/flows" -I 2>/dev/null || true; } | awk '$1 == "Flows:" { print $2; exit }')
    local logged
    logged=$(grep -o "Flows: [0-9]*" "$log" | tail -n 1 | cut -d' ' -f2)
    local bytes
    bytes=$(du -sb "$sd/flows" | cut -f1)
    extra=$(jq -n --arg l "${logged:-}" --argjson b "$bytes" \
      '{nfcapd_log_flows: ($l | tonumber? // null), nfcapd_file_bytes: $b}')
    # A 30 s step at millions of records/s leaves gigabytes; the count is taken.
    rm -rf "$sd/flows"
    ;;
  nfacctd)
    stop_coll INT
    extra=$(jq -n --argjson f "$flush_seen" --argjson p "$packets" --argjson e "$entries" \
      --argjson complete "$complete" --argjson a "$attempt" \
      --arg m "$(grep -ci 'missing data detected' "$log" || true)" \
      --arg full "$(grep -ci 'unable to allocate more memory pools' "$log" || true)" \
      '{flush_records_seen: $f, flushes_sent: ([$a, 3] | min), count_complete: $complete,
        packets: $p, table_entries: $e,
        missing_data_warnings: ($m | tonumber), table_full_warnings: ($full | tonumber)}')
    ;;
  esac
  mkdir -p "$out/logs"
  cp "$log" "$out/logs/$name-$rate.log"
  [ -n "$counted" ] || { cat "$log" >&2; die "$name: no record count"; }
  step_loss=$(awk -v s="$gen_sent" -v c="$counted" 'BEGIN { printf "%.8f", (s - c) / s }')
  step_pass=$(awk -v l="$step_loss" 'BEGIN { print (l < 0.0001 ? "true" : "false") }')
  jq -nc --argjson rate "$rate" --argjson sent "$gen_sent" --argjson counted "$counted" \
    --argjson loss "$step_loss" --argjson pass "$step_pass" --argjson drops "${drops:-0}" \
    --arg rb "${rb:-}" --argjson reached "$gen_rate" --argjson errors "${gen_errors:-0}" \
    --argjson extra "$extra" --slurpfile gen "$sd/gen.json" \
    '{offered_records_per_sec: $rate, generator_records_per_sec: $reached,
      records_sent: $sent, records_counted: $counted, loss: $loss, loss_free: $pass,
      kernel_drops_datagrams: $drops, socket_rcvbuf_bytes: ($rb | tonumber? // null),
      generator_send_errors: $errors, generator: $gen[0]} + $extra' >>"$dir/steps-$name.jsonl"
  printf '%-9s %12s rec/s offered %12s reached  sent %12s  counted %12s  loss %9.5f %%  drops %s  %s\n' \
    "$name" "$rate" "$gen_rate" "$gen_sent" "$counted" \
    "$(awk -v l="$step_loss" 'BEGIN { print l * 100 }')" "${drops:-0}" \
    "$([ "$step_pass" = true ] && echo pass || echo FAIL)" >&2
}

# Climbs the ladder for a peer collector: stops after the first failing step, or when the
# generator did not reach 95 % of the offered rate (higher steps would not offer more).
climb_peer() {
  local name=$1 r last_pass="" first_fail=""
  : >"$dir/steps-$name.jsonl"
  for r in "${rates[@]}"; do
    run_peer_step "$name" "$r"
    if [ "$step_pass" = true ]; then
      last_pass=$r
      if [ "$gen_rate" -lt $((r * 95 / 100)) ]; then
        note "$name: the generator reached $gen_rate of $r records/s; stopping the climb"
        break
      fi
    else
      first_fail=$r
      break
    fi
  done
  if [ "$bisect" = 1 ] && [ -n "$last_pass" ] && [ -n "$first_fail" ]; then
    run_peer_step "$name" $(((last_pass + first_fail) / 2))
  fi
}

# flowplane: `flowplane bench` climbs the same ladder with its own generator and accounting. It
# writes DIR/bench.json and DIR/bench.md (`--out DIR`); a build that takes `--json FILE
# --markdown FILE` instead (the first plan for it) is driven that way. When the bench bisects by
# itself (`--refine N`) it is asked for as many bisection steps as the peers get (0 or 1).
bench_help=""
run_bench() {
  local rates_csv=$1 tag=$2 args=()
  args=(--rates "$rates_csv" --step-secs "$step_secs" --format "$format" --flows "$flows"
    --exporters "$exporters" --records-per-datagram "$rpd" --port "$port")
  [ -n "$gen_cpu" ] && args+=(--gen-cpu "$gen_cpu" --collector-cpus "$coll_list")
  grep -qE -- '^ +(-[a-zA-Z], )?--refine( |$)' <<<"$bench_help" && args+=(--refine "$bisect")
  if grep -qE -- '^ +(-[a-zA-Z], )?--json( |$)' <<<"$bench_help"; then
    args+=(--json "$dir/$tag.json" --markdown "$dir/$tag.md")
  else
    args+=(--out "$dir/$tag")
  fi
  wait_free
  "$bin" bench "${args[@]}" >&2 || die "flowplane bench failed"
  if [ -f "$dir/$tag/bench.json" ]; then
    cp "$dir/$tag/bench.json" "$dir/$tag.json"
    [ -f "$dir/$tag/bench.md" ] && cp "$dir/$tag/bench.md" "$dir/$tag.md"
  fi
  [ -f "$dir/$tag.json" ] || die "flowplane bench wrote no JSON result"
  cp "$dir/$tag.json" "$out/$tag.json"
  [ -f "$dir/$tag.md" ] && cp "$dir/$tag.md" "$out/$tag.md"
  # The same field names as the peers' steps where the bench names them otherwise.
  jq -c '.steps[] | .records_counted //= .records_accounted
    | .generator_records_per_sec //= .achieved_records_per_sec' "$dir/$tag.json" \
    >>"$dir/steps-flowplane.jsonl"
}
run_flowplane() {
  local rates_csv r lp ff
  rates_csv=$(
    IFS=,
    echo "${rates[*]}"
  )
  if ! scripts/services.sh status >/dev/null 2>&1; then
    scripts/services.sh start >&2
    started_services=1
  fi
  bench_help=$("$bin" bench --help 2>&1)
  : >"$dir/steps-flowplane.jsonl"
  run_bench "$rates_csv" flowplane-bench
  if [ "$bisect" = 1 ] && ! grep -qE -- '^ +(-[a-zA-Z], )?--refine( |$)' <<<"$bench_help"; then
    lp=$(jq -s '[.[] | select(.loss_free)] | max_by(.offered_records_per_sec)
      | .offered_records_per_sec // empty' "$dir/steps-flowplane.jsonl")
    ff=$(jq -s '[.[] | select(.loss_free | not)] | min_by(.offered_records_per_sec)
      | .offered_records_per_sec // empty' "$dir/steps-flowplane.jsonl")
    if [ -n "$lp" ] && [ -n "$ff" ]; then
      r=$(awk -v a="$lp" -v b="$ff" 'BEGIN { printf "%d", (a + b) / 2 }')
      run_bench "$r" flowplane-bisect
    fi
  fi
}

version_of() {
  case $1 in
  nfcapd) nfcapd -V 2>&1 | head -n 1 | sed 's/^nfcapd: *Version: */nfcapd /' ;;
  nfacctd) nfacctd -V 2>&1 | head -n 1 | grep -o 'nfacctd [^ ]*' ;;
  flowplane) "$bin" --version 2>&1 | head -n 1 ;;
  esac
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
note "collectors: ${run_list[*]}; rates: ${rates[*]}; $step_secs s a step; $cores_text"
for c in "${run_list[@]}"; do
  case $c in
  flowplane) run_flowplane ;;
  *) climb_peer "$c" ;;
  esac
done

# Summary per collector, from its steps in the order they ran (a bisection step last): the
# highest loss-free offered rate below the first failing rung, and that failure.
summary_of() {
  jq -s --arg name "$1" --arg version "$(version_of "$1")" '
    (map(select(.loss_free | not)) | min_by(.offered_records_per_sec)) as $fail
    | (map(select(.loss_free and ($fail == null or .offered_records_per_sec < $fail.offered_records_per_sec)))
       | max_by(.offered_records_per_sec)) as $pass
    | {collector: $name, version: $version,
       max_loss_free_records_per_sec: ($pass.offered_records_per_sec // 0),
       max_loss_free_generator_records_per_sec: ($pass.generator_records_per_sec // null),
       generator_limited: (($pass.generator_records_per_sec // null) as $g
         | $g != null and $g < 0.95 * $pass.offered_records_per_sec),
       first_failing_records_per_sec: ($fail.offered_records_per_sec // null),
       first_failing_loss: ($fail.loss // null),
       ladder_top_passed: ($fail == null),
       steps: .}' "$dir/steps-$1.jsonl"
}
summaries=()
for c in "${run_list[@]}"; do summaries+=("$(summary_of "$c")"); done
short=$([ "$step_secs" -lt 30 ] && echo true || echo false)
gen_text=$([ "$gen_mode" = gen ] && echo "flowplane gen ($format, $exporters exporters, $rpd records a datagram, $flows flows)" ||
  echo "stand-in: flowplane replay of $(basename "$capture") (${cap_formats:-?}) in whole passes ($cap_records records in $cap_datagrams datagrams a pass); flowplane gen was not in this build")
printf '%s\n' "${summaries[@]}" | jq -s --arg started "$started" --arg host "$(uname -n)" \
  --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
  --argjson cpus "$cpus" --arg cores "$cores_text" --arg gen "$gen_text" \
  --argjson step "$step_secs" --argjson short "$short" --argjson rcvbuf "$rcvbuf" \
  --argjson rmem "$rmem_max" --arg rmemtext "$rmem_text" --arg format "$format" --argjson flows "$flows" \
  --argjson exporters "$exporters" --argjson rpd "$rpd" --argjson self "$self_check" \
  --argjson bisect "$bisect" --arg skipped "${skipped[*]:-}" '
  {started: $started, host: $host, cpu_model: $cpu, cpus: $cpus, cores: $cores,
   generator: $gen, format: $format, flows: $flows, exporters: $exporters,
   records_per_datagram: $rpd, step_secs: $step, short_check: $short, self_check: ($self == 1),
   bisect: ($bisect == 1), loss_threshold: 0.0001, rcvbuf_requested_bytes: $rcvbuf,
   rmem_max_bytes: $rmem, rmem_note: $rmemtext, skipped: ($skipped | if . == "" then [] else [.] end),
   collectors: .}' >"$out/peers.json"

# Markdown report.
{
  echo "# flowplane and peers: highest loss-free rate"
  echo
  if [ "$short" = true ]; then
    echo "**Short check: $step_secs s steps, below the 30 s sustained step of issue 5. Not a result.**"
    echo
  fi
  echo "| collector | version | highest loss-free records/s | first failing records/s (loss) | flowplane / collector |"
  echo "|---|---|---:|---:|---:|"
  jq -r '
    (.collectors | map(select(.collector == "flowplane")) | .[0].max_loss_free_records_per_sec // null) as $fp
    | .collectors[]
    | [.collector, .version,
       ((.max_loss_free_records_per_sec | tostring)
        + (if .generator_limited then " (the generator reached only \(.max_loss_free_generator_records_per_sec))" else "" end)
        + (if .ladder_top_passed then " (top of the ladder)" else "" end)),
       (if .first_failing_records_per_sec == null then "none"
        else "\(.first_failing_records_per_sec) (\(.first_failing_loss * 100 | . * 10000 | round / 10000) %)" end),
       (if $fp == null then "n/a (flowplane not run)"
        elif .collector == "flowplane" then "1"
        elif .max_loss_free_records_per_sec == 0 then "n/a (no loss-free step)"
        else "\($fp / .max_loss_free_records_per_sec * 100 | round / 100)" end)]
    | "| " + join(" | ") + " |"' "$out/peers.json"
  echo
  jq -r '"- Machine: \(.host), \(.cpu_model), \(.cores).",
    "- Generator: \(.generator); steps of \(.step_secs) s, each with a freshly started collector; a step passes when loss < 0.01 %; the climb stops at the first failing step\(if .bisect then " (then one step halfway back)" else "" end).",
    "- Receive buffer asked of every collector: \(.rcvbuf_requested_bytes) bytes; \(.rmem_note)."' "$out/peers.json"
  jq -r '.collectors[] | select(.collector != "flowplane")
    | "- \(.collector): socket buffer granted (ss rb): \([.steps[].socket_rcvbuf_bytes] | unique | map(tostring) | join(", ")) bytes; kernel drops per step: \([.steps[].kernel_drops_datagrams] | map(tostring) | join(", ")) datagrams\(if .collector == "nfacctd" then "; \"missing data detected\" (core to plugin queue overflow) warnings per step: \([.steps[].missing_data_warnings] | map(tostring) | join(", ")); memory table full warnings per step: \([.steps[].table_full_warnings] | map(tostring) | join(", "))\([.steps[] | select(.count_complete == false) | .offered_records_per_sec] | if length > 0 then "; flush never seen (count a lower bound, loss an upper bound) at: \(map(tostring) | join(", "))" else "" end)" else "" end)."' "$out/peers.json"
  echo "- Counting: nfcapd = flows in its files after SIGTERM (\`nfdump -R DIR -I\`); nfacctd = sum of the FLOWS counter of its memory table (\`pmacct -s\`, 5-tuple + flows), after a flush load of marked v5 records it leaves out; flowplane = \`flowplane bench\`'s own accounting. Loss = (records sent - records counted) / records sent, kernel drops included."
  if [[ " ${run_list[*]} " == *" nfcapd "* ]]; then
    echo "- nfcapd wrote its files under $(dirname "$dir") ($(stat -f -c %T "$dir") file system; set TMPDIR to move them), each step's deleted once counted."
  fi
  echo "- nfacctd settings: nfacctd_pipe_size $rcvbuf, plugin_buffer_size $pm_buffer, plugin_pipe_size $pm_pipe, imt_buckets $pm_buckets, imt_mem_pools_number $pm_pools, imt_mem_pools_size $pm_pool_size. nfcapd: no compression, -B $rcvbuf."
  if [ ${#skipped[@]} -gt 0 ]; then echo "- Not run: ${skipped[*]}."; fi
  echo "- Every step's numbers: peers.json; nfcapd's and nfacctd's logs: logs/."
} | tee "$out/peers.md"

if [ "$self_check" = 1 ]; then
  bad=$(jq -r '.collectors[] | select(.max_loss_free_records_per_sec == 0) | .collector' "$out/peers.json")
  [ -z "$bad" ] || die "self-check: no loss-free step for: $bad"
  note "self-check: every collector run had a loss-free step"
fi
note "written: $out/peers.md, $out/peers.json"
