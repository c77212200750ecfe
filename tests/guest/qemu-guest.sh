#!/usr/bin/env bash
# Runs one test guest under QEMU (TCG) with a single virtio-net NIC, either on
# a vhost-user socket or on a TAP device. The guest console (ttyS0) is on
# stdout; the guest powers itself off when its role is done, and QEMU exits.
#
# Usage: qemu-guest.sh (--sock PATH [--server] | --tap IFNAME) --images DIR
#                      [--mac MAC] [--queues N] [--mem MB] [--append "..."]
#                      [--dry-run] [-- extra qemu args]
#   --sock PATH   vhost-user socket. Default: QEMU is the client and reconnects
#                 every second if the backend goes away or is not up yet.
#   --server      QEMU listens on PATH instead (server=on,wait=off).
#   --tap IFNAME  existing TAP device instead of vhost-user (for self-tests).
#   --images DIR  directory holding vmlinuz and initramfs.img (from build.sh).
#   --mac MAC     guest MAC (default 52:54:00:12:34:56).
#   --queues N    queue pairs (default 1; N>1 enables virtio-net multiqueue).
#   --mem MB      guest RAM, shared memfd (default 256).
#   --mem-path D  guest RAM in a file under D instead (memory-backend-file,
#                 share=on), e.g. /dev/hugepages for 2 MiB hugepages.
#   --append S    extra kernel command line, e.g. "vsw.ip=10.0.0.1/24 vsw.role=idle".
#   --host-mtu N  virtio-net host_mtu=N: the guest is told MTU N (and a vhost-user
#                 backend is asked for it with NET_SET_MTU).
#   --no-offloads the NIC without checksum and segmentation offloads (csum=off,
#                 guest_csum=off, host_tso4/6=off, guest_tso4/6=off, ECN off).
#   --packed      packed virtqueues (virtio-net packed=on) instead of split ones.
#   --dry-run     print the QEMU command line instead of running it.
set -euo pipefail

die() { echo "qemu-guest.sh: error: $*" >&2; exit 2; }

sock=""; server=0; tap=""; images=""; mac=52:54:00:12:34:56; queues=1; mem=256
append=""; dry=0; extra=(); mem_path=""; host_mtu=""; offloads=1; packed=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sock)    sock=${2:?}; shift 2 ;;
    --server)  server=1; shift ;;
    --tap)     tap=${2:?}; shift 2 ;;
    --images)  images=${2:?}; shift 2 ;;
    --mac)     mac=${2:?}; shift 2 ;;
    --queues)  queues=${2:?}; shift 2 ;;
    --mem)     mem=${2:?}; shift 2 ;;
    --mem-path) mem_path=${2:?}; shift 2 ;;
    --append)  append=${2?}; shift 2 ;;
    --host-mtu) host_mtu=${2:?}; shift 2 ;;
    --no-offloads) offloads=0; shift ;;
    --packed)  packed=1; shift ;;
    --dry-run) dry=1; shift ;;
    --)        shift; extra=("$@"); break ;;
    *) die "unknown option $1" ;;
  esac
done

[ -n "$images" ] || die "--images DIR is required"
[ -r "$images/vmlinuz" ] && [ -r "$images/initramfs.img" ] \
  || die "$images has no vmlinuz/initramfs.img (run tests/guest/build.sh $images)"
if [ -n "$sock" ] && [ -n "$tap" ]; then die "--sock and --tap are exclusive"; fi
if [ -z "$sock" ] && [ -z "$tap" ]; then die "one of --sock PATH or --tap IFNAME is required"; fi
[[ "$queues" =~ ^[1-9][0-9]*$ ]] || die "bad --queues $queues"
[[ "$mem" =~ ^[1-9][0-9]*$ ]] || die "bad --mem $mem"
[ -z "$host_mtu" ] || [[ "$host_mtu" =~ ^[1-9][0-9]*$ ]] || die "bad --host-mtu $host_mtu"

qemu=${QEMU:-qemu-system-x86_64}
if [ -n "$mem_path" ]; then
  [ -d "$mem_path" ] || die "--mem-path $mem_path is not a directory"
  memobj="memory-backend-file,id=mem,size=${mem}M,mem-path=$mem_path,share=on"
else
  memobj="memory-backend-memfd,id=mem,size=${mem}M,share=on"
fi

args=(
  -machine q35,accel=tcg
  -cpu max
  -smp 1
  -m "${mem}M"
  -object "$memobj"
  -numa node,memdev=mem
  -nodefaults
  -net none
  -display none
  -monitor none
  -serial stdio
  -no-reboot
  -kernel "$images/vmlinuz"
  -initrd "$images/initramfs.img"
  -append "console=ttyS0 loglevel=3 quiet panic=-1 mitigations=off tsc=unstable $append"
)

if [ -n "$sock" ]; then
  if [ $server = 1 ]; then
    args+=(-chardev "socket,id=chr0,path=$sock,server=on,wait=off")
  else
    args+=(-chardev "socket,id=chr0,path=$sock,reconnect-ms=1000")
  fi
  args+=(-netdev "vhost-user,id=net0,chardev=chr0,queues=$queues")
else
  if [ "$queues" -gt 1 ]; then
    args+=(-netdev "tap,id=net0,ifname=$tap,script=no,downscript=no,vhost=off,queues=$queues")
  else
    args+=(-netdev "tap,id=net0,ifname=$tap,script=no,downscript=no,vhost=off")
  fi
fi

dev="virtio-net-pci,netdev=net0,mac=$mac,mrg_rxbuf=on"
if [ "$queues" -gt 1 ]; then
  dev="$dev,mq=on,vectors=$((2 * queues + 2))"
fi
[ -n "$host_mtu" ] && dev="$dev,host_mtu=$host_mtu"
[ $packed = 1 ] && dev="$dev,packed=on"
if [ $offloads = 0 ]; then
  dev="$dev,csum=off,guest_csum=off,host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off,host_ecn=off,guest_ecn=off"
fi
args+=(-device "$dev")
args+=("${extra[@]}")

if [ $dry = 1 ]; then
  printf '%q ' "$qemu" "${args[@]}"; echo
  exit 0
fi
exec "$qemu" "${args[@]}"
