#!/usr/bin/env bash
# Install the ACE-Step LoRA Trainer into ./env (Linux, macOS). Safe to re-run: it reuses env/ and
# installs only what is missing or of the wrong version.
#
# Usage: ./install.sh [--cpu | --cuda] [--dev]
#   --cpu    install the CPU build of torch (no NVIDIA GPU, or you do not want to use it)
#   --cuda   install a CUDA build of torch (needs a working nvidia-smi)
#   --dev    also install the test tools (requirements-dev.txt)
# Environment variables:
#   ACESTEP_TORCH=auto|cpu|cuda   same as the flags; auto (default) = CUDA when nvidia-smi works
#                                 (Linux), else CPU. macOS always gets PyPI torch (with MPS).
#   ACESTEP_TORCH_INDEX_URL=URL   the wheel index torch comes from, instead of the one picked from
#                                 the driver's CUDA version (CUDA) or the default index (CPU).
#                                 Small CPU-only wheel on Linux: https://download.pytorch.org/whl/cpu
#   ACESTEP_INSTALLER=pip|uv      default: uv when it is on PATH, else pip
#   ACESTEP_PYTHON=python3.12     the Python that creates env/ (3.10 to 3.12; default python3)
set -euo pipefail

TORCH_VERSION="2.13.0"
TORCHAO_VERSION="0.18.0"
PYTORCH_INDEX="https://download.pytorch.org/whl"

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(pwd)"
SCRIPT="$ROOT/$(basename "${BASH_SOURCE[0]}")"
ENV_PYTHON="$ROOT/env/bin/python"

step() { printf '\n=== %s ===\n' "$*"; }
fail() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,16p' "$SCRIPT" | sed 's/^# \{0,1\}//'; }

parse_flags() {
    TORCH_MODE="${ACESTEP_TORCH:-auto}"
    WITH_DEV=0
    for arg in "$@"; do
        case "$arg" in
            --cpu) TORCH_MODE=cpu ;;
            --cuda) TORCH_MODE=cuda ;;
            --dev) WITH_DEV=1 ;;
            -h|--help) usage; exit 0 ;;
            *) fail "unknown option '$arg'; see: ./install.sh --help" ;;
        esac
    done
    case "$TORCH_MODE" in
        auto|cpu|cuda) ;;
        *) fail "ACESTEP_TORCH=$TORCH_MODE: use auto, cpu or cuda" ;;
    esac
}

# The Python that creates env/ must be 3.10-3.12 (pyproject's requires-python).
check_python_version() {
    local python="$1"
    "$python" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' \
        || fail "$python is Python $("$python" -c 'import sys; print(sys.version.split()[0])'); \
the trainer needs Python 3.10, 3.11 or 3.12. Install one and run: ACESTEP_PYTHON=python3.12 ./install.sh"
}

create_env() {
    step "Python environment: $ROOT/env"
    if [ -e "$ENV_PYTHON" ]; then
        "$ENV_PYTHON" -c 'import sys' 2>/dev/null \
            || fail "env/ exists but its Python does not run (was the Python it was made from removed?). Delete $ROOT/env and run ./install.sh again."
        check_python_version "$ENV_PYTHON"
        echo "reusing env/ ($("$ENV_PYTHON" --version 2>&1))"
        return
    fi
    local python="${ACESTEP_PYTHON:-python3}"
    command -v "$python" >/dev/null || fail "'$python' not found. Install Python 3.10-3.12 (or set ACESTEP_PYTHON to one)."
    check_python_version "$python"
    "$python" -m venv env \
        || fail "'$python -m venv env' failed. On Debian/Ubuntu install the venv module: sudo apt-get install python3-venv; then delete $ROOT/env and run ./install.sh again."
    echo "created env/ with $("$ENV_PYTHON" --version 2>&1)"
}

choose_installer() {
    local choice="${ACESTEP_INSTALLER:-}"
    if [ -z "$choice" ]; then
        if command -v uv >/dev/null; then choice=uv; else choice=pip; fi
    fi
    case "$choice" in
        uv)
            command -v uv >/dev/null || fail "ACESTEP_INSTALLER=uv but uv is not on PATH"
            INSTALL=(uv pip install --python "$ENV_PYTHON")
            UNINSTALL=(uv pip uninstall --python "$ENV_PYTHON") ;;
        pip)
            INSTALL=("$ENV_PYTHON" -m pip install)
            UNINSTALL=("$ENV_PYTHON" -m pip uninstall -y) ;;
        *) fail "ACESTEP_INSTALLER=$choice: use pip or uv" ;;
    esac
    echo "installer: ${INSTALL[*]}"
}

