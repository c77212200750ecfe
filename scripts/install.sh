#!/usr/bin/env bash
# Installs vswitch as a systemd service:
#   PREFIX/bin/vswitch                        the release build (PREFIX: /usr/local)
#   /etc/systemd/system/vswitch.service       dist/vswitch.service (ExecStart on PREFIX)
#   /etc/vswitch/vswitch.toml                 dist/vswitch.toml, only if there is none
#   /etc/sysctl.d/60-vswitch-hugepages.conf   only if no sysctl file sets vm.nr_hugepages
# then `systemctl daemon-reload` if systemd is running (nothing is enabled or started:
# `systemctl enable --now vswitch` does that). Idempotent.
#
# Usage: scripts/install.sh [--destdir DIR] [--prefix DIR] [--bin FILE]
#   --destdir DIR  install under DIR as if it were / (staging, packaging, tests):
#                  nothing outside DIR is touched. Also DESTDIR=DIR in the environment.
#   --prefix DIR   where the binary goes at run time (default /usr/local; also PREFIX=).
#   --bin FILE     install this vswitch binary instead of building one
#                  (`cargo build --release --bin vswitch`).
# Without --destdir it must run as root.
set -euo pipefail

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
destdir=${DESTDIR:-}
prefix=${PREFIX:-/usr/local}
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --prefix)  prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --bin)     bin=${2:?--bin needs a file}; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$prefix" in /*) ;; *) die "--prefix must be absolute: $prefix" ;; esac
if [ -n "$destdir" ]; then
  mkdir -p "$destdir"
  destdir=$(cd "$destdir" && pwd)
  [ "$destdir" != / ] || destdir=""
fi
if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
  die "must run as root to install into / (or give --destdir DIR)"
fi

# --- the binary ---------------------------------------------------------------
if [ -z "$bin" ]; then
  say "building (cargo build --release --bin vswitch)"
  (cd "$root" && cargo build --release --bin vswitch)
  bin=$root/target/release/vswitch
fi
[ -x "$bin" ] || die "no executable $bin"
target_bin=$prefix/bin/vswitch
# Through a temporary name and a rename: a running switch keeps its old binary.
install -d -m 0755 "$destdir$prefix/bin"
install -m 0755 "$bin" "$destdir$target_bin.new"
mv -f "$destdir$target_bin.new" "$destdir$target_bin"
say "installed $destdir$target_bin"

# --- the unit -----------------------------------------------------------------
unit=$destdir/etc/systemd/system/vswitch.service
install -d -m 0755 "$(dirname "$unit")"
sed "s|/usr/local/bin/vswitch|$target_bin|g" "$root/dist/vswitch.service" > "$unit.new"
chmod 0644 "$unit.new"
mv -f "$unit.new" "$unit"
say "installed $unit"

# --- the configuration: never overwrite the operator's --------------------------
conf=$destdir/etc/vswitch/vswitch.toml
install -d -m 0755 "$(dirname "$conf")"
if [ -e "$conf" ]; then
  say "kept $conf (the example is $root/dist/vswitch.toml)"
else
  install -m 0644 "$root/dist/vswitch.toml" "$conf"
  say "installed the example configuration as $conf: edit its ports"
fi

# --- hugepages at boot, unless the host already reserves some --------------------
sysctl_d=$destdir/etc/sysctl.d
hp=$sysctl_d/60-vswitch-hugepages.conf
if [ -e "$hp" ]; then
  say "kept $hp"
elif grep -Eqs '^[[:space:]]*vm[./]nr_hugepages[[:space:]]*=' \
    "$destdir/etc/sysctl.conf" "$sysctl_d"/*.conf "$destdir/usr/lib/sysctl.d"/*.conf; then
  say "vm.nr_hugepages is already set in a sysctl file: not adding $hp"
else
  install -d -m 0755 "$sysctl_d"
  install -m 0644 "$root/dist/60-vswitch-hugepages.conf" "$hp"
  say "installed $hp (64 hugepages at boot)"
  # Now too, if fewer are reserved (never lowered: guests may hold more).
  if [ -z "$destdir" ] && [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 64 ]; then
    echo 64 > /proc/sys/vm/nr_hugepages || true
    say "reserved now: $(cat /proc/sys/vm/nr_hugepages) hugepages"
  fi
fi

# --- systemd --------------------------------------------------------------------
if [ -n "$destdir" ]; then
  say "staged under $destdir: systemd not told"
elif [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  say "systemctl daemon-reload done; start with: systemctl enable --now vswitch"
else
  say "systemd is not running here: no daemon-reload (the unit is in place for when it is)"
fi
