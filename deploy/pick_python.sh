#!/usr/bin/env bash
# Prints the Python interpreter `make install` builds .venv from: the first of the candidates given (by default the
# operating system's own Python, then python3 on PATH) that is 3.11 or newer and can create a virtualenv with pip.
# Override it with `make PYTHON=/path/to/python3.x install` (on a fresh clone, or after `rm -rf .venv`).
#
# Why the system's Python first: distributions build it with profile-guided and link-time optimisation, and
# version managers such as pyenv build without both unless asked (PYTHON_CONFIGURE_OPTS="--enable-optimizations
# --with-lto"). Every Baton service spends most of its CPU in Python code; on the 2-core bench machine Debian's
# 3.11 ran pure Python 25 to 35 % faster than pyenv's default build of 3.11 (docs/benchmarks.md).
set -euo pipefail

if [ "$#" -eq 0 ]; then
    set -- /usr/bin/python3 /usr/local/bin/python3 python3
fi
for candidate in "$@"; do
    if "$candidate" -c 'import ensurepip, sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        command -v "$candidate"
        exit 0
    fi
done
echo "pick_python.sh: no Python 3.11+ with venv and ensurepip among: $*" >&2
exit 1
