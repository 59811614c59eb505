#!/usr/bin/env bash
# README's two commands on a fresh machine: a plain Debian bookworm container (no CUDA, no Python
# packages, no xiqa tools), as root, with this checkout copied in (without .venv).  It installs only
# python3 and the CA certificates first, then runs, as README writes them:
#   bash scripts/bootstrap.sh && .venv/bin/xiqa demo
#   bash scripts/bootstrap.sh && .venv/bin/python -m pytest -m "not slow and not gpu" -q
# Environment:
#   FRESH_IMAGE    the machine (default debian:bookworm when it can be pulled, else local/debian:bookworm
#                  from `scripts/build-image.sh base`)
#   FRESH_COMMANDS "demo" to run the first command only (default: both)
#   SITE_CA        a CA bundle pip and npm must trust (networks that inspect TLS); default: the host's
#                  /etc/ssl/certs/ca-certificates.crt.  Mounted read-only for this run only.
# Output: the container's log on stdout (with the times bootstrap and the demo ended); the exit status
# of the commands.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE_CA=${SITE_CA:-/etc/ssl/certs/ca-certificates.crt}
FRESH_COMMANDS=${FRESH_COMMANDS:-both}
if [ -z "${FRESH_IMAGE:-}" ]; then
    if docker pull -q debian:bookworm >/dev/null 2>&1; then
        FRESH_IMAGE=debian:bookworm
    else
        bash scripts/build-image.sh base
        FRESH_IMAGE=local/debian:bookworm
    fi
fi

ca_args=()
if [ -s "$SITE_CA" ]; then
    ca_args=(-v "$SITE_CA:/etc/site-ca.pem:ro" -e PIP_CERT=/etc/site-ca.pem
             -e NPM_CONFIG_CAFILE=/etc/site-ca.pem -e NODE_EXTRA_CA_CERTS=/etc/site-ca.pem)
fi
commands='bash scripts/bootstrap.sh && echo "fresh-machine: $(date -u +%H:%M:%S) bootstrap done" && .venv/bin/xiqa demo'
if [ "$FRESH_COMMANDS" != demo ]; then
    commands+=' && echo "fresh-machine: $(date -u +%H:%M:%S) demo passed"'
    commands+=' && bash scripts/bootstrap.sh && .venv/bin/python -m pytest -m "not slow and not gpu" -q -p no:cacheprovider'
fi
name=xiqa-fresh-$$
echo "fresh-machine: $(date -u +%H:%M:%S) $FRESH_IMAGE, commands: $commands"
# the checkout as a tar stream (what git tracks, plus what is not ignored): no .venv, no build outputs
git ls-files -co --exclude-standard -z | tar --null -T - -c | docker run -i --name "$name" "${ca_args[@]}" \
    -e DEBIAN_FRONTEND=noninteractive "$FRESH_IMAGE" bash -c "
set -euo pipefail
mkdir -p /root/xiqa && cd /root/xiqa && tar -x
apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 ca-certificates >/dev/null
echo \"fresh-machine: \$(date -u +%H:%M:%S) no system CUDA: \$(ldconfig -p | grep -c libcudart || true) libcudart in ldconfig\"
started=\$(date +%s)
$commands
echo \"fresh-machine: \$(date -u +%H:%M:%S) passed in \$(( \$(date +%s) - started )) s\"
" && status=0 || status=$?
docker rm -f "$name" >/dev/null
echo "fresh-machine: exit $status"
exit "$status"
