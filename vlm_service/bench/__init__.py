"""The TTFT benchmark harness: `vlm-service bench` and benchmarks/ttft.py both call `main(argv)`."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line arguments argv (None = sys.argv[1:]); returns the exit code."""
    from vlm_service.bench.cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
