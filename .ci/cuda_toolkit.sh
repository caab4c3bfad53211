#!/usr/bin/env bash
# A CUDA 13.0 toolkit and the CUTLASS headers from PyPI wheels, so that `--features cuda` and `--features flash-attn`
# compile on a machine with no GPU and no system CUDA (registry packages only).
#
#   bash .ci/cuda_toolkit.sh [DIR]     install into DIR (default ~/.cache/latte-rs/cuda13); reused when complete
#   source DIR/env.sh                  PATH, CUDA_ROOT/CUDA_PATH, CUDA_COMPUTE_CAP, LIBRARY_PATH, CUDAFORGE_HOME
#
# What it installs is written to DIR/installed.txt (pip's names and versions). The pins are one CUDA release on
# purpose: a newer nvvm emits PTX that the 13.0 ptxas rejects, and cudarc 0.19.10 knows CUDA up to 13.4.
#
# Three things the wheels do not lay out as a toolkit does, and what this script does about them:
# - the libraries are versioned only (libcudart.so.13, ...): the linker's `-lcudart` (candle-flash-attn links it)
#   finds the unversioned links made in DIR/lib;
# - there is no libcuda.so (the driver): none is needed, cudarc loads the driver and the CUDA libraries when the
#   program first touches a GPU (candle-core's `dynamic-loading`, see vendor/README.md);
# - candle-flash-attn's build (cudaforge) wants a git checkout of CUTLASS at a pinned commit under
#   $CUDAFORGE_HOME/git/checkouts/ and clones it otherwise: DIR/cudaforge holds that checkout, made from the
#   `nvidia-cutlass` wheel's headers (CUTLASS 4.2) with HEAD naming the pinned commit, so no network is needed.
#
# CUDA_COMPUTE_CAP defaults to 90 (Hopper: H100, H200). candle's kernels and flash attention are compiled for one
# capability: set CUDA_COMPUTE_CAP=80 before sourcing env.sh for Ampere (A100); sm_90 code does not run on sm_80.
set -euo pipefail

dir="${1:-$HOME/.cache/latte-rs/cuda13}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
site="$dir/site"
# The commit candle-flash-attn 0.11's build.rs pins (CUTLASS_COMMIT); cudaforge keys its checkout on 16 characters.
cutlass_commit="7d49e6c7e2f8896c47f586706e67e1fb215529dc"
packages=(
  "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*"
  "nvidia-cutlass==4.2.*"
)
stamp="$(printf '%s\n' "${packages[@]}" "$cutlass_commit" | sha256sum | cut -c1-16)"

if [[ ! -f "$dir/env.sh" || "$(cat "$dir/stamp" 2>/dev/null)" != "$stamp" ]]; then
  rm -rf "$site" "$dir/lib" "$dir/cudaforge" "$dir/env.sh"
  # --no-deps: nvidia-cutlass pulls in cuda-python, numpy, scipy and networkx for its Python generator, which a
  # build does not use; only its headers are wanted.
  python3 -m pip install -q --no-deps --no-compile --target "$site" "${packages[@]}"
  python3 -m pip list --path "$site" --format freeze > "$dir/installed.txt"

  cuda="$site/nvidia/cu13"
  test -x "$cuda/bin/nvcc" || { echo "no nvcc at $cuda/bin/nvcc" >&2; exit 1; }
  mkdir -p "$dir/lib"
  for lib in "$cuda"/lib/lib*.so.*; do
    name="$(basename "$lib")"
    ln -sf "$lib" "$dir/lib/${name%%.so.*}.so"
  done

  cutlass_src="$site/cutlass_library/source"
  test -f "$cutlass_src/include/cutlass/cutlass.h" || { echo "no CUTLASS headers in $cutlass_src" >&2; exit 1; }
  checkout="$dir/cudaforge/git/checkouts/cutlass-${cutlass_commit:0:16}"
  mkdir -p "$checkout/tools/util" "$checkout/.git"
  ln -sfn "$cutlass_src/include" "$checkout/include"
  ln -sfn "$cutlass_src/tools/util/include" "$checkout/tools/util/include"
  # cudaforge reuses a checkout whose `git rev-parse HEAD` is the pinned commit; a detached HEAD naming it is
  # enough for that (git does not look the object up).
  git init -q "$checkout"
  echo "$cutlass_commit" > "$checkout/.git/HEAD"

  cat > "$dir/env.sh" <<EOF
# Written by .ci/cuda_toolkit.sh: the PyPI CUDA 13.0 toolkit in $dir.
export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export PATH="$cuda/bin:\$PATH"
export LIBRARY_PATH="$dir/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_HOME="$dir/cudaforge"
EOF
  echo "$stamp" > "$dir/stamp"
fi

# shellcheck disable=SC1091
source "$dir/env.sh"
echo "CUDA toolkit in $dir: $(nvcc --version | tail -1); compute capability $CUDA_COMPUTE_CAP"
