#!/usr/bin/env python
"""Host cost of turning one chat-completions body with a data-URL image into the internal request, the plain way
(orjson over the whole body, then base64 of the payload string) against http_convert.chat_from_raw (the payload
lifted out of the raw bytes first, http_payloads.py). Median ms of --repeats; writes JSON.

    python benchmarks/bench_http_parse.py --out http_parse.json       # a 3 MiB image: ~4 MB of base64
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import statistics
import time

from vlm_service.server import http_convert as hc


def _body(image_bytes: int) -> bytes:
    url = "data:image/png;base64," + base64.b64encode(os.urandom(image_bytes)).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "describe it " * 20}]
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": parts}], "max_tokens": 8}).encode()


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--image-mib", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    raw = _body(int(args.image_mib * (1 << 20)))
    buf = bytearray(raw)  # what the HTTP app hands over (its receive buffer)
    result = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cores": os.cpu_count(),
              "body_bytes": len(raw), "repeats": args.repeats,
              "plain_ms": _median_ms(lambda: hc.chat_from_body(hc.parse_body(raw)), args.repeats),
              "lifted_ms": _median_ms(lambda: hc.chat_from_raw(buf), args.repeats)}
    print(json.dumps(result))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
