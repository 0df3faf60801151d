#!/usr/bin/env python3
"""Build a tiny wheel of stand-in CUDA libraries for a CPU-only image.

PyPI's torch for Linux x86_64 is a CUDA build: libtorch_cuda.so (and
torchvision's _C.so) list libcudart, libcublas, libcudnn, libnccl, ... as
DT_NEEDED, so `import torch` fails without the ~3 GB of nvidia-* wheels.
On a machine without a GPU none of their code ever runs.  This script
generates, for each such library, a stub with the same SONAME, the same
symbol versions and every symbol that torch/torchvision import from it.
Each stub function returns 100 (cudaErrorNoDevice, and an error for every
other CUDA library), so `torch.cuda.is_available()` is False and everything
on the CPU works.  Stubs go where torch's RPATH looks ($ORIGIN/../../nvidia/..).

usage: cuda_stubs.py --wheels DIR --out DIR
  DIR given to --wheels holds the torch, torchvision and nvidia-* wheels
  (as `pip download` leaves them).  Writes dni_cuda_stubs-<torch version>-
  py3-none-linux_x86_64.whl into --out.  Needs gcc and readelf (binutils).
"""
from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ELF_MAGIC = b"\x7fELF"
SO_RE = re.compile(r"\.so(\.[0-9]+)*$")
# functions whose result is a C string: return a message instead of 100
STRING_FUNC_RE = re.compile(r"(ErrorString|ErrorName|GetString|GetErrorMessage|GetLastErrorString)$")


def is_so(name: str) -> bool:
    return bool(SO_RE.search(os.path.basename(name)))


