#!/usr/bin/env bash
# Runs benches/gpu_check.py on a GPU machine with a latte-rs CUDA wheel built elsewhere (a machine with no cargo,
# no network): the wheel is unpacked into a scratch folder put first on PYTHONPATH, and the CUDA libraries the
# build opens at run time (cuBLAS, cuRAND, NVRTC; the driver is the system's) come from the nvidia-* wheels that
# PyTorch installed, unless LD_LIBRARY_PATH already has them.
#
#   bash benches/gpu_run.sh path/to/latte_rs-*.whl [gpu_check.py options]
#
# The wheel: `maturin build --release --features python,cuda,flash-attn` with CUDA_COMPUTE_CAP=90 for an H100/H200
# (see the README's GPU section; .ci/cuda_toolkit.sh provides the toolkit on a machine without one).
set -euo pipefail
wheel="${1:?usage: gpu_run.sh WHEEL [gpu_check.py options]}"
shift
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
"$python" -m zipfile -e "$wheel" "$site"

libs="$("$python" - <<'EOF'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = sorted({os.path.dirname(p) for root in nvidia.__path__ for p in glob.glob(f"{root}/**/lib/lib*.so*", recursive=True)})
print(":".join(dirs))
EOF
)"
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$python" -c "import latte_rs; print('latte_rs', latte_rs.__version__, 'cuda', latte_rs.CUDA_AVAILABLE, 'flash', latte_rs.FLASH_ATTN_AVAILABLE)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec "$python" "$here/gpu_check.py" "$@"
