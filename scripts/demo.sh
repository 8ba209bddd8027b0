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
# The containerd shim (runtime io.containerd.layervisor.v1), installed where
# containerd finds it (its PATH), with the guest agent next to it: the shim
# builds the UVM initramfs from it.
go build -o bin/containerd-shim-layervisor-v1 ./cmd/containerd-shim-layervisor-v1
install -m 0755 bin/containerd-shim-layervisor-v1 bin/layervisor-agent /usr/local/bin/

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

step "run a command in the image, process isolation (runc: namespaces, cgroups, seccomp)"
./bin/layervisor run --isolation process demo:latest -- sh -c "$show" </dev/null

step "confined as containerd confines: capabilities, seccomp, only lo, limits"
./bin/layervisor run --memory 64m --pids-limit 50 --cap-drop NET_RAW demo:latest -- \
  sh -c 'grep -E "^(CapEff|Seccomp|NoNewPrivs):" /proc/self/status; echo "interfaces: $(ls /sys/class/net)"' </dev/null

step "the same command in a utility VM (hypervisor isolation: QEMU + guest agent)"
echo "(the first VM of its shape boots its kernel and saves itself as a template)"
time ./bin/layervisor run --isolation vm demo:latest -- sh -c "$show" </dev/null

step "again: the VM is restored from its template in about a second (the agent reseeds the guest RNG and sets the clock and the VM's hostname)"
time ./bin/layervisor run --isolation vm demo:latest -- sh -c "$show" </dev/null
./bin/layervisor uvm template ls

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

step "a Windows image: CIM layers, hive deltas merged, a utility VM prepared for CIM boot"
./bin/layervisor dev build-image --kind windows --name windows-demo:latest "$work/win.tar"
./bin/layervisor image import "$work/win.tar"
./bin/layervisor layer ls
base=$(./bin/layervisor image ls --json | python3 -c 'import json,sys; print([i for i in json.load(sys.stdin) if i["name"]=="windows-demo:latest"][0]["chainIDs"][0].split(":")[1])')
./bin/layervisor cim ls "$LAYERVISOR_ROOT/wclayers/cim-layers/$base.cim"
./bin/layervisor cim ls "$LAYERVISOR_ROOT/wclayers/cim-layers/$base.cim" UtilityVM
./bin/layervisor disk info "$LAYERVISOR_ROOT/wclayers/$base/UtilityVM/SystemTemplateBase.vhdx"
./bin/layervisor disk info "$LAYERVISOR_ROOT/wclayers/$base/UtilityVM/SystemTemplate.vhdx"
echo "--- the BCD's CIM-boot objects (composite and cimfs device options):"
bcd="$LAYERVISOR_ROOT/wclayers/$base/UtilityVM/Files/EFI/Microsoft/Boot/BCD"
./bin/layervisor hive dump "$bcd" 'Objects\{e1787220-d17f-49e7-977a-d8fe4c8537e2}'
./bin/layervisor hive dump "$bcd" 'Objects\{763e9fea-502d-434f-aad9-5fabe9c91a7b}'
./bin/layervisor uvm create win1 --windows-image windows-demo:latest
./bin/layervisor disk info "$LAYERVISOR_ROOT/uvms/win1/sandbox.vhdx"
./bin/layervisor uvm start win1 || echo "(as expected: Windows utility VMs are provisioned here, not booted)"
./bin/layervisor uvm rm win1
./bin/layervisor image rm windows-demo:latest

step "unmount, remove, gc"
./bin/layervisor container unmount demo-1
./bin/layervisor container rm demo-1 demo-2
./bin/layervisor image rm demo:latest
./bin/layervisor gc
