#!/usr/bin/env bash
# See it work: reserves hugepages, starts the switch with configs/two-vms.toml,
# boots two tiny QEMU guests on its vhost-user sockets, has them ping each other
# and prints the switch's ports, counters and forwarding table. Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
bash tests/guest/build.sh target/guest
mkdir -p /tmp/vswitch
log=$(mktemp)
./target/release/vswitch run --config configs/two-vms.toml 2>"$log" &
sw=$!
trap 'kill -TERM $sw 2>/dev/null; wait $sw 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 50); do [ -S /tmp/vswitch/ctl.sock ] && break; sleep 0.1; done
echo "== switch started (pid $sw); booting two guests under TCG (about 10 s)"
bash tests/guest/qemu-guest.sh --sock /tmp/vswitch/vm2.sock --images target/guest --mac 52:54:00:00:00:0b \
  --append "vsw.ip=10.0.0.2/24 vsw.role=idle vsw.secs=60" > /tmp/vswitch/guest-b.log 2>&1 &
gb=$!
bash tests/guest/qemu-guest.sh --sock /tmp/vswitch/vm1.sock --images target/guest --mac 52:54:00:00:00:0a \
  --append "vsw.ip=10.0.0.1/24 vsw.role=ping vsw.peer=10.0.0.2 vsw.count=5" > /tmp/vswitch/guest-a.log 2>&1
echo "== guest A (10.0.0.1) pinging guest B (10.0.0.2) through the switch:"
grep -h "VSW-PING\|VSW-ERROR" /tmp/vswitch/guest-a.log
echo "== vswitch ctl show"
./target/release/vswitch ctl --socket /tmp/vswitch/ctl.sock show
echo "== vswitch ctl stats"
./target/release/vswitch ctl --socket /tmp/vswitch/ctl.sock stats
echo "== vswitch ctl fdb"
./target/release/vswitch ctl --socket /tmp/vswitch/ctl.sock fdb
kill $gb 2>/dev/null || true
grep -q "VSW-PING sent=5 received=5" /tmp/vswitch/guest-a.log
