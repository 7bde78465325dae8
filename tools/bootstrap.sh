#!/bin/sh
# Set up everything autoreg's demo and tests need on a Debian 12 machine:
# Debian packages (without starting any service they ship) and a virtualenv.
#
#   tools/bootstrap.sh [pypi|debian]
#
#   pypi    .venv: current PyPI releases of the dependencies (default)
#   debian  .venv-debian: Debian 12's own python3-zeroconf, python3-paramiko,
#           python3-click, python3-jinja2 (what the .deb depends on)
#
# Idempotent and quick when nothing changed. Needs root for apt-get.
set -eu

flavour=${1:-pypi}
root=$(cd "$(dirname "$0")/.." && pwd)
python=/usr/bin/python3

# The demo and the suite: real sshd, namespaces, firewall rules, lint.
APT_PACKAGES="python3 python3-venv openssh-server openssh-client iproute2 procps shellcheck nftables"
# Avahi tests: avahi-daemon and a private dbus-daemon per namespace; dbus-python builds.
APT_PACKAGES="$APT_PACKAGES avahi-daemon avahi-utils dbus libdbus-1-dev libglib2.0-dev pkg-config"
# Install media tests: independent ISO readers, cloud-init's schema validator (run from
# its unpacked package, never installed) and the Debian libraries it needs.
APT_PACKAGES="$APT_PACKAGES xorriso genisoimage python3-yaml python3-jsonschema python3-jinja2"
APT_PACKAGES="$APT_PACKAGES python3-configobj python3-jsonpatch python3-netifaces"
APT_PACKAGES="$APT_PACKAGES python3-oauthlib python3-requests python3-serial"
# Package tests: build, lint, bootstrap a clean Debian 12 root.
APT_PACKAGES="$APT_PACKAGES debhelper dh-python pybuild-plugin-pyproject python3-all"
APT_PACKAGES="$APT_PACKAGES python3-setuptools python3-wheel python3-build python3-installer"
APT_PACKAGES="$APT_PACKAGES lintian debootstrap fakeroot git systemd"
# etcd store tests: a real 3-member etcd 3.4 cluster in namespaces (the server and
# etcdctl); never started in the root namespace.
APT_PACKAGES="$APT_PACKAGES etcd-server etcd-client"
APT_DEBIAN_DEPS="python3-zeroconf python3-paramiko python3-click python3-jinja2 python3-cryptography python3-pycdlib python3-yaml python3-dbus python3-etcd3gw python3-aiohttp"

missing_packages() {
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || printf '%s ' "$pkg"
    done
}

apt_install() {
    todo=$(missing_packages "$@")
    [ -z "$todo" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: need root to install: $todo" >&2
        exit 1
    fi
    echo "bootstrap: installing Debian packages: $todo"
    # Never let a package start its service (sshd, …) in the root namespace:
    # the tests start their own daemons inside network namespaces.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$guard"
        chmod 755 "$guard"
    fi
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $todo; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $todo
    fi
    [ -n "$guard" ] && rm -f "$guard"
    # An avahi-daemon we installed must never run in the root namespace (mDNS would
    # leave through the real interface): the tests start their own, in namespaces.
    case " $todo " in
        *" avahi-daemon "*)
            for unit in avahi-daemon.service avahi-daemon.socket; do
                ln -sf /dev/null "/etc/systemd/system/$unit"
            done
            echo "bootstrap: masked avahi-daemon in the root namespace (tests run their own)"
            ;;
    esac
    # Likewise etcd-server enables etcd.service: masked, the tests run their own members.
    case " $todo " in
        *" etcd-server "*)
            ln -sf /dev/null /etc/systemd/system/etcd.service
            echo "bootstrap: masked etcd in the root namespace (tests run their own)"
            ;;
    esac
    return 0
}

# shellcheck disable=SC2086
apt_install $APT_PACKAGES

case "$flavour" in
    pypi)
        venv="$root/.venv"
        site=""
        ;;
    debian)
        # shellcheck disable=SC2086
        apt_install $APT_DEBIAN_DEPS
        venv="$root/.venv-debian"
        site="--system-site-packages"
        ;;
    *)
        echo "usage: $0 [pypi|debian]" >&2
        exit 2
        ;;
esac

stamp="$venv/.autoreg-stamp"
want=$(cat "$root/setup.cfg" "$root/pyproject.toml" "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/autoreg" ]; then
    exit 0
fi
echo "bootstrap: preparing $venv"
# shellcheck disable=SC2086
"$python" -m venv $site "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
if [ "$flavour" = debian ]; then
    # The distro's libraries, not PyPI's: install autoreg itself without deps.
    "$venv/bin/python" -m pip install -q --no-deps -e "$root"
    "$venv/bin/python" -m pip install -q "pytest>=7.2" "pytest-timeout>=2.1" "hypothesis>=6"
    # Debian's python3-dbus comes through the system site packages.
    "$venv/bin/python" - <<'PY'
import aiohttp, click, jinja2, paramiko, zeroconf
print("bootstrap: Debian versions:", "zeroconf", zeroconf.__version__, "paramiko",
      paramiko.__version__, "click", click.__version__, "jinja2", jinja2.__version__,
      "aiohttp", aiohttp.__version__)
PY
else
    "$venv/bin/python" -m pip install -q -e "${root}[test,dev,avahi,etcd]"
fi
echo "$want" > "$stamp"
