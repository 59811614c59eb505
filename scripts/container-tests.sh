#!/usr/bin/env bash
# Run the container tests (tests/test_container.py, marker "container") against the images that
# scripts/build-image.sh built: xiqa-serve as the StatefulSet runs it, xiqa (the MAP) as the Argo
# template runs it.  Needs docker, dcmtk's storescu and Orthanc (scripts/bootstrap.sh installs both)
# and .venv.  Prints the start-up and footprint figures (lines "container-figure: ...").
#   XIQA_IMAGE_TAG  the images' tag (default 0.1.0)
set -euo pipefail
cd "$(dirname "$0")/.."
for image in "xiqa:${XIQA_IMAGE_TAG:-0.1.0}" "xiqa-serve:${XIQA_IMAGE_TAG:-0.1.0}"; do
    docker image inspect "$image" >/dev/null 2>&1 || { echo "container-tests: no image $image; run scripts/build-image.sh" >&2; exit 2; }
done
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^xiqa(-serve)?:' || true
exec .venv/bin/python -m pytest -m container tests/test_container.py -s -v -p no:cacheprovider "$@"
