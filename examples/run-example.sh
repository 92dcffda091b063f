#!/bin/sh
# The whole xshim flow on the built-in example (examples/arm64-hello), on an x86_64 host with no
# binfmt_misc:
#
#   arm64 Debian tree (debootstrap, second stage through `xshim run`)
#   -> local base image (nothing pulled) -> `xshim bundle` -> `xshim patch`
#   -> `docker build` with the legacy builder -> checks on the built image
#
# Usage (as root):  examples/run-example.sh [WORKDIR]        default WORKDIR /var/tmp/xshim-example
#
# Docker: the daemon at $DOCKER_HOST (or the default socket) when one answers; otherwise a private
# dockerd is started for this run (its own socket, data root under WORKDIR, no bridge, no
# iptables) and stopped at the end. The client is $DOCKER (default /usr/bin/docker).
# The Debian mirror comes from $XSHIM_MIRROR or this machine's apt configuration.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
work=${1:-/var/tmp/xshim-example}
docker=${DOCKER:-/usr/bin/docker}
platform=linux/arm64
base=xshim-example/debian:arm64
image=xshim-example/hello:arm64
ctx=$work/context

step() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run-example: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, dockerd)"
mkdir -p "$work"

handlers=$(ls /proc/sys/fs/binfmt_misc 2>/dev/null | grep -v -x -e register -e status || true)
if [ -n "$handlers" ]; then
    echo "note: binfmt_misc handlers are registered here ($handlers); xshim does not use them" >&2
fi

dockerd_pid=
stop_dockerd() {
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
}
if ! "$docker" version >/dev/null 2>&1; then
    step "no Docker daemon answers: starting a private one (log: $work/dockerd.log)"
    run=/run/xshim-example
    mkdir -p "$run" "$work/docker"
    DOCKER_HOST=unix://$run/docker.sock
    export DOCKER_HOST
    dockerd --host "$DOCKER_HOST" --data-root "$work/docker" --exec-root "$run/exec" \
        --pidfile "$run/docker.pid" --bridge=none --iptables=false --ip6tables=false \
        >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    trap stop_dockerd EXIT
    trap 'exit 130' INT TERM
    i=0
    until "$docker" version >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 120 ] || die "dockerd did not start; see $work/dockerd.log"
        kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited; see $work/dockerd.log"
        sleep 0.5
    done
fi

step "1/6 arm64 Debian tree: $work/rootfs"
if [ -f "$work/rootfs/var/lib/dpkg/status" ] && [ ! -e "$work/rootfs/debootstrap" ]; then
    echo "(already made)" >&2
else
    rm -rf "$work/rootfs"
    xshim rootfs --platform "$platform" --second-stage "$work/rootfs"
fi

step "2/6 base image $base from the tree"
python3 "$here/arm64-hello/prepare.py" image "$work/rootfs" "$work/base.tar" \
    --tag "$base" --platform "$platform"
"$docker" load -i "$work/base.tar"

step "3/6 build context: $ctx"
rm -rf "$ctx"
mkdir -p "$ctx"
cp "$here/arm64-hello/Dockerfile" "$ctx/"
python3 "$here/arm64-hello/prepare.py" deb hello "$ctx/hello.deb" --platform "$platform"

step "4/6 xshim bundle"
(cd "$ctx" && xshim bundle --platform "$platform")

step "5/6 xshim patch"
(cd "$ctx" && xshim patch Dockerfile -o Dockerfile.xshim --diff)

step "6/6 docker build (legacy builder) of $image"
DOCKER_BUILDKIT=0 "$docker" build --build-arg XSHIM_TRACE=1 -f "$ctx/Dockerfile.xshim" \
    -t "$image" "$ctx"

step "checks"
got=$("$docker" image inspect -f '{{.Os}}/{{.Architecture}}' "$image")
[ "$got" = "$platform" ] || die "image platform is $got, expected $platform"
echo "platform: $got" >&2
cid=$("$docker" create "$image")
"$docker" export "$cid" | tar -t >"$work/files.txt"
"$docker" rm "$cid" >/dev/null
! grep -q -e '^\.xshim/' -e '^\./\.xshim/' "$work/files.txt" || die "the image still has /.xshim"
echo "no /.xshim in the image" >&2
# The built image's own entrypoint, run through the bundle mounted for this run only.
"$docker" run --rm --network none -v "$ctx/.xshim:/.xshim:ro" \
    --entrypoint /.xshim/bin/xshim-exec "$image" hello --greeting="built and run through xshim"
echo "OK: $image" >&2
