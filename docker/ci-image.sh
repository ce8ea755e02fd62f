#!/usr/bin/env bash
# Build reviewgpt:cpu from docker/Dockerfile with podman and run its entrypoint for real:
# `doctor`, then the quickstart (tiny model: data check -> train -> merge -> review), offline.
#
# No Docker engine and no container registry are reachable on this project's machines, so:
# rootful podman, vfs storage, runc, chroot isolation for RUN steps that need the network, and a
# Debian bookworm made with debootstrap and `podman import`ed in place of the base images.
# Everything lives under one fresh folder (podman's storage included) that is removed at the end:
# nothing is cached across runs, and no leftovers of an earlier run are used.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="$(mktemp -d /var/tmp/reviewgpt-ci-image.XXXXXX)"
PODMAN=(podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs --runtime runc)
RUN_LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
cleanup() { "${PODMAN[@]}" rm --all --force >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
step() { echo "== ci-image: $* ($(( $(date +%s) - T0 )) s)"; }
T0=$(date +%s)

step "install podman, runc, debootstrap"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends podman runc debootstrap uidmap iptables >/dev/null

step "debootstrap Debian bookworm as the base image"
debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - localhost/reviewgpt-base:bookworm
rm -rf "$WORK/rootfs"

step "build reviewgpt:cpu (nox -s docker -- cpu)"
# pip inside the build must trust what pip outside trusts (a TLS-inspecting proxy's CA here).
export PIP_CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
REVIEWGPT_BASE_IMAGE=localhost/reviewgpt-base:bookworm REVIEWGPT_PODMAN_LAYERS=false \
REVIEWGPT_PODMAN_ARGS="--root $WORK/storage --runroot $WORK/run" \
    python3 -m nox -s docker -- cpu
"${PODMAN[@]}" images

# Each `podman run` copies the whole image under vfs (~30 s), so: one run through the entrypoint
# as a user would (`doctor`), then one shell that calls the entrypoint for the rest.
in_image() {
    "${PODMAN[@]}" run --rm --network none "${RUN_LIMITS[@]}" localhost/reviewgpt:cpu "$@"
}
step "run: doctor (offline: --network none)"
in_image doctor

step "run: train-gemma --help, doctor --json, quickstart (tiny train + merge + review) inside the container"
in_image bash -c '
set -eu
reviewgpt-entrypoint train-gemma --help >/dev/null
reviewgpt-entrypoint recipes
python -c "from reviewgpt.distributed import deepspeed_config_path as p; print(\"zero2 config:\", p(\"zero2\"))"
reviewgpt-entrypoint doctor --json --recipe tiny >/tmp/doctor.json
python -c "import json; d = json.load(open(\"/tmp/doctor.json\")); assert d[\"exit_code\"] == 0, d"
start=$(date +%s)
reviewgpt-entrypoint quickstart /home/reviewgpt/qs >/tmp/quickstart.log 2>&1 || { tail -40 /tmp/quickstart.log; exit 1; }
tail -1 /tmp/quickstart.log
test "$(wc -l </home/reviewgpt/qs/reviews.jsonl)" -ge 1
echo "quickstart in the container: $(( $(date +%s) - start )) s; first review:"
head -c 300 /home/reviewgpt/qs/reviews.jsonl; echo
'

step "done"
