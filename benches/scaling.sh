#!/usr/bin/env bash
# Measures what one machine holds: runs `flowplane run` with 1, 2, 4, ... workers against
# `flowplane replay` as a load generator on loopback, and prints records/s per worker count,
# so that an operator with a 16- or 32-core box can produce the measured row of the sizing table
# for that box (see docs/benchmarks.md and docs/hardware-profiles.md).
#
#   benches/scaling.sh [CAPTURE]
#
# CAPTURE is a capture of flow exports to replay (pcap, pcapng or raw dump); default: the
# NetFlow v5 capture of ../shared/corpus when present. Environment:
#
#   FLOWPLANE_SCALING_MAX      largest worker count (default: CPUs - 1, at least 1)
#   FLOWPLANE_SCALING_SECONDS  seconds of load per worker count (default 10)
#   FLOWPLANE_SCALING_SENDERS  generator threads (default: half the CPUs, at least 1)
#   FLOWPLANE_SCALING_RECEIVE  engine.receive: auto, io_uring or recvmmsg (default auto)
#   FLOWPLANE_SCALING_SINKS    1 to write to Valkey and Kafka as well (default 0: the data
#                              plane alone; scripts/services.sh start first)
#
# The generator runs on the same machine and takes CPUs from the workers: on a small machine
# the figures are a floor. For a clean measurement, pin the generator to cores the workers do
# not use (taskset) or run it on a second machine against the appliance's address.
set -euo pipefail
cd "$(dirname "$0")/.."

capture=${1:-../shared/corpus/akvorado/nfv5.pcap}
[ -f "$capture" ] || { echo "scaling: capture $capture not found; pass one" >&2; exit 1; }
cpus=$(nproc)
max=${FLOWPLANE_SCALING_MAX:-$(( cpus > 1 ? cpus - 1 : 1 ))}
secs=${FLOWPLANE_SCALING_SECONDS:-10}
senders=${FLOWPLANE_SCALING_SENDERS:-$(( cpus / 2 > 0 ? cpus / 2 : 1 ))}
receive=${FLOWPLANE_SCALING_RECEIVE:-auto}
sinks=${FLOWPLANE_SCALING_SINKS:-0}
port=${FLOWPLANE_SCALING_PORT:-2099}

cargo build --release --bin flowplane >&2
bin=${CARGO_TARGET_DIR:-target}/release/flowplane
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

counts=()
for ((n = 1; n <= max; n *= 2)); do counts+=("$n"); done
[ "${counts[-1]}" = "$max" ] || counts+=("$max")

sink_toggle=$([ "$sinks" = 1 ] && echo true || echo false)
printf '%-8s %-10s %14s %14s %14s %16s %12s\n' workers receive "offered dg/s" "received dg/s" \
  "records/s" "records/s/worker" "socket drops"
for n in "${counts[@]}"; do
  cat > "$dir/flowplane.toml" <<TOML
[engine]
listen = ["127.0.0.1:$port"]
workers = $n
receive = "$receive"
stats_interval_secs = 60
[valkey]
enabled = $sink_toggle
key_prefix = "fpscaling"
[kafka]
enabled = $sink_toggle
aggregates_topic = "fpscaling.aggregates"
alerts_topic = "fpscaling.alerts"
TOML
  "$bin" run --config "$dir/flowplane.toml" 2> "$dir/run.log" &
  fp=$!
  for _ in $(seq 1 100); do
    grep -q "Listening" "$dir/run.log" 2>/dev/null && break
    kill -0 "$fp" 2>/dev/null || { cat "$dir/run.log" >&2; exit 1; }
    sleep 0.1
  done
  backend=$(grep -o 'backend="[a-z_]*"' "$dir/run.log" | head -n 1 | cut -d'"' -f2)
  sent=$(timeout -s INT "$secs" "$bin" replay "$capture" --to "127.0.0.1:$port" --loop 0 \
    --senders "$senders" | grep -o 'sent [0-9]*' | cut -d' ' -f2 || true)
  sleep 1
  kill -INT "$fp"
  wait "$fp" || true
  line=$(grep "Stopped:" "$dir/run.log" | tail -n 1)
  get() { grep -o " $1=[0-9]*" <<<"$line" | head -n 1 | cut -d= -f2; }
  datagrams=$(get datagrams); records=$(get records); drops=$(get socket_drops)
  awk -v n="$n" -v b="${backend:-?}" -v s="${sent:-0}" -v d="$datagrams" -v r="$records" \
    -v t="$secs" -v x="$drops" \
    'BEGIN { printf "%-8s %-10s %14.0f %14.0f %14.0f %16.0f %12s\n", n, b, s/t, d/t, r/t, r/t/n, x }'
done
