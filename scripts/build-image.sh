#!/usr/bin/env bash
# Build xiqa's two images from the Dockerfile: xiqa:TAG (target map) and xiqa-serve:TAG (target serve).
# `scripts/build-image.sh base` makes only the plain Debian image local/debian:bookworm.
#
# Where python:3.11-slim-bookworm cannot be pulled (no registry reachable, only the Debian and
# Python package registries), it first makes a stand-in locally: Debian bookworm from debootstrap
# (local/debian:bookworm, also the "fresh machine" of scripts/fresh-machine.sh), plus python3, pip
# and the Python headers (local/python:3.11-slim-bookworm).  At a site with a registry the same
# Dockerfile builds from the real base unchanged.
#
# Environment:
#   TAG              image tag (default 0.1.0)
#   PIP_CA_BUNDLE    a CA bundle pip must trust (networks that inspect TLS); default: the host's
#                    /etc/ssl/certs/ca-certificates.crt when it exists.  It reaches pip as a BuildKit
#                    secret, mounted for the RUN steps only: it is in no layer of the images.
#   TORCH_INDEX_URL  a torch wheel index, e.g. https://download.pytorch.org/whl/cpu for CPU-only torch
#                    (default: PyPI's torch, the CUDA 13 build)
#   PYTHON_IMAGE     base image to use instead (default python:3.11-slim-bookworm, else the stand-in)
#   DEBIAN_MIRROR    for debootstrap and the stand-in (default http://deb.debian.org/debian)
# Needs docker with BuildKit (DOCKER_BUILDKIT=1; Debian's docker.io 20.10 has it) and, for the
# stand-in, debootstrap (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-0.1.0}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PIP_CA_BUNDLE=${PIP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
export DOCKER_BUILDKIT=1

log() { echo "build-image: $(date -u +%H:%M:%S) $*"; }

# BuildKit builds: Docker 20.10's client (Debian's docker.io) has BuildKit built in; a client of 23 or
# later builds with BuildKit only through the buildx plugin ("BuildKit is enabled but the buildx
# component is missing").  Where the first docker on PATH is such a client without buildx (a static
# client in /usr/local/bin ahead of docker.io's /usr/bin/docker, as on these machines), use docker.io's.
buildkit_client() {
    local client major
    for client in docker /usr/bin/docker; do
        command -v "$client" >/dev/null 2>&1 || continue
        if "$client" buildx version >/dev/null 2>&1; then
            echo "$client"
            return
        fi
        major=$("$client" --version | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
        if [ -n "$major" ] && [ "$major" -lt 23 ]; then
            echo "$client"
            return
        fi
    done
    echo "build-image: no docker client that builds with BuildKit (install buildx, or Debian's docker.io)" >&2
    return 1
}
DOCKER_CLIENT=$(buildkit_client)
docker() { command "$DOCKER_CLIENT" "$@"; }

# local/debian:bookworm from debootstrap (minbase: apt, dpkg, bash, coreutils), about a minute
debian_base() {
    if docker image inspect local/debian:bookworm >/dev/null 2>&1; then
        return
    fi
    log "debootstrap bookworm from $DEBIAN_MIRROR -> local/debian:bookworm"
    local rootfs
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    # as Docker's debian images: apt keeps no package cache (else every apt-get layer carries
    # 78 MB of pkgcache.bin/srcpkgcache.bin)
    cat > "$rootfs"/etc/apt/apt.conf.d/docker-clean <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
        - local/debian:bookworm >/dev/null
    rm -rf "$rootfs"
}

# local/python:3.11-slim-bookworm: what the Dockerfile needs of python:3.11-slim-bookworm: python3,
# its headers, and pip on PATH, allowed to install system-wide and importable from the folder it
# installs into, as in the official image.  Debian's own pip lives in /usr/lib/python3/dist-packages,
# which site adds after /usr/local/lib/python3.11/dist-packages: there holoscan's wheel-axle .pth,
# which imports pip on the first start after the install to make holoscan's library links, fails
# ("No module named 'pip'") and holoscan then lacks libholoscan_core.so.4.  So pip is installed
# again, into /usr/local.
python_base() {
    if docker image inspect local/python:3.11-slim-bookworm >/dev/null 2>&1; then
        return
    fi
    debian_base
    log "stand-in local/python:3.11-slim-bookworm (Debian python3 3.11, pip in /usr/local)"
    docker build --progress plain "${ca_secret[@]}" -t local/python:3.11-slim-bookworm - <<EOF
FROM local/debian:bookworm
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip python3-venv python3-dev \\
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \\
    && ln -s /usr/bin/python3 /usr/local/bin/python
RUN --mount=type=secret,id=pip_ca \\
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \\
    && python3 -m pip install --no-cache-dir --progress-bar off --upgrade pip \\
    && test -d /usr/local/lib/python3.11/dist-packages/pip
CMD ["python3"]
EOF
}

ca_secret=()
[ ! -s "$PIP_CA_BUNDLE" ] || ca_secret=(--secret "id=pip_ca,src=$PIP_CA_BUNDLE")

if [ "${1:-}" = base ]; then  # only local/debian:bookworm (scripts/fresh-machine.sh runs in it)
    debian_base
    exit 0
fi

if [ -z "${PYTHON_IMAGE:-}" ]; then
    if docker image inspect python:3.11-slim-bookworm >/dev/null 2>&1 \
            || docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
        PYTHON_IMAGE=python:3.11-slim-bookworm
    else
        log "python:3.11-slim-bookworm cannot be pulled; using a local stand-in"
        python_base
        PYTHON_IMAGE=local/python:3.11-slim-bookworm
    fi
fi

args=(--progress plain --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" "${ca_secret[@]}")
[ -z "$TORCH_INDEX_URL" ] || args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")

for target in map serve; do
    image=xiqa:$TAG
    [ "$target" = map ] || image=xiqa-$target:$TAG
    log "docker build --target $target -t $image (base $PYTHON_IMAGE)"
    started=$(date +%s)
    docker build "${args[@]}" --target "$target" -t "$image" .
    log "$image built in $(( $(date +%s) - started )) s, $(docker image inspect -f '{{.Size}}' "$image") bytes"
done
