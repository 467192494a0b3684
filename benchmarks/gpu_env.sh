# Source this at the start of a command on the H200 host (the device tool): installs the carried GPU extras
# (.whl/, from ../shared/gpu/fetch_wheels.sh all, plus googleapis-common-protos 1.72.0, which grpcio-status needs and
# the GPU image lacks: pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl
# googleapis-common-protos==1.72.0) into /tmp/site and points Python at them and at this checkout.
# The gRPC stubs must be carried too (vlm_service/_proto, generated here with grpcio-tools 1.84).
# A second folder, .whl2/ (PyAV, the http extra), goes to /tmp/site2: the 64 MiB carry limit does not hold both, so
# a first call carries .whl and a second one, on the still-warm machine, carries .whl2 (.whl stays there). Any other
# split works the same way: every carried .whlX folder is installed into /tmp/siteX and put on PYTHONPATH.
for d in .whl*; do  # each carried wheel folder .whlX goes to /tmp/siteX (a call's carry limit: see below)
  compgen -G "$d/*.whl" >/dev/null || continue
  # a warm machine keeps /tmp/site*: reinstall only when the carried wheel set changed
  stamp=/tmp/site${d#.whl}/.wheels
  [ "$(ls $d)" = "$(cat $stamp 2>/dev/null)" ] && continue
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site${d#.whl} \
    $d/*.whl || { echo "wheel install from $d failed" >&2; return 1; }
  ls $d > $stamp
done
compgen -G "/tmp/site*/.wheels" >/dev/null || { echo "no GPU extras: carry .whl (fresh machine)" >&2; return 1; }
site_path=$(for s in /tmp/site*/.wheels; do printf '%s:' "$(dirname $s)"; done)
export PYTHONPATH=$site_path$PWD
export PYTHONUNBUFFERED=1
export FLASHINFER_WORKSPACE_BASE=/tmp/flashinfer-cache
export VLM_STATE_DIR=/tmp/vlm-state
mkdir -p "$OUT"
python3 - <<'PY' | tee "$OUT/versions.json"
import json, datetime, importlib, torch
v = {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
for name in ("triton", "transformers", "flashinfer", "cudnn", "grpc", "google.protobuf"):
    try:
        v[name] = importlib.import_module(name).__version__
    except Exception as e:  # report, don't fail
        v[name] = f"unavailable: {e.__class__.__name__}"
print(json.dumps(v))
PY
