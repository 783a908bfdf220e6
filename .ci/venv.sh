# Sourced by .ci scripts: `venv_with PACKAGE VERSION` makes sure target/ci-venv (a Python venv under target/, so
# nothing touches the system's Python) has PACKAGE==VERSION installed, and sets $venv to its path.
venv=target/ci-venv

venv_with() {
    local package=$1 version=$2 installed
    if [ ! -x "$venv/bin/python" ]; then
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            # Debian ships venv (ensurepip) separately from python3.
            rm -rf "$venv"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        fi
    fi
    installed=$("$venv/bin/python" -m pip show "$package" 2>/dev/null | sed -n 's/^Version: //p' || true)
    if [ "$installed" != "$version" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$package==$version"
    fi
}
