#!/usr/bin/env bash
# The whole test suite: installs what the tests need (QEMU 10, DPDK testpmd, the
# guest kernel and busybox, hugepages), builds, and runs every test against the
# real peers, then each fuzz target briefly from its corpus (scripts/fuzz.sh), so a
# change that breaks what the fuzzer once checked fails here. Must run as root.
# Tests run one at a time: they share two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads=1
# The diagnosis build (cycles per loop step, benches/pvp) compiles and counts.
cargo test --release -p switch --features step-cycles --lib steps
# Each fuzz target for 45 s (seven targets: about 5 minutes, after their build).
bash scripts/fuzz.sh "${VSWITCH_FUZZ_SECS:-45}"
