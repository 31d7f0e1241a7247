#!/usr/bin/env bash
# Build the pldns container image without Docker: buildah (daemonless, as root), on
#   - the official python:3.11-slim when it is in local storage or can be pulled, or else
#   - a Python base built here from Debian 12 packages (mmdebstrap: python3, python3-venv,
#     ca-certificates, netbase) through the machine's apt sources, imported with buildah.
# The project's Dockerfile is built unchanged, with `--build-arg PYTHON_IMAGE=<base>` only.
# tests/test_image.py then runs the image (podman, read-only root, the image's non-root UID).
#
#   scripts/build-image.sh [--base auto|debian|official|IMAGE] [--tag NAME] [--rebuild-base]
#                          [--install-tools]
#
# --base auto (default): python:3.11-slim if present or pullable, else the Debian base.
# The Debian base is cached as localhost/pldns-python-base:3.11-bookworm and rebuilt when its
# recipe (this file's BASE_* lines) changes, when it is older than PLDNS_BASE_MAX_AGE_DAYS
# (default 7: security updates) or with --rebuild-base. The project's build itself is not
# layer-cached: with vfs every cached step is a full copy of the tree, which made a build 2-4
# times slower than building from scratch (about 30 s here). Needs network: the Debian mirror and PyPI (a registry
# step: CI runs it from .ci/run, tests never fetch). Storage: vfs in /var/lib/containers
# (override with STORAGE_DRIVER), the same storage `podman --storage-driver vfs` reads.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

base=auto
tag=""
rebuild_base=0
install_tools=0
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --rebuild-base) rebuild_base=1; shift ;;
    --install-tools) install_tools=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' pldns/__init__.py)
[ -n "$version" ] || { echo "build-image.sh: no __version__ in pldns/__init__.py" >&2; exit 1; }
tag=${tag:-localhost/pldns:$version}
driver=${STORAGE_DRIVER:-vfs}
max_age_days=${PLDNS_BASE_MAX_AGE_DAYS:-7}
official=docker.io/library/python:3.11-slim

BASE_NAME=localhost/pldns-python-base:3.11-bookworm
BASE_SUITE=bookworm
BASE_PACKAGES=usr-is-merged,python3,python3-venv,ca-certificates,netbase
BASE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

log() { printf 'build-image: %s\n' "$*" >&2; }
bah() { buildah --storage-driver "$driver" "$@"; }

# -- tools (Debian packages; apt is a registry step) ------------------------------------------
tools=(buildah podman runc uidmap mmdebstrap)  # podman and runc: for tests/test_image.py
missing=()
for p in "${tools[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$install_tools" = 1 ] && [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "build-image.sh: missing ${missing[*]}: apt-get install --no-install-recommends" \
      "${missing[*]} (or rerun as root with --install-tools)" >&2
    exit 1
  fi
fi
bah --version >/dev/null

# -- the Debian base --------------------------------------------------------------------------
recipe=$(printf '%s\n' "$BASE_SUITE" "$BASE_PACKAGES" "${BASE_ENV[@]}" \
  "$(sed -n '/^build_debian_base() {$/,/^}$/p' "$0")" | sha256sum | cut -c1-16)

debian_base_is_current() {
  local got created age
  got=$(bah inspect --type image --format '{{index .ImageAnnotations "io.pldns.base.recipe"}}' \
    "$BASE_NAME" 2>/dev/null) || return 1
  [ "$got" = "$recipe" ] || { log "base recipe changed"; return 1; }
  created=$(bah inspect --type image --format '{{index .ImageAnnotations "io.pldns.base.created"}}' \
    "$BASE_NAME")
  age=$(( ($(date +%s) - ${created:-0}) / 86400 ))
  [ "$age" -lt "$max_age_days" ] || { log "base is $age days old"; return 1; }
}

build_debian_base() {
  local work ctr sources
  work=$(mktemp -d /var/tmp/pldns-base.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  # The machine's Debian sources (its mirror, with -updates and -security), nothing else.
  sources=""
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ] && grep -qE '^(URIs:|deb ).*debian' "$f"; then sources=$f; break; fi
  done
  log "mmdebstrap $BASE_SUITE + ${BASE_PACKAGES} (${sources:-default mirror})"
  # minbase + the packages, no recommends, no docs/man/locales (copyrights kept): about the
  # size of python:3.11-slim. Merged /usr by usr-is-merged, not usrmerge (which pulls perl).
  timeout 600 mmdebstrap --mode=root --variant=minbase --format=tar --skip=output/mknod \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$BASE_PACKAGES" \
    --aptopt='Acquire::Languages "none"' --aptopt='APT::Install-Recommends "false"' \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt "$1"/var/log/dpkg.log "$1"/var/cache/ldconfig/aux-cache "$1"/etc/machine-id' \
    --quiet "$BASE_SUITE" "$work/rootfs.tar" ${sources:+"$sources"}
  ctr=$(bah from scratch)
  bah add "$ctr" "$work/rootfs.tar" /
  local env_args=()
  for e in "${BASE_ENV[@]}"; do env_args+=(--env "$e"); done
  bah config "${env_args[@]}" --cmd '["python3"]' \
    --annotation "io.pldns.base.recipe=$recipe" --annotation "io.pldns.base.created=$(date +%s)" \
    --label "org.opencontainers.image.description=Debian $BASE_SUITE with python3 (pldns build base)" \
    "$ctr"
  bah commit --quiet --rm "$ctr" "$BASE_NAME" >/dev/null
}

case "$base" in
  debian) use_debian=1 ;;
  official) use_debian=0 ;;
  auto)
    if bah inspect --type image "$official" >/dev/null 2>&1; then
      use_debian=0
    elif timeout 120 buildah --storage-driver "$driver" pull --quiet --retry 1 "$official" >/dev/null 2>&1; then
      use_debian=0
    else
      log "$official cannot be pulled: using a Debian base"
      use_debian=1
    fi ;;
  *) use_debian=0; official=$base ;;
