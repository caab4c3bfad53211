#!/usr/bin/env bash
# Builds the wheels users install without Rust, checks them, and proves the CPU one works with no toolchain.
#
#   bash .ci/wheel.sh [OUT_DIR]                       # the CPU wheel: build, auditwheel, fresh venv without cargo,
#                                                     # sample both built-in models (what CI runs)
#   LATTE_RS_WHEELS="cpu cuda" bash .ci/wheel.sh       # also the CUDA wheel, into OUT_DIR/cuda/ (built, audited,
#                                                     # installed and sampled on the CPU: no GPU here)
#
# The wheels are abi3 (one wheel for CPython 3.10 and later) and tagged manylinux_2_28, the glibc baseline of
# PyTorch's own wheels (RHEL 8 and most clusters): maturin links against glibc 2.28's symbols through zig (the
# `ziglang` package from PyPI), so a build machine with a newer glibc still makes a wheel that installs on older
# ones. auditwheel then confirms the tag from the symbols the extension really uses.
#
# The target folders live in LATTE_RS_CI_CACHE (as the CUDA check's does in .ci/run): zig builds for an explicit
# target triple, so they cannot share target/ with `pip install .`, and a cold build takes about 8 minutes on 2 cores.
# The CUDA wheel is built from the PyPI CUDA toolkit of .ci/cuda_toolkit.sh and shares the CUDA clippy check's
# target folder (candle's compiled kernels are reused). It opens the driver and the CUDA libraries at run time
# (candle-core's dynamic loading, vendor/README.md), so it links none of them and imports on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
policy=manylinux_2_28
cache="${LATTE_RS_CI_CACHE:-$HOME/.cache/latte-rs}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# The build tools in a venv of their own (maturin, zig, auditwheel: all from PyPI).
python3 -m venv "$scratch/tools"
"$scratch/tools/bin/python" -m pip install -q --upgrade pip
"$scratch/tools/bin/python" -m pip install -q "maturin>=1.5,<2" "ziglang>=0.13" "auditwheel>=6"
export PATH="$scratch/tools/bin:$PATH"

build() {  # build DIR FEATURES [-- RUSTC ARGS]: one abi3 wheel for $policy into DIR (compiler output if it fails)
  local dir="$1" features="$2"
  shift 2
  local log="$scratch/build-${features//,/-}.log"
  if maturin build --release --zig --compatibility "$policy" --features "$features" --out "$dir" "$@" > "$log" 2>&1
  then
    tail -2 "$log"
  else
    grep -E -B2 -A12 "^(error|warning: .*failed)" "$log" | head -80 || true
    tail -20 "$log"
    echo "the $features wheel did not build (log above)" >&2
    return 1
  fi
}

