#!/usr/bin/env bash
# Builds the tiny test guest: OUT_DIR/vmlinuz (the host's Debian kernel) and
# OUT_DIR/initramfs.img (gzip'd newc cpio: busybox-static, virtio-net + pktgen
# modules with their dependencies, and tests/guest/init as /init).
#
# Usage: tests/guest/build.sh OUT_DIR
# Idempotent: does nothing if OUT_DIR/initramfs.img is newer than this script
# and the init script (and OUT_DIR/vmlinuz exists).
# Env: VSW_KVER=<version> to pick a kernel other than the newest in /boot.
set -euo pipefail

die() { echo "guest/build.sh: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/build.sh"
init="$here/init"
[ -f "$init" ] || die "missing $init"

if [ -f "$out/initramfs.img" ] && [ -f "$out/vmlinuz" ] \
   && [ "$out/initramfs.img" -nt "$self" ] && [ "$out/initramfs.img" -nt "$init" ]; then
  exit 0
fi

# --- kernel -----------------------------------------------------------------
if [ -n "${VSW_KVER:-}" ]; then
  kver=$VSW_KVER
else
  kver=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n1 || true)
fi
[ -n "$kver" ] || die "no /boot/vmlinuz-* found (install the Debian kernel package linux-image-amd64)"
vmlinuz=/boot/vmlinuz-$kver
config=/boot/config-$kver
moddir=/lib/modules/$kver
[ -r "$vmlinuz" ] || die "cannot read $vmlinuz"
[ -r "$config" ] || die "missing $config"
[ -r "$moddir/modules.dep" ] || die "missing $moddir/modules.dep (modules of kernel $kver not installed)"

# --- busybox ----------------------------------------------------------------
busybox=""
for b in /bin/busybox /usr/bin/busybox; do
  if [ -x "$b" ] && file -L "$b" 2>/dev/null | grep -q 'statically linked'; then busybox=$b; break; fi
done
if [ -z "$busybox" ]; then
  # `file` may be absent: accept a busybox without a dynamic interpreter.
  for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ] && ! grep -q 'ld-linux' "$b" 2>/dev/null; then busybox=$b; break; fi
  done
fi
[ -n "$busybox" ] || die "no static busybox found (install busybox-static)"

# --- modules ----------------------------------------------------------------
# Wanted driver pieces; each is either built in (=y, nothing to do), a module
# (=m, loaded with its modules.dep dependencies), or missing (error).
declare -A cfg_of=(
  [virtio]=CONFIG_VIRTIO
  [virtio_ring]=CONFIG_VIRTIO
  [virtio_pci]=CONFIG_VIRTIO_PCI
  [virtio_net]=CONFIG_VIRTIO_NET
  [pktgen]=CONFIG_NET_PKTGEN
)
wanted=()
for m in virtio virtio_ring virtio_pci virtio_net pktgen; do
  c=${cfg_of[$m]}
  v=$(grep -E "^$c=" "$config" | cut -d= -f2 || true)
  case "$v" in
    y) echo "guest/build.sh: $m is built into kernel $kver" ;;
    m) wanted+=("$m") ;;
    *) die "$c is not set in $config: kernel $kver has no $m" ;;
  esac
done

# modules.dep maps "path: dep1 dep2 ..." with paths relative to $moddir.
declare -A path_of=() deps_of=()
while IFS= read -r line; do
  p=${line%%:*}
  n=${p##*/}; n=${n%%.ko*}; n=${n//-/_}
  path_of[$n]=$p
  deps_of[$n]=${line#*:}
done < "$moddir/modules.dep"

order=()
declare -A seen=()
visit() { # depth first: dependencies are loaded before the module
  local n=$1 d dn
  [ -n "${seen[$n]:-}" ] && return 0
  seen[$n]=1
  [ -n "${path_of[$n]:-}" ] || die "module $n not found in $moddir/modules.dep"
  for d in ${deps_of[$n]}; do
    dn=${d##*/}; dn=${dn%%.ko*}; dn=${dn//-/_}
    visit "$dn"
  done
  order+=("$n")
}
for m in "${wanted[@]}"; do visit "$m"; done

# --- assemble ---------------------------------------------------------------
mkdir -p "$out"
stage=$(mktemp -d "${TMPDIR:-/tmp}/vsw-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,lib/modules}
cp "$busybox" "$stage/bin/busybox"
for app in $("$stage/bin/busybox" --list-full 2>/dev/null || true); do
  [ "$app" = bin/busybox ] && continue
  ln -s /bin/busybox "$stage/$app"
done
[ -e "$stage/bin/sh" ] || ln -sf /bin/busybox "$stage/bin/sh"
for need in sh ip ping insmod poweroff; do
  [ -e "$stage/bin/$need" ] || [ -e "$stage/sbin/$need" ] || die "busybox lacks applet $need"
done

: > "$stage/lib/modules/load-order"
for n in "${order[@]}"; do
  src=$moddir/${path_of[$n]}
  [ -r "$src" ] || die "missing module file $src"
  dst=$stage/lib/modules/$n.ko
  # busybox insmod only loads plain ELF objects: decompress if needed.
  case "$src" in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) command -v xz >/dev/null || die "xz needed to decompress $src"; xz -dc "$src" > "$dst" ;;
    *.ko.zst) command -v zstd >/dev/null || die "zstd needed to decompress $src"; zstd -qdc "$src" > "$dst" ;;
    *.ko.gz) gzip -dc "$src" > "$dst" ;;
    *) die "unknown module format: $src" ;;
  esac
  echo "$n" >> "$stage/lib/modules/load-order"
done

cp "$init" "$stage/init"
chmod 755 "$stage/init"
echo "root:x:0:0:root:/:/bin/sh" > "$stage/etc/passwd"

tmpimg="$out/initramfs.img.tmp.$$"
if command -v cpio >/dev/null; then
  (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) | gzip -9 > "$tmpimg"
else
  (cd "$stage" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 > "$tmpimg"
fi
cp "$vmlinuz" "$out/vmlinuz.tmp.$$"
mv -f "$out/vmlinuz.tmp.$$" "$out/vmlinuz"
mv -f "$tmpimg" "$out/initramfs.img"
echo "guest/build.sh: built $out/initramfs.img (kernel $kver; modules: ${order[*]})"
