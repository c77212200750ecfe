#!/usr/bin/env bash
# Soak: guests reconnecting in a loop (testpmd), a MAC flood, hostile frontends and
# testpmd traffic at once for MINUTES, then the switch's RSS, open fds, mappings and
# free mbufs compared with the start (tests/soak.rs). Needs what scripts/test.sh
# installs (dpdk-testpmd, hugepages).
set -euo pipefail
if [ $# -ne 1 ] || ! [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
  echo "usage: $0 MINUTES" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
SOAK_MINUTES=$1 exec cargo test --release --test soak -- --ignored --nocapture --test-threads=1
