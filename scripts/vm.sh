#!/usr/bin/env bash
# A throwaway QEMU guest with virtio-net NICs, for testing AF_XDP zero-copy on
# a real driver. This host's /dev/kvm cannot run a stock kernel, so the guest
# runs under QEMU's own emulator (TCG): slow, but the driver, the kernel's
# AF_XDP code and the zero-copy path are the real ones. Use it for
# correctness, never for speed.
#
#   scripts/vm.sh install [KERNEL]     install QEMU, fetch and cache a kernel
#   scripts/vm.sh run [opts] SCRIPT [FILE...]
#                                      boot a guest, run SCRIPT inside it
#   scripts/vm.sh kernels              the cloud kernels the archive offers
#
# KERNEL (--kernel, XDPBLAST_VM_KERNEL): `pinned` (default, 6.18.15, checked to
# do zero-copy), `newest` (the newest trixie-backports cloud kernel), or a
# version such as 7.3.4+deb13-cloud-amd64. A pinned kernel the archive no
# longer has falls back to the newest one from 6.13 on, with a warning.
#
# run options:
#   --kernel K       as above
#   --out DIR        where the guest's results (results.txt), its console
#                    (console.log) and QEMU's own messages go (default: a new
#                    temporary directory, printed at the end)
#   --timeout SECS   the whole run, boot to power-off (default 600)
#   --bin PATH       the xdpblast binary (default target/release/xdpblast)
#
# The guest has four NICs, virtio-net-pci with modern-only transport, in two
# pairs, each pair joined on a QEMU hub of its own and to nothing else:
#   52:54:00:00:00:01 and :02   iommu_platform=on (VIRTIO_F_ACCESS_PLATFORM,
#                               which zero-copy needs), hub 0;
#   52:54:00:00:00:03 and :04   iommu_platform=off, hub 1.
# A NIC alone on a hub never completes a transmit (no port can take the
# packet, so QEMU holds it), hence the pairs.
# There is no tap, no bridge and no user-mode network: nothing the guest
# sends can reach the host or any other network.
#
# Inside the guest, SCRIPT runs as root under busybox sh with iproute2's `ip`,
# ethtool, xdpblast and any FILEs in /work. Busybox's sh prefers its own
# applets, so `ip` and `ethtool` are shell functions that call the real ones;
# a job started with `&` that must be signalled later should run "$IP"
# itself, so that `$!` is the process (`ip netns exec` execs its command). What it writes to
# fd 3 is the result stream, copied to DIR/results.txt; stdout and stderr go
# to the console log. The guest powers off when SCRIPT ends; its exit status
# is the last line of the result stream ("@@exit N"), and this script exits
# with it.
#
# Downloads and the unpacked kernel are cached in XDPBLAST_VM_CACHE (default
# /var/cache/xdpblast/vm), so a warm run pays only for the boot. Nothing is
# installed from the guest kernel's package: it is unpacked with dpkg-deb -x.
# The host's /etc/apt is never changed: extra suites go through a private
# APT_CONFIG whose mirror is taken from the machine's own sources.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${XDPBLAST_VM_CACHE:-/var/cache/xdpblast/vm}
PINNED=6.18.15+deb13-cloud-amd64
# virtio_net has had AF_XDP zero-copy TX, and the xsk_zerocopy feature flag,
# since 6.13.
MIN_ZC=6.13
MODULES=(failover net_failover virtio_net)
# Kernel TLS with AES-GCM, for the encrypted TCP modes' test: loaded where
# the kernel has them (the guest has no modprobe to load them on demand).
OPTIONAL_MODULES=(ghash-generic gcm tls)

