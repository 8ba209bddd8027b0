#!/usr/bin/env bash
# Installs everything layervisor and its tests use, idempotently, on Debian 12
# as root: Debian packages, a Go toolchain new enough for go.mod, Go modules,
# and Debian's cloud kernel (downloaded and extracted, never installed) for the
# utility VM. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  ca-certificates git gcc libc6-dev   # cgo: go test -race and the default build need libc headers
  e2fsprogs util-linux kmod cpio zstd
  busybox-static            # real content for test images
  qemu-system-x86 qemu-utils # utility VM; qemu-img validates VHD/VHDX
  containerd runc           # import/mount benchmark anchor; snapshotter end-to-end tests (ctr run); runc runs process-isolated containers
  crun                      # the OCI runtime packed into the utility VM (see README: runtimes)
  libhivex-bin libwin-hivex-perl libregf-utils chntpw  # registry hive validators (hivexregedit is in the perl package)
  libvhdi-utils python3-libvhdi python3    # VHDX differencing validators
  bzip2 xz-utils            # tests decompress the Windows-made test files fast
  ntfs-3g gdisk             # mkntfs formats the UVM template disk; sgdisk/ntfsinfo validate it
  iproute2 iptables         # CRI tests (internal/cristack): ip netns for the stack's network namespace; the CNI portmap plugin writes iptables rules (inside that namespace)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go: use the machine's toolchain when it is new enough, else fetch the
# toolchain go.mod asks for through the module proxy.
want=$(awk '/^go /{print $2; exit}' go.mod)
export PATH=/usr/local/go/bin:$PATH
if ! command -v go >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq golang-go >/dev/null
fi
export GOTOOLCHAIN=auto
go version >/dev/null   # triggers the toolchain download when go.mod needs it
go mod download