# Prints the PyTorch CUDA wheel index for the driver's "CUDA Version" (nvidia-smi).
cuda_index_url() {
    local smi version major minor
    smi="$(nvidia-smi 2>/dev/null)" \
        || fail "CUDA torch was asked for but nvidia-smi does not run. Install the NVIDIA driver, or use --cpu."
    version="$(printf '%s\n' "$smi" | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
    [ -n "$version" ] || fail "nvidia-smi printed no 'CUDA Version'. Set ACESTEP_TORCH_INDEX_URL (e.g. $PYTORCH_INDEX/cu128) or use --cpu."
    major="${version%%.*}"; minor="${version#*.}"
    echo "driver supports CUDA $version" >&2
    if   [ "$major" -ge 13 ]; then echo "$PYTORCH_INDEX/cu130"
    elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then echo "$PYTORCH_INDEX/cu128"
    elif [ "$major" -eq 12 ] && [ "$minor" -ge 6 ]; then echo "$PYTORCH_INDEX/cu126"
    else fail "the NVIDIA driver supports CUDA $version only; torch $TORCH_VERSION needs CUDA 12.6 or newer. Update the driver (https://www.nvidia.com/drivers), or use --cpu."
    fi
}

resolve_torch_mode() {
    if [ "$(uname -s)" = "Darwin" ]; then
        [ "$TORCH_MODE" != cuda ] || fail "there is no CUDA on macOS; run ./install.sh without --cuda"
        TORCH_MODE=macos
    elif [ "$TORCH_MODE" = auto ]; then
        if nvidia-smi >/dev/null 2>&1; then TORCH_MODE=cuda; else TORCH_MODE=cpu; fi
    fi
}

installed_torch() {
    "$ENV_PYTHON" -c 'import importlib.metadata as m
try: print(m.version("torch"))
except m.PackageNotFoundError: print("")'
}

install_torch() {
    resolve_torch_mode
    step "torch $TORCH_VERSION ($TORCH_MODE)"
    local spec="torch==$TORCH_VERSION" index="${ACESTEP_TORCH_INDEX_URL:-}" tag have
    if [ "$TORCH_MODE" = cuda ] && [ -z "$index" ]; then
        index="$(cuda_index_url)"
    fi
    # PyTorch's own indexes (.../whl/cu128, .../whl/cpu) name the build: pin it exactly.
    tag="${index%/}"; tag="${tag##*/}"
    if [[ "$tag" =~ ^(cpu|cu[0-9]+)$ ]]; then spec="torch==$TORCH_VERSION+$tag"; fi
    have="$(installed_torch)"
    # A CPU build satisfies "torch==2.13.0" too: remove it so the CUDA build goes in (and back).
    if { [ "$TORCH_MODE" = cuda ] && [[ "$have" == *+cpu ]]; } \
        || { [ "$TORCH_MODE" != cuda ] && [[ "$have" == *+cu* ]]; }; then
        echo "replacing torch $have (wrong build for $TORCH_MODE)"
        "${UNINSTALL[@]}" torch
    fi
    if [ -n "$index" ]; then
        echo "from $index"
        "${INSTALL[@]}" "$spec" --index-url "$index"
    else
        "${INSTALL[@]}" "$spec"
    fi
}

install_requirements() {
    step "requirements.txt"
    "${INSTALL[@]}" -r requirements.txt
    if [ "$TORCH_MODE" = cuda ] && [ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ]; then
        step "torchao $TORCHAO_VERSION (CUDA, Linux x86_64)"
        "${INSTALL[@]}" "torchao==$TORCHAO_VERSION"
    fi
    step "the trainer itself (editable: acestep-trainer command)"
    "${INSTALL[@]}" -e .
    if [ "$WITH_DEV" = 1 ]; then
        step "test tools (requirements-dev.txt)"
        "${INSTALL[@]}" -r requirements-dev.txt
    fi
}

verify() {
    step "checking the environment"
    "$ENV_PYTHON" -m acestep.environment \
        || fail "the environment check above failed; fix what it names and run ./install.sh again"
    printf '\nInstalled. Start the trainer with: %s/start.sh\n' "$ROOT"
}

parse_flags "$@"
create_env
choose_installer
install_torch
install_requirements
verify