def extract_sos(wheel: str, dest: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.is_dir() and is_so(info.filename):
                z.extract(info, dest)


def elf_files(root: str):
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not is_so(f):
                continue
            with open(p, "rb") as fh:
                if fh.read(4) == ELF_MAGIC:
                    yield p


def readelf(args: list[str], path: str) -> str:
    return subprocess.run(["readelf", "-W", *args, path], check=True,
                          capture_output=True, text=True).stdout


def needed_and_soname(path: str) -> tuple[list[str], str | None]:
    out = readelf(["-d"], path)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    so = re.search(r"\(SONAME\)\s+Library soname: \[(.+?)\]", out)
    return needed, so.group(1) if so else None


DYNSYM_RE = re.compile(
    r"^\s*\d+:\s+[0-9a-f]+\s+(\d+|0x[0-9a-f]+)\s+(\w+)\s+(\w+)\s+\w+\s+(\w+)\s+(\S+)")


def dynsyms(path: str):
    """yield (name, version or None, default?, type, size, defined?)"""
    for line in readelf(["--dyn-syms"], path).splitlines():
        m = DYNSYM_RE.match(line)
        if not m:
            continue
        size, typ, bind, ndx, name = m.groups()
        if bind not in ("GLOBAL", "WEAK"):
            continue
        version, default = None, True
        if "@@" in name:
            name, version = name.split("@@", 1)
        elif "@" in name:
            name, version = name.split("@", 1)
            default = False
        version = version.split(" ")[0] if version else None
        yield name, version, default, typ, int(size, 0), ndx != "UND"


def system_libs() -> list[str]:
    """Paths of the C/C++ runtime libraries (libc, libm, libstdc++, libgcc_s, ...)."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    want = {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libpthread.so.0",
            "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2"}
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if m and m.group(1) in want and "x86-64" in m.group(2):
            found.setdefault(m.group(1), m.group(3))
    missing = want - set(found)
    if {"libc.so.6", "libstdc++.so.6"} & missing:
        sys.exit("cannot find %s with ldconfig -p" % sorted(missing))
    return sorted(found.values())


def build(wheels_dir: str, out_dir: str) -> str:
    torch_whl = sorted(glob.glob(os.path.join(wheels_dir, "torch-*.whl")))
    if not torch_whl:
        sys.exit("no torch wheel in %s" % wheels_dir)
    torch_version = os.path.basename(torch_whl[-1]).split("-")[1]
    consumers_whl = torch_whl + glob.glob(os.path.join(wheels_dir, "torchvision-*.whl"))
    real_whl = glob.glob(os.path.join(wheels_dir, "nvidia_*.whl"))
    if not real_whl:
        sys.exit("no nvidia_* wheels in %s (they are needed to read symbol tables)" % wheels_dir)

    tmp = tempfile.mkdtemp(prefix="dni-stubs-")
    try:
        cons_root, real_root, stub_root = (os.path.join(tmp, d) for d in ("cons", "real", "stub"))
        for w in consumers_whl:
            extract_sos(w, cons_root)
        for w in real_whl:
            extract_sos(w, real_root)

        # real libraries by file name and by SONAME
        real: dict[str, str] = {}
        for p in elf_files(real_root):
            real.setdefault(os.path.basename(p), p)
            _, soname = needed_and_soname(p)
            if soname:
                real.setdefault(soname, p)
        own = {os.path.basename(p) for p in elf_files(cons_root)}

        stub_libs: set[str] = set()
        consumers = list(elf_files(cons_root))
        for p in consumers:
            needed, _ = needed_and_soname(p)
            stub_libs.update(n for n in needed if n in real and n not in own)
        all_refs: set[tuple[str, str | None]] = set()
        for p in consumers:
            for name, ver, _, _, _, defined in dynsyms(p):
                if not defined:
                    all_refs.add((name, ver))
        # Never stub what torch itself or the C/C++ runtime defines: some CUDA
        # libraries (cuFile) export a static libstdc++, and a stub of e.g.
        # std::string::find would interpose on the real one.
        provided: set[str] = set()
        for p in consumers + system_libs():
            for name, _, _, _, _, defined in dynsyms(p):
                if defined:
                    provided.add(name)
        # a reference tied to a version (e.g. cudaMalloc@libcudart.so.13) names
        # its library; an unversioned one only counts if nothing else has it
        versioned_refs = {(n, v) for n, v in all_refs if v}
        ref_names = {n for n, v in all_refs if not v} - provided

        built = []
        for lib in sorted(stub_libs):
            path = real[lib]
            defs = {}
            for name, ver, default, typ, size, defined in dynsyms(path):
                if defined and (name in ref_names or (name, ver) in versioned_refs):
                    defs.setdefault(name, []).append((ver, default, typ, size))
            versions: dict[str | None, list[str]] = {}
            c = ['/* generated by docker/cuda_stubs.py: stand-in for %s (no GPU) */' % lib,
                 'static const char dni_msg[] = "CUDA unavailable: %s is a stub (CPU-only image)";' % lib,
                 '#define EXPORT __attribute__((visibility("default")))']
            symvers = []
            for name, entries in sorted(defs.items()):
                typ, size = entries[0][2], entries[0][3]
                impl = name
                nondefault = [e for e in entries if not e[1]]
                if nondefault:               # symbol also has old (non-default) versions
                    impl = "dni_impl_" + name
                if typ == "OBJECT" or typ == "TLS":
                    c.append("EXPORT char %s[%d] __attribute__((aligned(16)));" % (impl, max(size, 1)))
                elif STRING_FUNC_RE.search(name):
                    c.append("EXPORT const char *%s(void) { return dni_msg; }" % impl)
                elif name == "cudaGetDeviceCount":
                    c.append("EXPORT int %s(int *n) { if (n) *n = 0; return 100; }" % impl)
                else:
                    c.append("EXPORT long %s(void) { return 100; }" % impl)
                for ver, default, _, _ in entries:
                    if impl != name:
                        symvers.append('__asm__(".symver %s,%s%s%s");' % (
                            impl, name, "@@" if default else "@", ver or ""))
                    versions.setdefault(ver, [])
                    if impl == name:
                        versions[ver].append(name)
            c.extend(symvers)
            os.makedirs(os.path.join(tmp, "src"), exist_ok=True)
            src = os.path.join(tmp, "src", lib + ".c")
            vmap = os.path.join(tmp, "src", lib + ".map")
            with open(src, "w") as fh:
                fh.write("\n".join(c) + "\n")
            with open(vmap, "w") as fh:
                for ver, names in versions.items():
                    if ver is None:
                        continue
                    fh.write("%s {\n  global:\n%s};\n" % (ver, "".join("    %s;\n" % n for n in names)))
            rel = os.path.relpath(path, real_root)
            dest = os.path.join(stub_root, os.path.dirname(rel), lib)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            cmd = ["gcc", "-shared", "-fPIC", "-O1", "-nostdlib", "-o", dest, src,
                   "-Wl,-soname," + lib, "-Wl,--no-undefined"]
            if any(v is not None for v in versions):
                cmd.append("-Wl,--version-script=" + vmap)
            subprocess.run(cmd, check=True)
            built.append((os.path.relpath(dest, stub_root), len(defs)))
            print("stub %-28s %5d symbols  (real: %d MB)" % (
                lib, len(defs), os.path.getsize(path) >> 20), file=sys.stderr)

        return write_wheel(stub_root, out_dir, torch_version, [b for b, _ in built])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_wheel(root: str, out_dir: str, version: str, files: list[str]) -> str:
    name = "dni_cuda_stubs"
    version = version.split("+")[0]
    dist = "%s-%s.dist-info" % (name, version)
    whl = os.path.join(out_dir, "%s-%s-py3-none-linux_x86_64.whl" % (name, version))
    meta = {
        dist + "/METADATA": "Metadata-Version: 2.1\nName: dni-cuda-stubs\nVersion: %s\n"
                            "Summary: Stand-in CUDA libraries so a CUDA build of torch imports "
                            "and runs on the CPU without the nvidia-* wheels (generated by "
                            "dni docker/cuda_stubs.py)\n" % version,
        dist + "/WHEEL": "Wheel-Version: 1.0\nGenerator: dni-cuda-stubs\nRoot-Is-Purelib: false\n"
                         "Tag: py3-none-linux_x86_64\n",
    }
    record = []
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in sorted(files):
            data = open(os.path.join(root, rel), "rb").read()
            info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o755 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
            record.append(rel_record(rel, data))
        for rel, text in meta.items():
            data = text.encode()
            z.writestr(zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0)), data)
            record.append(rel_record(rel, data))
        record.append(dist + "/RECORD,,")
        z.writestr(zipfile.ZipInfo(dist + "/RECORD", date_time=(2020, 1, 1, 0, 0, 0)),
                   "\n".join(record) + "\n")
    return whl


def rel_record(rel: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (rel, digest, len(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    print(build(a.wheels, a.out))


if __name__ == "__main__":
    main()