log() { echo "vm.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# The machine's Debian mirror, from its own apt sources (deb822 or one-line).
mirror() {
  local m
  m=$(grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
      | grep -v security | grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# A private apt configuration: its own lists, cache and sources, so the host's
# /etc/apt stays as it is. $1 names it; the rest are source lines' suites.
apt_conf() {
  local name=$1 keep_host=$2; shift 2
  local dir=$CACHE/apt-$name m
  m=$(mirror)
  mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/prefs"
  : > "$dir/sources.list"
  for suite in "$@"; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m $suite main" >> "$dir/sources.list"
  done
  {
    echo "Dir::State::lists \"$dir/lists\";"
    echo "Dir::Cache::archives \"$dir/archives\";"
    echo "Dir::Etc::sourcelist \"$dir/sources.list\";"
    if [[ $keep_host == host ]]; then
      echo "Dir::Etc::sourceparts \"/etc/apt/sources.list.d\";"
    else
      echo "Dir::Etc::sourceparts \"-\";"
      echo "Dir::Etc::preferencesparts \"$dir/prefs\";"
    fi
    echo "APT::Get::List-Cleanup \"false\";"
    echo "APT::Sandbox::User \"root\";"
  } > "$dir/apt.conf"
  echo "$dir/apt.conf"
}

install_qemu() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  [[ -x /bin/busybox ]] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
  command -v cpio >/dev/null || need+=(cpio)
  command -v xz >/dev/null || need+=(xz-utils)
  command -v file >/dev/null || need+=(file)
  command -v ethtool >/dev/null || need+=(ethtool)
  command -v ip >/dev/null || need+=(iproute2)
  ((${#need[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || die "installing ${need[*]} needs root"
  # bookworm's QEMU 7.2 conflicts with the qemu-utils 10 this machine kind
  # ships (from bookworm-backports), so QEMU comes from there too.
  local conf
  conf=$(apt_conf host host bookworm-backports)
  log "installing ${need[*]} (QEMU from bookworm-backports)"
  APT_CONFIG=$conf apt-get update -qq
  APT_CONFIG=$conf DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports "${need[@]}" >/dev/null
}

guest_apt() {
  local conf
  conf=$(apt_conf guest guest trixie-backports)
  if [[ ! -s $CACHE/apt-guest/updated || ${1:-} == refresh ]]; then
    APT_CONFIG=$conf apt-get update -qq || die "apt-get update for trixie-backports failed"
    date +%s > "$CACHE/apt-guest/updated"
  fi
  echo "$conf"
}

# Every cloud kernel version the archive offers, oldest first.
kernels() {
  local conf
  conf=$(guest_apt "${1:-}")
  APT_CONFIG=$conf apt-cache search --names-only '^linux-image-[0-9].*-cloud-amd64$' \
    | awk '{print $1}' | sed 's/^linux-image-//' | sort -V
}

newest() {
  local v
  v=$(kernels refresh | tail -n 1)
  [[ -n $v ]] || die "the archive offers no cloud kernel"
  version_ok "$v" || die "the newest cloud kernel, $v, is older than $MIN_ZC: no virtio_net zero-copy"
  echo "$v"
}

version_ok() { [[ $(printf '%s\n%s\n' "$MIN_ZC" "${1%%+*}" | sort -V | head -n 1) == "$MIN_ZC" ]]; }

# Resolves K to a version with a kernel in the cache, fetching it if needed.
kernel() {
  local want=${1:-pinned} v
  case $want in
    pinned) v=$PINNED ;;
    newest) v=$(newest) ;;
    *) v=$want ;;
  esac
  if ! cached "$v"; then
    if ! fetch_kernel "$v"; then
      [[ $want == pinned ]] || die "kernel $v is not in the archive (scripts/vm.sh kernels lists what is)"
      v=$(newest)
      log "WARNING: the pinned kernel $PINNED is no longer in the archive; using the newest, $v"
      cached "$v" || fetch_kernel "$v" || die "cannot fetch kernel $v"
    fi
  fi
  echo "$v"
}

# Whether kernel V is in the cache, with the modules this script looks for
# now (a cache made for another list is fetched again).
cached() {
  [[ -s $CACHE/kernel/$1/vmlinuz && $(cat "$CACHE/kernel/$1/modules.wanted" 2>/dev/null) == "${MODULES[*]} ${OPTIONAL_MODULES[*]}" ]]
}

# Downloads a kernel's packages and keeps its image and our modules
# (decompressed, so busybox's insmod can load them).
fetch_kernel() {
  local v=$1 conf tmp dir=$CACHE/kernel/$1
  conf=$(guest_apt)
  if ! APT_CONFIG=$conf apt-cache show "linux-image-$v" >/dev/null 2>&1; then
    conf=$(guest_apt refresh)
    APT_CONFIG=$conf apt-cache show "linux-image-$v" >/dev/null 2>&1 || return 1
  fi
  log "fetching kernel $v (unpacked, never installed)"
  tmp=$(mktemp -d)
  # From 7.x the image is split into linux-binary-* and linux-modules-*.
  local pkgs=("linux-image-$v")
  for p in "linux-binary-$v" "linux-modules-$v"; do
    APT_CONFIG=$conf apt-cache show "$p" >/dev/null 2>&1 && pkgs+=("$p")
  done
  (cd "$tmp" && APT_CONFIG=$conf apt-get download -qq "${pkgs[@]}") || { rm -rf "$tmp"; return 1; }
  for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
  local img
  img=$(find "$tmp/root" \( -name "vmlinuz-$v" -o -path "*/modules/$v/vmlinuz" \) -type f | head -n 1)
  [[ -n $img ]] || { rm -rf "$tmp"; die "no vmlinuz in the packages of $v"; }
  rm -rf "$dir" && mkdir -p "$dir/modules"
  for m in "${MODULES[@]}"; do
    local ko
    ko=$(find "$tmp/root/usr/lib/modules/$v" -name "$m.ko*" | head -n 1)
    [[ -n $ko ]] || { rm -rf "$tmp" "$dir"; die "kernel $v has no module $m"; }
    unpack_module "$ko" "$dir/modules/$m.ko"
  done
  for m in "${OPTIONAL_MODULES[@]}"; do
    local ko
    ko=$(find "$tmp/root/usr/lib/modules/$v" -name "$m.ko*" | head -n 1)
    if [[ -n $ko ]]; then unpack_module "$ko" "$dir/modules/$m.ko"; else log "kernel $v has no module $m"; fi
  done
  echo "${MODULES[*]} ${OPTIONAL_MODULES[*]}" > "$dir/modules.wanted"
  cp "$img" "$dir/vmlinuz.part" && mv "$dir/vmlinuz.part" "$dir/vmlinuz"
  rm -rf "$tmp"
}

unpack_module() {
  case $1 in
    *.xz) xz -dc "$1" > "$2" ;;
    *.zst) zstd -dcq "$1" > "$2" ;;
    *) cp "$1" "$2" ;;
  esac
}

