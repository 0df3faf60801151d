#!/usr/bin/env bash
# Build the offline base image (default tag dni-base:bookworm) without any
# container registry: debootstrap a minimal Debian bookworm with Python 3.11
# from the Debian mirror that this host's apt already uses, then `docker import`.
#
#   docker/build-base.sh            # skip if the image already exists
#   DNI_FORCE=1 docker/build-base.sh  # rebuild
#
# Environment:
#   DNI_BASE_IMAGE   tag to create                  (default dni-base:bookworm)
#   DNI_MIRROR       Debian mirror URL              (default: read from /etc/apt)
#   DNI_SUITE        Debian suite                   (default bookworm)
#   DNI_FORCE=1      rebuild even if the tag exists
#   DNI_WORKDIR      scratch directory              (default: mktemp under /var/tmp)
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail

TAG="${DNI_BASE_IMAGE:-dni-base:bookworm}"
SUITE="${DNI_SUITE:-bookworm}"
INCLUDE="python3,python3-venv,python3-pip-whl,python3-setuptools-whl,ca-certificates,libgomp1"

log() { printf '[build-base] %s\n' "$*" >&2; }

if [[ "${DNI_FORCE:-0}" != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already exists (DNI_FORCE=1 to rebuild)"
    exit 0
fi

command -v debootstrap >/dev/null || { log "debootstrap not installed"; exit 1; }
[[ $(id -u) == 0 ]] || { log "must run as root (debootstrap)"; exit 1; }

# --- find the mirror apt uses on this host ---------------------------------
# Supports deb822 files (/etc/apt/sources.list.d/*.sources) and one-line
# files (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list).  Picks the
# first "deb" entry whose suite is exactly $SUITE.
find_mirror() {
    python3 - "$SUITE" <<'PY'
import glob, sys
suite = sys.argv[1]
found = []
def add(types, uris, suites):
    if "deb" in types and suite in suites:
        found.extend(u for u in uris if u.startswith(("http://", "https://", "file:/")))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    stanzas = open(path, encoding="utf-8", errors="replace").read().split("\n\n")
    for st in stanzas:
        fields = {}
        key = None
        for line in st.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:          # continuation line
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, val = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = val.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        add(fields.get("types", "").split(), fields.get("uris", "").split(),
            fields.get("suites", "").split())
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        line = line.split("#", 1)[0].split()
        if len(line) < 3:
            continue
        if line[1].startswith("["):               # deb [opts] uri suite ...
            while line and not line[1].endswith("]"):
                line.pop(1)
            line.pop(1)
        if len(line) >= 3:
            add([line[0]], [line[1]], [line[2]])
if not found:
    sys.exit("no 'deb' source for suite %r in /etc/apt" % suite)
print(found[0])
PY
}

MIRROR="${DNI_MIRROR:-$(find_mirror)}"
log "mirror: $MIRROR  suite: $SUITE  tag: $TAG"

WORK="${DNI_WORKDIR:-$(mktemp -d /var/tmp/dni-base.XXXXXX)}"
ROOTFS="$WORK/rootfs"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
rm -rf "$ROOTFS"

start=$(date +%s)
debootstrap --variant=minbase --include="$INCLUDE" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 40 "$WORK/debootstrap.log" >&2
    # debootstrap keeps its detailed log inside the target
    tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
    exit 1
}
log "debootstrap took $(( $(date +%s) - start ))s"

# apt sources inside the image: the same mirror, so `apt-get install` works
# in derived images on a machine that reaches it.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"

# Trim: package caches, docs, man pages, locales (keeps the image small).
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
: >"$ROOTFS/etc/machine-id" 2>/dev/null || true

PYVER=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
log "python in image: $PYVER"
case "$PYVER" in 3.11.*) ;; *) log "WARNING: expected Python 3.11 (wheels are cp311), got $PYVER";; esac

tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $SUITE minbase + python3 (dni)" \
    - "$TAG" >/dev/null
log "imported $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')) in $(( $(date +%s) - start ))s total"
