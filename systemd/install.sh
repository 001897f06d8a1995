#!/usr/bin/env bash
# Installs stylewatch as a systemd service, from a source checkout:
#
#   sudo systemd/install.sh
#
# creates the system user and group `stylewatch`, a virtual environment in /opt/stylewatch/venv with
# stylewatch installed in it, the paintings in /opt/stylewatch/share/samples, the config
# /etc/stylewatch/config.yaml (only when there is none: yours is never overwritten), the folders
# /srv/stylewatch/{inbox,outbox}, /var/lib/stylewatch and /var/cache/stylewatch, and the unit
# /etc/systemd/system/stylewatch.service, which it enables but does not start. Running it again
# upgrades stylewatch, the unit and the paintings, and leaves the config and the folders alone.
#
# Environment:
#   PYTHON=python3.12   the interpreter for the venv (default python3; 3.11 or newer)
#   ROOT=/tmp/trial     a trial run for testing: every path is put under ROOT, any user may run it,
#                       and it creates no user, changes no owner and runs no systemctl.
set -euo pipefail

PYTHON=${PYTHON:-python3}
ROOT=${ROOT:-}
PREFIX=/opt/stylewatch # the unit's ExecStart= names this path
SERVICE_USER=stylewatch
TORCH_HOME_DIR=/var/cache/stylewatch/torch # the unit's Environment=TORCH_HOME=

src=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# The venv, the config and the folders must be readable by the service user whatever root's umask.
umask 022

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

# A folder with an owner and mode; an existing one keeps whatever owner and mode the admin gave it.
make_dir() { # path owner:group mode
    local dir=$ROOT$1
    [[ -d $dir ]] && return
    install -d -m "$3" "$dir"
    [[ -n $ROOT ]] || chown "$2" "$dir"
}

[[ $# -eq 0 ]] || die "no arguments expected (see the comment at the top of $0)"
[[ -f $src/pyproject.toml && -f $src/systemd/stylewatch.service ]] ||
    die "$src does not look like a stylewatch source tree"
if [[ -z $ROOT && $EUID -ne 0 ]]; then
    die "run it as root: sudo $0"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "stylewatch needs Python 3.11 or newer; name one with PYTHON=/usr/bin/python3.11"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    die "$PYTHON cannot create virtual environments; install python3-venv (Debian, Ubuntu) first"
# The venv links to this interpreter, so the service user must reach it, and ProtectHome=yes
# hides /root and /home from the service: a pyenv or conda Python of root's would not start.
python_home=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')
case $python_home in
/root | /root/* | /home/* | /run/user/*)
    die "$PYTHON lives in $python_home, which the service cannot see;" \
        "use a system Python: PYTHON=/usr/bin/python3"
    ;;
*) ;;
esac

# --- The service user: a system account without a login shell, its home the state directory.
if [[ -z $ROOT ]]; then
    if ! getent group "$SERVICE_USER" >/dev/null; then
        say "creating group $SERVICE_USER"
        groupadd --system "$SERVICE_USER"
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        say "creating user $SERVICE_USER"
        nologin=/usr/sbin/nologin
        [[ -x $nologin ]] || nologin=/sbin/nologin
        useradd --system --gid "$SERVICE_USER" --home-dir /var/lib/stylewatch --no-create-home \
            --shell "$nologin" --comment "stylewatch service" "$SERVICE_USER"
    fi
fi

# --- Folders. systemd creates /var/lib/stylewatch and /var/cache/stylewatch itself on start
# (StateDirectory=, CacheDirectory=), but the weights are fetched into the cache before that.
owner=$SERVICE_USER:$SERVICE_USER
make_dir /var/lib/stylewatch "$owner" 0755
make_dir /var/cache/stylewatch "$owner" 0755
make_dir "$TORCH_HOME_DIR" "$owner" 0755
make_dir /etc/stylewatch root:root 0755
make_dir /srv/stylewatch root:root 0755
# Photos arrive here; the service only reads it. Give write access to whoever drops them.
make_dir /srv/stylewatch/inbox root:root 0755
# The only folder the unit lets the service write (ReadWritePaths=).
make_dir /srv/stylewatch/outbox "$owner" 0755

# --- The venv. pip builds from a copy of the tree, so that no root-owned build/ or *.egg-info
# is left in the checkout.
venv=$ROOT$PREFIX/venv
if [[ ! -x $venv/bin/python ]]; then
    say "creating $venv"
    make_dir "$PREFIX" root:root 0755
    "$PYTHON" -m venv "$venv"
fi
build=$(mktemp -d)
trap 'rm -rf -- "$build"' EXIT
tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./run --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.pytest_cache \
    --exclude=.ruff_cache -cf - . | tar -C "$build" -xf -
say "installing stylewatch into $venv (the first time downloads PyTorch: several GB)"
"$venv/bin/pip" install --disable-pip-version-check --no-input --upgrade "$build"

# --- The paintings, the docs and a pristine copy of the config template.
share=$ROOT$PREFIX/share
install -d -m 0755 "$share/samples" "$share/doc"
install -m 0644 "$src"/samples/* "$share/samples/"
install -m 0644 "$src/README.md" "$share/doc/README.md"
install -m 0644 "$src/systemd/README.md" "$share/doc/service.md"
install -m 0644 "$src/systemd/config.yaml" "$share/config.yaml"

# --- The config: the template only where there is no config yet.
config=$ROOT/etc/stylewatch/config.yaml
if [[ -e $config ]]; then
    say "keeping $config (the current template is $share/config.yaml)"
else
    say "installing $config"
    install -m 0644 "$src/systemd/config.yaml" "$config"
fi

# --- The unit. Local changes belong in a drop-in (systemctl edit stylewatch), not in this file.
install -d -m 0755 "$ROOT/etc/systemd/system"
install -m 0644 "$src/systemd/stylewatch.service" "$ROOT/etc/systemd/system/stylewatch.service"
if [[ -n $ROOT ]]; then
    say "ROOT is set: no user created, no owners changed, no systemctl run"
elif [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    systemctl enable stylewatch.service
    if systemctl is-active --quiet stylewatch.service; then
        say "stylewatch is running the old version: sudo systemctl restart stylewatch"
    fi
else
    say "systemd is not running here; on the target machine run:"
    printf '      systemctl daemon-reload && systemctl enable stylewatch\n'
fi

cat <<EOF

stylewatch is installed. Next steps:

  1. Put the VGG19 weights (548 MB) where the service, which has no network, finds them:
       sudo -u $SERVICE_USER env TORCH_HOME=$TORCH_HOME_DIR \\
           $PREFIX/venv/bin/stylewatch weights fetch -c /etc/stylewatch/config.yaml
  2. Edit /etc/stylewatch/config.yaml if you like, then check it:
       sudo -u $SERVICE_USER env TORCH_HOME=$TORCH_HOME_DIR \\
           $PREFIX/venv/bin/stylewatch check -c /etc/stylewatch/config.yaml
  3. Start the service and follow its log:
       sudo systemctl start stylewatch
       journalctl -u stylewatch -f
  4. Drop a photo in:
       sudo cp $PREFIX/share/samples/chelsea.png /srv/stylewatch/inbox/
     and find its artwork in /srv/stylewatch/outbox/.
EOF
