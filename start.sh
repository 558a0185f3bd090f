#!/usr/bin/env bash
# Start the ACE-Step LoRA Trainer with the project's env/ (made by ./install.sh).
# Every argument goes to launch.py: ./start.sh --help lists them. The current folder is kept,
# so relative paths you pass (--auth-file, --checkpoints-dir) are taken from where you are.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -x "$here/env/bin/python" ]; then
    echo "No environment at $here/env: run $here/install.sh first." >&2
    exit 1
fi
exec "$here/env/bin/python" "$here/launch.py" "$@"
