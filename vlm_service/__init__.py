"""vlm-service: a gRPC server for vision-language models (Qwen2.5-VL, Qwen3-VL)."""

__version__ = "0.1.0"