# Boot files for the utility VM: Debian's cloud kernel and its modules.
BOOT_DIR=${LAYERVISOR_BOOT_DIR:-/var/cache/layervisor/boot}
if [[ ! -e "$BOOT_DIR/vmlinuz" ]]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [[ -n "$pkg" ]] || { apt-get update -qq; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
  mkdir -p "$tmp/x"
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  kver=$(ls "$tmp/x/lib/modules")
  depmod -b "$tmp/x" "$kver"
  mkdir -p "$BOOT_DIR.new"
  cp "$tmp/x/boot/vmlinuz-$kver" "$BOOT_DIR.new/vmlinuz"
  mkdir -p "$BOOT_DIR.new/lib"
  mv "$tmp/x/lib/modules" "$BOOT_DIR.new/lib/modules"
  echo "$kver" >"$BOOT_DIR.new/kernel-version"
  rm -rf "$BOOT_DIR"
  mv "$BOOT_DIR.new" "$BOOT_DIR"
  echo "deps: kernel $kver in $BOOT_DIR" >&2
fi

# containerd 2.x (tests of the proxy differ path): containerd, ctr and its
# runc shim (Debian's 1.6 shim does not work with 2.x) built once from the Go
# module proxy into a cache dir, never installed system-wide. no_btrfs: no
# libbtrfs headers here, and the btrfs snapshotter is not needed.
CONTAINERD2_VERSION=v2.4.2
CONTAINERD2_DIR=${LAYERVISOR_CONTAINERD2_DIR:-/var/cache/layervisor/containerd-$CONTAINERD2_VERSION}
if [[ ! -x "$CONTAINERD2_DIR/containerd" || ! -x "$CONTAINERD2_DIR/ctr" || ! -x "$CONTAINERD2_DIR/containerd-shim-runc-v2" ]]; then
  mkdir -p "$CONTAINERD2_DIR.new"
  (cd /tmp && GOBIN="$CONTAINERD2_DIR.new" GOFLAGS=-mod=mod go install -tags no_btrfs \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD2_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD2_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD2_VERSION")
  rm -rf "$CONTAINERD2_DIR"
  mv "$CONTAINERD2_DIR.new" "$CONTAINERD2_DIR"
  echo "deps: containerd $CONTAINERD2_VERSION in $CONTAINERD2_DIR" >&2
fi

# Kubernetes CRI test tools (internal/cristack): crictl and critest
# (cri-tools v1.37.0; critest is the test binary of its cmd/critest, built
# from a copy of the module because the module cache is read-only) and the
# CNI plugins v1.10.0, built once into cache dirs, never installed
# system-wide. cri-tools' go.mod wants Go 1.26.6 (GOTOOLCHAIN=auto above).
CRI_TOOLS_VERSION=v1.37.0
CRI_TOOLS_DIR=${LAYERVISOR_CRI_TOOLS_DIR:-/var/cache/layervisor/cri-tools-$CRI_TOOLS_VERSION}
if [[ ! -x "$CRI_TOOLS_DIR/crictl" || ! -x "$CRI_TOOLS_DIR/critest" ]]; then
  rm -rf "$CRI_TOOLS_DIR.new"
  mkdir -p "$CRI_TOOLS_DIR.new"
  (cd /tmp && GOBIN="$CRI_TOOLS_DIR.new" GOFLAGS=-mod=mod go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION")
  src=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" | awk -F'"' '/"Dir":/{print $4}')
  work=$(mktemp -d)
  cp -r "$src" "$work/cri-tools"
  chmod -R u+w "$work/cri-tools"
  (cd "$work/cri-tools" && GOFLAGS=-mod=mod go test -c -o "$CRI_TOOLS_DIR.new/critest" ./cmd/critest)
  rm -rf "$work"
  rm -rf "$CRI_TOOLS_DIR"
  mv "$CRI_TOOLS_DIR.new" "$CRI_TOOLS_DIR"
  echo "deps: crictl and critest $CRI_TOOLS_VERSION in $CRI_TOOLS_DIR" >&2
fi
# Debian's dynamically linked busybox (package busybox, which conflicts with
# busybox-static, so extracted, never installed): the CRI test images are
# built from it and the host's libc. busybox-static runs its applets
# without exec (a shell's `ls` never reaches /bin/ls), so a container's
# masked /bin/ls would go unnoticed.
BUSYBOX_DEB_DIR=${LAYERVISOR_BUSYBOX_DIR:-/var/cache/layervisor/busybox-deb}
if [[ ! -x "$BUSYBOX_DEB_DIR/busybox" ]]; then
  work=$(mktemp -d)
  (cd "$work" && { apt-get download -qq busybox >/dev/null 2>&1 || { apt-get update -qq; apt-get download -qq busybox >/dev/null; }; })
  dpkg-deb -x "$work"/busybox_*.deb "$work/x"
  mkdir -p "$BUSYBOX_DEB_DIR.new"
  cp "$work/x/bin/busybox" "$BUSYBOX_DEB_DIR.new/busybox"
  rm -rf "$work" "$BUSYBOX_DEB_DIR"
  mv "$BUSYBOX_DEB_DIR.new" "$BUSYBOX_DEB_DIR"
  echo "deps: Debian's dynamic busybox in $BUSYBOX_DEB_DIR" >&2
fi
CNI_VERSION=v1.10.0
CNI_DIR=${LAYERVISOR_CNI_DIR:-/var/cache/layervisor/cni-plugins-$CNI_VERSION}
if [[ ! -x "$CNI_DIR/bridge" || ! -x "$CNI_DIR/host-local" || ! -x "$CNI_DIR/loopback" || ! -x "$CNI_DIR/portmap" ]]; then
  rm -rf "$CNI_DIR.new"
  mkdir -p "$CNI_DIR.new"
  (cd /tmp && GOBIN="$CNI_DIR.new" GOFLAGS=-mod=mod go install \
    "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_VERSION")
  rm -rf "$CNI_DIR"
  mv "$CNI_DIR.new" "$CNI_DIR"
  echo "deps: CNI plugins $CNI_VERSION in $CNI_DIR" >&2
fi