check() {  # check WHEEL NAME: abi3 $policy by name and by auditwheel, no CUDA library linked, installs and samples
  local wheel="$1" name="$2"
  echo "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
  case "$(basename "$wheel")" in
    *-abi3-${policy}_x86_64*.whl | *-abi3-*.${policy}_x86_64*.whl) ;;
    *) echo "expected an abi3 $policy wheel, got $(basename "$wheel")" >&2; exit 1 ;;
  esac
  # auditwheel reads the symbol versions the extension needs and the libraries it links: the policy it names must
  # be ours (or an older one), with nothing to bundle.
  auditwheel show "$wheel" | tee "$scratch/audit-$name.txt"
  grep -q "is consistent with the following platform tag: \"$policy" "$scratch/audit-$name.txt" \
    || grep -qE "manylinux_2_(1[0-9]|2[0-8])|manylinux2014" "$scratch/audit-$name.txt" \
    || { echo "auditwheel does not accept $(basename "$wheel") as $policy" >&2; exit 1; }
  if grep -qE "lib(cuda|cudart|cublas|curand|nvrtc)" "$scratch/audit-$name.txt"; then
    echo "the $name wheel links a CUDA library at load time; it must open them at run time" >&2
    exit 1
  fi
  # Installs and runs where no Rust toolchain is reachable: a fresh venv, PATH without cargo/rustc (and, for the
  # CUDA wheel, no CUDA library anywhere it would look: it must import and sample on the CPU all the same).
  python3 -m venv "$scratch/user-$name"
  local clean_path
  clean_path="$(echo "$PATH" | tr ':' '\n' | grep -v -e '\.cargo' -e "$scratch/tools" -e cuda13 | paste -sd: -)"
  (
    export PATH="$scratch/user-$name/bin:$clean_path"
    unset LD_LIBRARY_PATH LIBRARY_PATH CUDA_ROOT CUDA_PATH
    if command -v cargo > /dev/null || command -v rustc > /dev/null; then
      echo "cargo is still on PATH: the install check would prove nothing" >&2
      exit 1
    fi
    python -m pip install -q --upgrade pip
    python -m pip install -q "$wheel"
    cd "$scratch"
    latte-rs sample --steps 4 --num-videos 1 --format gif --output-dir "$scratch/sample-$name" --no-progress
    latte-rs sample --prompt "a red square moving right" --steps 4 --format gif --output-dir "$scratch/t2v-$name" \
      --no-progress
    ls "$scratch/sample-$name"/*.gif "$scratch/t2v-$name"/*.gif > /dev/null
    echo "installed the $name wheel with no cargo on PATH and sampled both built-in models"
  )
}

kinds="${LATTE_RS_WHEELS:-cpu}"
rm -f "$out"/latte_rs-*.whl "$out"/cuda/latte_rs-*.whl

if [[ " $kinds " == *" cpu "* ]]; then
  CARGO_TARGET_DIR="$cache/wheel-target" build "$out" python
  check "$(ls "$out"/latte_rs-*.whl)" cpu
fi

if [[ " $kinds " == *" cuda "* ]]; then
  bash .ci/cuda_toolkit.sh "$cache/cuda13"
  (
    # shellcheck disable=SC1091
    source "$cache/cuda13/env.sh"
    export CARGO_TARGET_DIR="$cache/cuda-target"
    # candle-kernels asks the linker for `-l moe` (a static archive its build script compiles into its build folder)
    # and `-l dylib=cudart`. zig's cross-linker looks only for shared libraries under the search path it is given,
    # so it finds neither: a linker script named libmoe.so points it at the archive, and the toolkit's lib/ is on
    # the search path for cudart (which the extension then does not keep: nothing calls it, cudarc opens CUDA at
    # run time, and the linker drops the unused library; `check` confirms that nothing CUDA is linked). The
    # archive exists once the build script ran: a cold build fails at the link, then links.
    links="$scratch/cuda-links"
    mkdir -p "$links"
    moe() { ls -t "$CARGO_TARGET_DIR"/x86_64-unknown-linux-gnu/release/build/candle-kernels-*/out/libmoe.a 2>/dev/null | head -1; }
    extra=(-- -L "native=$links" -L "native=$cache/cuda13/lib")
    if [ -z "$(moe)" ]; then
      build "$scratch/cuda" python,cuda "${extra[@]}" > /dev/null 2>&1 || true
    fi
    [ -n "$(moe)" ] || { echo "candle-kernels built no libmoe.a under $CARGO_TARGET_DIR" >&2; exit 1; }
    echo "INPUT($(moe))" > "$links/libmoe.so"
    build "$scratch/cuda" python,cuda "${extra[@]}"
  )
  cuda_wheel="$(ls "$scratch"/cuda/latte_rs-*.whl)"
  check "$cuda_wheel" cuda
  # Same file name as the CPU wheel (a wheel's name is its metadata), so it goes in a folder of its own.
  mkdir -p "$out/cuda"
  mv "$cuda_wheel" "$out/cuda/"
  echo "built the CUDA wheel: $out/cuda/$(basename "$cuda_wheel")"
fi
