# Sourced by scripts/serve and scripts/test: use perhap's own virtual environment, creating it on
# first use. Debian's Python refuses system-wide `pip install` (PEP 668, "externally-managed-
# environment"), so perhap always installs into an environment of its own: $PERHAP_VENV, by
# default .venv in this checkout. Sets PY (its python) and puts its bin/ first on PATH.
VENV="${PERHAP_VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    BASE="${PYTHON:-python3}"
    if ! "$BASE" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian ships the venv module's pip in a package of its own.
        rm -rf "$VENV"
        echo "installing Debian's python3-venv to create $VENV"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends python3-venv
        "$BASE" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
