#!/usr/bin/env bash
# The main job on one machine: installs what is needed, starts a real Valkey server and a real
# Kafka-protocol broker on loopback, builds and starts flowplane, feeds it real traffic, and shows
# what arrived.
#
# Traffic: softflowd watches the loopback interface live and exports what it sees as IPFIX to
# flowplane (the Valkey and Kafka traffic that flowplane itself causes, plus a redis-benchmark
# run against the local Valkey), and `flowplane replay` sends the NetFlow v5 and sFlow captures
# of ../shared/corpus when they are present. Nothing in the traffic is synthetic.
#
#   FLOWPLANE_DEMO_SECONDS   how long to feed traffic before showing results (default 20;
#                            0 = keep flowplane running until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${FLOWPLANE_DEMO_SECONDS:-20}
mkdir -p .run

scripts/install-deps.sh
scripts/services.sh start

echo "demo: building flowplane (release)"
cargo build --release --bin flowplane
bin=$root/target/release/flowplane

cfg=.run/demo.toml
cat > "$cfg" <<TOML
[engine]
listen = ["127.0.0.1:2055", "127.0.0.1:4739", "127.0.0.1:6343"]
dimensions = ["src_ip", "dst_ip", "dst_port", "protocol", "exporter", "src_ip+dst_port+protocol"]
stats_interval_secs = 5

[valkey]
url = "redis://127.0.0.1:${FLOWPLANE_VALKEY_PORT:-6379}"

[kafka]
brokers = "127.0.0.1:${FLOWPLANE_KAFKA_PORT:-9092}"
TOML

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "demo: starting flowplane (log: .run/flowplane.log)"
"$bin" run --config "$cfg" > .run/flowplane.log 2>&1 &
fp=$!
pids+=("$fp")
for _ in $(seq 1 50); do
  grep -q -i "listening" .run/flowplane.log 2>/dev/null && break
  kill -0 "$fp" 2>/dev/null || { cat .run/flowplane.log; echo "demo: flowplane exited"; exit 1; }
  sleep 0.2
done

echo "demo: softflowd exports live loopback traffic as IPFIX to 127.0.0.1:4739"
# Exclude the export itself from what softflowd watches, or it would count its own datagrams.
softflowd -d -i lo -n 127.0.0.1:4739 -v 10 -t maxlife=2 -t expint=1 \
  -p .run/softflowd.pid -c .run/softflowd.ctl 'not (udp port 4739 or udp port 2055)' \
  > .run/softflowd.log 2>&1 &
pids+=("$!")
sleep 1

end=$((SECONDS + (secs > 0 ? secs : 20)))
while [ $SECONDS -lt $end ]; do
  redis-benchmark -p "${FLOWPLANE_VALKEY_PORT:-6379}" -q -n 2000 -c 4 -t ping,set,get >/dev/null 2>&1 || true
  for f in ../shared/corpus/akvorado/nfv5.pcap ../shared/corpus/logstash-codec-netflow/netflow5.dat; do
    [ -f "$f" ] && "$bin" replay "$f" --to 127.0.0.1:2055 >/dev/null 2>&1 || true
  done
  for f in ../shared/corpus/akvorado/data-sflow-raw-ipv4.pcap \
           ../shared/corpus/tcpdump/sflow_multiple_counter_30_pdus.pcap; do
    [ -f "$f" ] && "$bin" replay "$f" --to 127.0.0.1:6343 >/dev/null 2>&1 || true
  done
  sleep 1
done

if [ "$secs" = 0 ]; then
  echo "demo: flowplane keeps running (Ctrl-C to stop); try: $bin top --config $cfg --dimension dst_port"
  wait "$fp"
  exit 0
fi

sleep 3
echo
echo "== top 10 destination ports by bytes, last minute (from Valkey) =="
"$bin" top --config "$cfg" --dimension dst_port --window 1m -n 10
echo
echo "== top 5 src_ip+dst_port+protocol by bytes, last 5 minutes (from Valkey) =="
"$bin" top --config "$cfg" --dimension src_ip+dst_port+protocol --window 5m -n 5
echo
echo "== busiest interfaces by utilisation, from sFlow counter samples (from Valkey) =="
"$bin" top --config "$cfg" --interfaces -n 5 || true
echo
echo "== one aggregate document from Kafka (topic flowplane.aggregates) =="
"$bin" kafka-tail --config "$cfg" --topic flowplane.aggregates -n 1
echo
echo "== flowplane's last summary line =="
grep -i "summary\|datagrams" .run/flowplane.log | tail -n 1 || true
