#!/usr/bin/env bash
# Build reviewgpt:TARGET from docker/Dockerfile with podman and run its entrypoint for real:
# `doctor`, then the quickstart (tiny model: data check -> train -> merge -> review), offline.
#
#   bash docker/ci-image.sh          reviewgpt:cpu on Debian bookworm (Python 3.11): what CI runs
#   bash docker/ci-image.sh cu117    reviewgpt:cu117 on Debian bullseye (Python 3.9, as the image's
#                                    nvidia/cuda ubuntu20.04 bases) without the flash-attn wheel, plus the
#                                    CPU test suite inside it (nox -s cu117_image). No CUDA base and no GPU:
#                                    it proves Python 3.9 + torch 1.13.1 + the cu117 lock, not CUDA.
#
# No Docker engine and no container registry are reachable on this project's machines, so:
# rootful podman, vfs storage, runc, chroot isolation for RUN steps that need the network, and a
# Debian made with debootstrap and `podman import`ed in place of the base images.
# Everything lives under one fresh folder (podman's storage included) that is removed at the end:
# nothing is cached across runs, and no leftovers of an earlier run are used.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${1:-cpu}"
case "$TARGET" in
    cpu) DEBIAN=bookworm ;;
    # The flash-attn release wheel lives on GitHub, which is not reachable here; the suite runs inside.
    cu117) DEBIAN=bullseye; export REVIEWGPT_FLASH_ATTN_WHEEL="" ;;
    *) echo "ci-image: no stand-in for target '$TARGET' (cpu or cu117)" >&2; exit 2 ;;
esac
# The test tools for the suite in the cu117 image (Python 3.9): the cpu lock's releases need 3.10+.
# Installed in a layer on top of the image, used only for this check, under the image lock's pins.
PY39_TEST_TOOLS="pytest==8.4.2 pytest-socket==0.7.0 hypothesis==6.141.1 mistral-common==1.8.5 tomli==2.5.0 tensorboard==2.20.0"

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

step "debootstrap Debian $DEBIAN as the base image"
debootstrap --variant=minbase "$DEBIAN" "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "localhost/reviewgpt-base:$DEBIAN"
rm -rf "$WORK/rootfs"

step "build reviewgpt:$TARGET (nox -s docker -- $TARGET)"
# pip inside the build must trust what pip outside trusts (a TLS-inspecting proxy's CA here).
export PIP_CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
REVIEWGPT_BASE_IMAGE="localhost/reviewgpt-base:$DEBIAN" REVIEWGPT_PODMAN_LAYERS=false \
REVIEWGPT_PODMAN_ARGS="--root $WORK/storage --runroot $WORK/run" \
    python3 -m nox -s docker -- "$TARGET"
"${PODMAN[@]}" images

# Each `podman run` copies the whole image under vfs (~30 s), so: one run through the entrypoint
# as a user would (`doctor`), then one shell that calls the entrypoint for the rest.
in_image() {
    "${PODMAN[@]}" run --rm --network none "${RUN_LIMITS[@]}" "localhost/reviewgpt:$TARGET" "$@"
}
step "run: doctor (offline: --network none)"
in_image doctor

step "run: train-gemma --help, doctor --json, quickstart (tiny train + merge + review) inside the container"
in_image bash -c '
set -eu
reviewgpt-entrypoint train-gemma --help >/dev/null
reviewgpt-entrypoint recipes
python -c "from reviewgpt.train.distributed import deepspeed_config_path as p; print(\"zero2 config:\", p(\"zero2\"))"
reviewgpt-entrypoint doctor --json --recipe tiny >/tmp/doctor.json
python -c "import json; d = json.load(open(\"/tmp/doctor.json\")); assert d[\"exit_code\"] == 0, d"
start=$(date +%s)
reviewgpt-entrypoint quickstart /home/reviewgpt/qs >/tmp/quickstart.log 2>&1 || { tail -40 /tmp/quickstart.log; exit 1; }
tail -1 /tmp/quickstart.log
test "$(wc -l </home/reviewgpt/qs/reviews.jsonl)" -ge 1
echo "quickstart in the container: $(( $(date +%s) - start )) s; first review:"
head -c 300 /home/reviewgpt/qs/reviews.jsonl; echo
'

if [ "$TARGET" = cu117 ]; then
    step "test layer on reviewgpt:$TARGET: $PY39_TEST_TOOLS"
    mkdir -p "$WORK/test-layer"
    # The image's lock, without hashes, as pip constraints: the test tools cannot move a locked package.
    sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' "envs/$TARGET/requirements.lock" >"$WORK/test-layer/constraints.txt"
    printf '%s\n' "FROM localhost/reviewgpt:$TARGET" "USER 0" "COPY constraints.txt /tmp/constraints.txt" \
        "RUN PIP_CERT=/run/reviewgpt-ca.crt pip install -c /tmp/constraints.txt $PY39_TEST_TOOLS && pip check" \
        "USER 1000:1000" >"$WORK/test-layer/Containerfile"
    "${PODMAN[@]}" build --layers=false --isolation chroot "${RUN_LIMITS[@]}" --volume "$PIP_CERT:/run/reviewgpt-ca.crt:ro" \
        -t "localhost/reviewgpt-test:$TARGET" "$WORK/test-layer"

    step "run: the CPU suite (pytest -m 'not gpu and not slow') inside reviewgpt-test:$TARGET, this checkout mounted read-only"
    start=$(date +%s)
    "${PODMAN[@]}" run --rm --network none "${RUN_LIMITS[@]}" -v "$PWD:/src:ro" -w /src -e PYTHONDONTWRITEBYTECODE=1 \
        "localhost/reviewgpt-test:$TARGET" python -m pytest -q -m "not gpu and not slow" -p no:cacheprovider
    echo "suite in the container: $(( $(date +%s) - start )) s"
fi

step "done"
