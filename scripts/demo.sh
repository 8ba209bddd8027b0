#!/usr/bin/env bash
# The main job, as a demo on a fresh Debian 12 machine as root: installs what
# it needs, builds layervisor, builds a multi-layer image from Debian's static
# busybox (with a deleted file and a replaced directory), imports it, mounts
# containers' root file systems on the host, and runs a command in the image
# in both isolation modes (host namespaces, and a QEMU utility VM).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=auto

work=$(mktemp -d /tmp/layervisor-demo.XXXXXX)
export LAYERVISOR_ROOT=$work/root
cleanup() {
  ./bin/layervisor container rm demo-1 demo-2 >/dev/null 2>&1 || true
  ./bin/layervisor gc -q >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build"
mkdir -p bin
go build -o bin/layervisor ./cmd/layervisor
CGO_ENABLED=0 go build -o bin/layervisor-agent ./cmd/layervisor-agent   # static: it is /init of the UVM

step "make a demo image (OCI archive, several layers)"
./bin/layervisor dev build-image --kind demo --format docker-tar "$work/demo.tar"
ls -l "$work/demo.tar"

step "import it (twice: the second import reuses every layer)"
./bin/layervisor image import --name demo:latest "$work/demo.tar"
./bin/layervisor image import --name demo:latest "$work/demo.tar"
./bin/layervisor image ls
./bin/layervisor layer ls

step "two containers sharing the image's layers"
./bin/layervisor container create demo-1 --image demo:latest --scratch-size 1G
./bin/layervisor container create demo-2 --image demo:latest --scratch-size 1G
r1=$(./bin/layervisor container mount demo-1)
r2=$(./bin/layervisor container mount demo-2)
echo "demo-1 rootfs: $r1"
./bin/layervisor container ls
echo "--- merged view of demo-1:"
ls "$r1" "$r1/etc"
echo "--- a write in demo-1 is not seen by demo-2:"
echo hello > "$r1/tmp/hello"
ls "$r2/tmp"

show='cat /etc/demo-release; test -e /etc/motd || echo "/etc/motd: deleted by a whiteout"; echo "/app holds: $(ls /app)"; echo "kernel: $(uname -r)"'

step "run a command in the image, process isolation (host namespaces)"
./bin/layervisor run --isolation process demo:latest -- sh -c "$show" </dev/null

step "the same command in a utility VM (hypervisor isolation: QEMU + guest agent)"
time ./bin/layervisor run --isolation vm demo:latest -- sh -c "$show" </dev/null

step "host directories in the container: a read-only bind mount in the VM (-v HOST:CONTAINER:ro)"
mkdir -p "$work/shared" && echo "from the host" > "$work/shared/note"
./bin/layervisor run --isolation vm -v "$work/shared:/shared:ro" demo:latest -- sh -c \
  'cat /shared/note; (echo x > /shared/new) 2>/dev/null && echo "write: allowed" || echo "write: refused (read-only)"' </dev/null
test ! -e "$work/shared/new" && echo "host directory unchanged"

step "the VM again, its scratch a VHDX that QEMU attaches directly"
./bin/layervisor run --isolation vm --scratch-format vhdx demo:latest -- sh -c 'echo "written through overlayfs to a VHDX scratch" > /x && cat /x' </dev/null

step "Windows artifacts in pure Go: VHDX disks and registry hives"
disks="$work/disks"; mkdir -p "$disks"
./bin/layervisor disk create "$disks/SystemTemplateBase.vhdx" 10G
./bin/layervisor disk create "$disks/SystemTemplate.vhdx" --parent "$disks/SystemTemplateBase.vhdx"
./bin/layervisor disk convert "$work/demo.tar" "$disks/demo-tar.vhdx" --format vhdx
./bin/layervisor disk check "$disks/demo-tar.vhdx"
qemu-img compare -f vhdx -F raw "$disks/demo-tar.vhdx" "$work/demo.tar"
hive="$disks/SYSTEM"
./bin/layervisor hive create "$hive"
./bin/layervisor hive set "$hive" 'ControlSet001\Control' SystemStartOptions --type REG_SZ " NOEXECUTE=OPTOUT"
./bin/layervisor hive cimboot "$hive"
./bin/layervisor hive export "$hive"
echo "--- the same hive through hivex:"
hivexregedit --export "$hive" '\' | head -20

step "unmount, remove, gc"
./bin/layervisor container unmount demo-1
./bin/layervisor container rm demo-1 demo-2
./bin/layervisor image rm demo:latest
./bin/layervisor gc
