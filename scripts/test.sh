#!/usr/bin/env bash
# Runs the whole test suite as root on Debian 12: installs what it needs, then
# static checks, the Windows cross-build, and every test under -race.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=auto
export LAYERVISOR_BOOT_DIR=${LAYERVISOR_BOOT_DIR:-/var/cache/layervisor/boot}

echo "== gofmt"; test -z "$(gofmt -l . | tee /dev/stderr)"
echo "== go vet"; go vet ./...
echo "== GOOS=windows go build"; GOOS=windows go build ./...
echo "== go test -race"
go test -race -count=1 -timeout 60m ./... 2>&1 | tee /tmp/layervisor-test.log