esac
if [ "$use_debian" = 1 ]; then
  if [ "$rebuild_base" = 0 ] && debian_base_is_current; then
    log "reusing $BASE_NAME"
  else
    base_start=$(date +%s)
    build_debian_base
    log "built $BASE_NAME in $(( $(date +%s) - base_start )) s"
  fi
  python_image=$BASE_NAME
else
  bah inspect --type image "$official" >/dev/null 2>&1 || timeout 300 bah pull --quiet "$official" >/dev/null
  python_image=$official
fi

# -- the project's Dockerfile, unchanged --------------------------------------------------------
# A machine that reaches PyPI through a TLS-inspecting proxy (PIP_CERT and friends point at its
# CA bundle) hands that trust to pip in the RUN steps only: a pip.conf in a host directory
# bind-mounted over /root (which both bases have), so no layer keeps it.
build_root=$(mktemp -d /var/tmp/pldns-bud-root.XXXXXX)
trap 'rm -rf "$build_root"' EXIT
volumes=()
ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
if [ -n "$ca" ] && [ -s "$ca" ]; then
  mkdir -p "$build_root/.config/pip"
  cp "$ca" "$build_root/.config/pip/ca.pem"
  printf '[global]\ncert = /root/.config/pip/ca.pem\n' >"$build_root/.config/pip/pip.conf"
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    case "${!v:-}" in
      http://*|https://*) printf '%s = %s\n' "$(echo "${v#PIP_}" | tr 'A-Z_' 'a-z-')" "${!v}" \
        >>"$build_root/.config/pip/pip.conf" ;;
    esac
  done
  volumes=(-v "$build_root:/root")
  log "pip in the build uses the CA bundle $ca"
fi
bud_start=$(date +%s)
log "buildah bud $tag (PYTHON_IMAGE=$python_image)"
buildlog=$(mktemp /var/tmp/pldns-bud.XXXXXX.log)
if ! timeout 900 buildah --storage-driver "$driver" bud --isolation chroot --layers=false \
  --force-rm "${volumes[@]}" --build-arg "PYTHON_IMAGE=$python_image" -t "$tag" -f Dockerfile \
  . >"$buildlog" 2>&1; then
  tail -n 60 "$buildlog" >&2
  log "build failed (whole log: $buildlog)"
  exit 1
fi
rm -f "$buildlog"
end=$(date +%s)
# The previous build, now untagged, goes; tagged images stay.
bah rmi --prune >/dev/null 2>&1 || true
size=$(bah images --format '{{.Size}}' "$tag" | head -n 1)
log "$tag: $size, base $python_image; bud $(( end - bud_start )) s, total $(( end - start )) s"
