#!/bin/sh
# The whole xshim flow on the built-in example (examples/arm64-hello), on an x86_64 host with no
# binfmt_misc:
#
#   arm64 Debian tree (debootstrap, second stage through `xshim run`) and amd64 tree (debootstrap)
#   -> local base images (nothing pulled) -> hello for both into the build context
#   -> `xshim build --platform linux/amd64,linux/arm64 -o type=oci,dest=hello.tar`
#   -> checks on the archive (skopeo) -> `xshim build --load` of arm64 -> run it through the bundle
#
# Usage (as root):  examples/run-example.sh [WORKDIR]        default WORKDIR /var/tmp/xshim-example
#
# Docker: the daemon at $DOCKER_HOST (or the default socket) when one answers; otherwise a private
# dockerd is started for this run (its own socket, data root under WORKDIR, no bridge, no
# iptables) and stopped at the end. The client is $DOCKER (default /usr/bin/docker); the images
# are built with Docker's legacy builder (xshim build --builder docker), which any dockerd has.
# The Debian mirror comes from $XSHIM_MIRROR or this machine's apt configuration.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
work=${1:-/var/tmp/xshim-example}
docker=${DOCKER:-/usr/bin/docker}
platforms=linux/amd64,linux/arm64
image=xshim-example/hello:arm64
ctx=$work/context
archive=$work/hello.tar

step() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run-example: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, dockerd)"
mkdir -p "$work"
# xshim build runs `docker`: the client chosen here, whatever else is on PATH.
mkdir -p "$work/bin"
ln -sf "$docker" "$work/bin/docker"
PATH=$work/bin:$PATH
export PATH

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

made() { [ -f "$1/var/lib/dpkg/status" ] && [ ! -e "$1/debootstrap" ]; }

step "1/6 Debian trees: arm64 in $work/rootfs, amd64 in $work/rootfs-amd64"
if made "$work/rootfs"; then
    echo "(arm64 already made)" >&2
else
    rm -rf "$work/rootfs"
    xshim rootfs --platform linux/arm64 --second-stage "$work/rootfs"
fi
if made "$work/rootfs-amd64"; then
    echo "(amd64 already made)" >&2
else
    rm -rf "$work/rootfs-amd64"
    mirror=$(python3 -c 'from xshim.builder.debian import find_mirror; print(find_mirror(None))')
    suite=$(python3 -c 'from xshim.builder.debian import host_suite; print(host_suite())')
    keyring=$(python3 -c 'from xshim.builder.debian import DEFAULT_KEYRING as k; print(k)')
    [ -r "$keyring" ] || die "$keyring is missing (apt-get install debian-archive-keyring)"
    debootstrap --arch=amd64 --variant=minbase --keyring="$keyring" "$suite" \
        "$work/rootfs-amd64" "$mirror" \
        >"$work/debootstrap-amd64.log" 2>&1 || die "debootstrap failed; see $work/debootstrap-amd64.log"
fi

step "2/6 base images xshim-example/debian:amd64 and :arm64 from the trees"
for arch in amd64 arm64; do
    tree=$work/rootfs
    [ "$arch" = arm64 ] || tree=$work/rootfs-$arch
    python3 "$here/arm64-hello/prepare.py" image "$tree" "$work/base-$arch.tar" \
        --tag "xshim-example/debian:$arch" --platform "linux/$arch"
    "$docker" load -i "$work/base-$arch.tar"
done

step "3/6 build context: $ctx"
rm -rf "$ctx"
mkdir -p "$ctx"
cp "$here/arm64-hello/Dockerfile" "$ctx/"
for arch in amd64 arm64; do
    python3 "$here/arm64-hello/prepare.py" deb hello "$ctx/hello_$arch.deb" --platform "linux/$arch"
done

step "4/6 xshim build --platform $platforms -o type=oci,dest=$archive"
rm -f "$archive"
xshim build --builder docker --platform "$platforms" -o "type=oci,dest=$archive" \
    --progress plain "$ctx"

step "5/6 the archive: one index, both platforms"
skopeo inspect --raw "oci-archive:$archive" >"$work/index.json"
got=$(python3 -c 'import json, sys
idx = json.load(open(sys.argv[1]))
print(" ".join(sorted(m["platform"]["os"] + "/" + m["platform"]["architecture"]
                      for m in idx["manifests"])))' "$work/index.json")
[ "$got" = "linux/amd64 linux/arm64" ] || die "the index lists $got, expected linux/amd64 linux/arm64"
for arch in amd64 arm64; do
    a=$(skopeo inspect --override-arch "$arch" -f '{{.Os}}/{{.Architecture}}' "oci-archive:$archive")
    [ "$a" = "linux/$arch" ] || die "the $arch image says $a"
done
echo "index: $got" >&2

step "6/6 xshim build --platform linux/arm64 --load -t $image (cached), then run it"
xshim build --builder docker --platform linux/arm64 --load -t "$image" --progress quiet "$ctx"
got=$("$docker" image inspect -f '{{.Os}}/{{.Architecture}}' "$image")
[ "$got" = linux/arm64 ] || die "image platform is $got, expected linux/arm64"
echo "platform: $got" >&2
cid=$("$docker" create "$image")
"$docker" export "$cid" | tar -t >"$work/files.txt"
"$docker" rm "$cid" >/dev/null
! grep -q -e '^\.xshim/' -e '^\./\.xshim/' "$work/files.txt" || die "the image still has /.xshim"
echo "no /.xshim in the image" >&2
# The built image's own entrypoint, run through a bundle mounted for this run only.
rm -rf "$work/bundle"
xshim bundle --platform linux/arm64 -o "$work/bundle"
"$docker" run --rm --network none -v "$work/bundle:/.xshim:ro" \
    --entrypoint /.xshim/bin/xshim-exec "$image" hello --greeting="built and run through xshim"
echo "OK: $image" >&2
