#!/usr/bin/env bash
# Installs what vswitch's tests and demo need on a Debian bookworm host, and reserves hugepages.
# Idempotent: safe to run again. Must run as root.
#  - QEMU 10 (bookworm-backports): the guests of the end-to-end tests.
#  - dpdk-dev: dpdk-testpmd with net_virtio_user, the DPDK peer.
#  - linux-image-amd64 + busybox-static: the tiny guest (kernel + initramfs).
#  - iputils-ping, iproute2, netsniff-ng (trafgen): host-side tools.
#  - tcpdump: sees the 802.1Q tags the kernel moved into metadata (tests/vlan.rs).
#  - iperf3, ethtool, python3: TCP through the switch with offloads (tests/offload.rs,
#    benches/tcp): iperf3 measures, python3 sends and checks data, ethtool sets a veth's
#    checksum offload.
#  - gnuplot-nox: benches/pvp --plot draws its table as an SVG.
#  - systemd: systemd-analyze, which checks the unit in dist/ (tests/service_files.rs);
#    installing the package does not make systemd the init where it is not.
#  - prometheus: promtool, which checks the /metrics exposition (tests/metrics.rs).
#  - frr: zebra and bgpd, BGP EVPN driving a VXLAN tunnel port (tests/vxlan.rs); the
#    tests start them by hand in their own network namespaces.
#  - cargo-fuzz and g++ (libFuzzer), for the fuzz targets in fuzz/ (which also need the nightly toolchain:
#    the rest of the project builds on stable).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: must run as root (apt-get, hugepage mount)" >&2
  exit 1
fi

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in dpdk-dev linux-image-amd64 busybox-static iputils-ping iproute2 cpio kmod netsniff-ng tcpdump iperf3 ethtool python3 g++ systemd gnuplot-nox prometheus frr; do
  have "$p" || need_pkgs+=("$p")
done
need_qemu=0
if ! command -v qemu-system-x86_64 >/dev/null || ! qemu-system-x86_64 --version | grep -qE 'version (9|1[0-9])\.'; then
  need_qemu=1
fi

if [ ${#need_pkgs[@]} -gt 0 ] || [ $need_qemu = 1 ]; then
  # bookworm-backports for QEMU 10, using the mirror this machine already uses for bookworm.
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      uri=$(awk '/^URIs:/{u=$2} /^Suites:/{ for(i=2;i<=NF;i++) if ($i=="bookworm") { print u; exit } }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
      uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
    fi
    if [ -z "$uri" ]; then
      echo "install-deps: no bookworm entry in apt's sources to take a mirror from" >&2
      exit 1
    fi
    echo "deb $uri bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  if [ ${#need_pkgs[@]} -gt 0 ]; then
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
  fi
  if [ $need_qemu = 1 ]; then
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-system-data
  fi
fi

# The fuzz targets: libFuzzer through cargo-fuzz, on nightly Rust (only fuzzing needs
# nightly: the demo and the switch build on stable, so a missing nightly is a warning
# here, and scripts/fuzz.sh is the one that fails).
if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || true
fi
if cargo +nightly --version >/dev/null 2>&1; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
  fi
else
  echo "install-deps: warning: no nightly toolchain (rustup toolchain install nightly); scripts/fuzz.sh will not run" >&2
fi

# Hugepages: 2 MiB pages on a hugetlbfs mount.
mkdir -p /dev/hugepages
mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
cur=$(cat /proc/sys/vm/nr_hugepages)
if [ "$cur" -lt 1024 ]; then echo 1024 > /proc/sys/vm/nr_hugepages; fi
echo "install-deps: ok ($(grep HugePages_Total /proc/meminfo | tr -s ' '))"
