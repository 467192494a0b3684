# vlm-service for a CUDA host (the image deploy/kubernetes-sidecar.yaml runs):
#   docker build -t vlm-service:0.1.0 .
#   docker run --gpus all -v vlm-state:/var/cache/vlm-service -v /models:/models:ro vlm-service:0.1.0 \
#     serve --model /models/Qwen2.5-VL-7B-Instruct
# The devel base brings nvcc, which FlashInfer's JIT kernels compile with on first use (cached in the state volume).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

# torch's CUDA build comes from its own index (PyPI's default torch may not match the base image's CUDA)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    VLM_STATE_DIR=/var/cache/vlm-service \
    VLM_KERNEL_CACHE=/var/cache/vlm-service/kernels \
    FLASHINFER_WORKSPACE_BASE=/var/cache/vlm-service/kernels/flashinfer

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

COPY . /src
# the GPU extras (FlashInfer, cuDNN frontend, fa3-fwd); the gRPC stubs are generated from protos/ by the build
RUN pip install "/src[gpu]" && rm -rf /src \
    && useradd --uid 1000 --create-home vlm \
    && mkdir -p /var/cache/vlm-service && chown vlm /var/cache/vlm-service

USER vlm
# demo checkpoints, the dev TLS CA (tls/ca.crt: what clients trust) and the compiled-kernel cache live here
VOLUME ["/var/cache/vlm-service"]
EXPOSE 50051 9400

# healthy = the readiness service is SERVING (model loaded and warm); through the dev CA in the state dir
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["vlm-service", "health", "--service", "vlm.v1.VisionLanguageService"]

ENTRYPOINT ["vlm-service"]
CMD ["serve"]