# Copies a dynamically linked program and the libraries it loads.
add_program() {
  local root=$1 prog=$2 dest=$3 lib
  install -D -m 0755 "$prog" "$root$dest"
  for lib in $(ldd "$prog" | grep -oE '/[^ ]+' | sort -u); do
    [[ -e $root$lib ]] || install -D -m 0755 "$lib" "$root$lib"
  done
}

initramfs() {
  local v=$1 bin=$2 script=$3 out=$4; shift 4
  local root
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,sbin,proc,sys,dev,run,tmp,work,lib/modules,etc}
  install -m 0755 /bin/busybox "$root/bin/busybox"
  add_program "$root" "$(command -v ip)" /usr/local/sbin/ip
  add_program "$root" "$(command -v ethtool)" /usr/local/sbin/ethtool
  add_program "$root" "$bin" /bin/xdpblast
  cp "$CACHE/kernel/$v/modules/"*.ko "$root/lib/modules/"
  install -m 0755 "$script" "$root/work/check.sh"
  local f
  for f in "$@"; do cp -a "$f" "$root/work/"; done
  cat > "$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=1536m tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
for m in ${MODULES[*]}; do insmod /lib/modules/\$m.ko || echo "insmod \$m failed"; done
for m in ${OPTIONAL_MODULES[*]}; do [ -e /lib/modules/\$m.ko ] && { insmod /lib/modules/\$m.ko || echo "insmod \$m failed"; }; done
mdev -s 2>/dev/null
# The NICs appear asynchronously after the module loads.
n=0; while [ \$(ls /sys/class/net | grep -c '^e') -lt 4 ] && [ \$n -lt 50 ]; do sleep 0.1; n=\$((n+1)); done
exec 3>/dev/ttyS1
echo "@@kernel \$(uname -r)" >&3
cd /work
sh -c '. /etc/guest.sh && . /work/check.sh'
echo "@@exit \$?" >&3
sync
poweroff -f
EOF
  chmod 0755 "$root/init"
  # This busybox runs its own applets before anything on PATH, and its ip
  # knows no namespaces: the real programs take over these names.
  cat > "$root/etc/guest.sh" <<'EOF2'
