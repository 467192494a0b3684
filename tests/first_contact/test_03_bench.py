"""Item 3: `vlm-service bench` dials the local server by default and trusts the dev CA like the other commands, takes
generate's flag names (the old --tls-* names still work), runs without matplotlib (a one-line note, no traceback),
and gives each sweep point images of its own (no point measured on caches an earlier point warmed)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.first_contact.fc_helpers import REPO
from vlm_service.bench.cli import _validate, build_parser
from vlm_service.client import DEFAULT_TARGET

SMALL = ["--num-prompts", "2", "--num-warmup", "1", "--image-resolution", "64x64", "--input-len", "8",
         "--output-len", "2"]


def test_no_target_means_the_local_server():
    args = build_parser().parse_args([])
    _validate(args)
    assert args.target == DEFAULT_TARGET == "127.0.0.1:50051"


def test_uds_flag_is_a_unix_target(tmp_path):
    args = build_parser().parse_args(["--uds", str(tmp_path / "s.sock")])
    _validate(args)
    assert args.target == f"unix:{tmp_path / 's.sock'}"


def _bench(*args: str, block_matplotlib: bool = False) -> subprocess.CompletedProcess:
    """vlm-service bench ARGS in a subprocess; with block_matplotlib, as on an install without it."""
    prelude = "import sys; sys.modules['matplotlib'] = None; " if block_matplotlib else "import sys; "
    code = prelude + "from vlm_service.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "bench", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_trusts_the_dev_ca_and_sweeps_on_fresh_images_without_matplotlib(served, tmp_path):
    out = tmp_path / "res"
    run = _bench("--target", served.target, "--state-dir", str(served.state_dir), *SMALL,
                 "--request-rate", "inf", "50", "--result-dir", str(out), block_matplotlib=True)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    notes = [line for line in run.stderr.splitlines() if "matplotlib" in line]
    assert len(notes) == 1 and notes[0].startswith("note: no plots")
    points = [[json.loads(line) for line in (out / f"requests-{label}.jsonl").read_text().splitlines()]
              for label in ("rate=inf", "rate=50")]
    for results in points:
        assert results and all(r["ok"] for r in results)
    second = points[1]
    # fresh images: the second point's image tokens are never answered by the prefix cache the first one filled
    assert all(r["cached_tokens"] < r["image_tokens"] for r in second), second


def test_old_tls_flag_names_still_work(served, tmp_path):
    run = _bench("--target", served.target, "--tls-ca", str(served.state_dir / "tls" / "ca.crt"), *SMALL,
                 "--result-dir", str(tmp_path / "res"), "--no-plots")
    assert run.returncode == 0, run.stderr
