#!/usr/bin/env python
"""TTFT / throughput benchmark of a vlm-service server over gRPC (same flags as `vlm-service bench`).

Example (GPU host, a running server, a rate sweep and a transformers peer):
    python benchmarks/ttft.py --target 127.0.0.1:50051 --insecure --num-prompts 200 \
        --request-rate 1 2 4 inf --image-resolution 1024x1024 --input-len 77 --output-len 32 \
        --peer transformers --peer-model /models/Qwen3-VL-8B --peer-num-prompts 20 --result-dir results/ttft
"""

import sys

from vlm_service.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