IP=/usr/local/sbin/ip
ip() { "$IP" "$@"; }
ethtool() { /usr/local/sbin/ethtool "$@"; }
EOF2
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"
  rm -rf "$root"
}

cmd_run() {
  local k=${XDPBLAST_VM_KERNEL:-pinned} out="" timeout=600 bin=$REPO/target/release/xdpblast
  while (($#)); do
    case $1 in
      --kernel) k=$2; shift 2 ;;
      --out) out=$2; shift 2 ;;
      --timeout) timeout=$2; shift 2 ;;
      --bin) bin=$2; shift 2 ;;
      -h|--help) usage ;;
      --) shift; break ;;
      -*) die "unknown option $1 (scripts/vm.sh --help)" ;;
      *) break ;;
    esac
  done
  (($#)) || die "run needs a SCRIPT (scripts/vm.sh --help)"
  local script=$1; shift
  [[ -f $script ]] || die "no script $script"
  [[ -x $bin ]] || die "no xdpblast binary at $bin (cargo build --release)"
  install_qemu
  local v
  v=$(kernel "$k")
  if [[ -z $out ]]; then out=$(mktemp -d /tmp/xdpblast-vm.XXXXXX); fi
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  : > "$out/results.txt"
  initramfs "$v" "$bin" "$script" "$out/initrd.gz" "$@"
  log "booting kernel $v under TCG (results in $out)"
  local nic='virtio-net-pci,disable-legacy=on'
  local rc=0
  # -nodefaults: no default NIC, no user-mode network; the only NICs are ours.
  timeout --kill-after=5 "$timeout" qemu-system-x86_64 \
    -nodefaults -no-user-config -accel tcg -cpu max -smp 2 -m 2048 \
    -display none -no-reboot \
    -kernel "$CACHE/kernel/$v/vmlinuz" -initrd "$out/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4" \
    -serial "file:$out/console.log" -serial "file:$out/results.txt" \
    -netdev hubport,id=p0,hubid=0 -device "$nic,iommu_platform=on,netdev=p0,mac=52:54:00:00:00:01" \
    -netdev hubport,id=p1,hubid=0 -device "$nic,iommu_platform=on,netdev=p1,mac=52:54:00:00:00:02" \
    -netdev hubport,id=p2,hubid=1 -device "$nic,iommu_platform=off,netdev=p2,mac=52:54:00:00:00:03" \
    -netdev hubport,id=p3,hubid=1 -device "$nic,iommu_platform=off,netdev=p3,mac=52:54:00:00:00:04" \
    > "$out/qemu.log" 2>&1 || rc=$?
  rm -f "$out/initrd.gz"
  if ((rc == 124 || rc == 137)); then
    die "the guest did not power off within ${timeout}s (console: $out/console.log)"
  elif ((rc != 0)); then
    cat "$out/qemu.log" >&2
    die "QEMU failed (exit $rc)"
  fi
  local status
  status=$(sed -n 's/^@@exit \([0-9]*\).*/\1/p' "$out/results.txt" | tail -n 1)
  [[ -n $status ]] || die "the guest ended without finishing the script (console: $out/console.log)"
  log "guest script exited $status; results: $out/results.txt"
  return "$status"
}

case ${1:-} in
  install) shift; install_qemu; v=$(kernel "${1:-${XDPBLAST_VM_KERNEL:-pinned}}"); log "ready: kernel $v in $CACHE/kernel/$v" ;;
  run) shift; cmd_run "$@" ;;
  kernels) kernels refresh ;;
  -h|--help|help) usage ;;
  *) usage 2 >&2 ;;
esac
