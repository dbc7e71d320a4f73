#!/usr/bin/env python3
"""Synthetic Alpine-like package tree for the tiersync benchmark.

  gen_tree.py generate DIR [--packages 29000] [--size-scale 0.01] [--seed 1]
  gen_tree.py mutate   DIR --kind hourly|busy|mass [--seed 1]

generate writes edge/{main,community,testing}/{9 arches}/*.apk, one
APKINDEX.tar.gz per partition and a root `last-updated`.  Everything (names,
sizes, contents, mtimes) follows from the seed.

mutate applies one step of upstream activity: it replaces some packages (the old
file is deleted, a new file with the next -rN name is written), rewrites the
touched partitions' APKINDEX.tar.gz and `last-updated`.  The step number is read
from `last-updated`, so repeated mutations are deterministic too.  Files are never
rewritten in place (indexes go through a temporary file and a rename): a tier0
that hard-linked the previous version keeps it intact.
"""
import argparse
import gzip
import io
import math
import os
import random
import re
import sys
import tarfile

RELEASE = "edge"
REPOS = {"main": 0.20, "community": 0.55, "testing": 0.25}
# Relative package counts per architecture (less popular ones lag behind).
ARCHES = {"x86_64": 1.00, "aarch64": 1.00, "x86": 0.95, "armv7": 0.93, "armhf": 0.90,
          "ppc64le": 0.88, "s390x": 0.85, "riscv64": 0.80, "loongarch64": 0.70}
MIN_SIZE, MAX_SIZE = 1 << 10, 16 << 20      # before --size-scale
FLOOR = 128                                  # smallest file actually written
BASE_TIME = 1_764_000_000                    # last-updated of the generated tree
STEP = 3600                                  # each mutate advances the clock by this
KINDS = {"hourly": 20, "busy": 0.005, "mass": 0.10}   # packages replaced: count or fraction
PREFIXES = ["", "", "", "py3-", "py3-", "perl-", "lua5.4-", "ruby-", "go-", "rust-",
            "lib", "font-", "php83-", "R-", "xfce4-", "kf6-", "gst-", "node-"]
SUFFIXES = ["", "", "", "", "-dev", "-doc", "-libs", "-openrc", "-lang", "-static"]
SYLLABLES = ["ba", "co", "di", "fe", "go", "hu", "ji", "ka", "lo", "mi", "nu", "pa",
             "qu", "ra", "se", "ti", "vo", "wa", "xe", "yo", "zu", "st", "tr", "pl"]
APK_RE = re.compile(r"^(?P<name>.+)-(?P<ver>[0-9][^-]*)-r(?P<rel>[0-9]+)\.apk$")
BLOCK = random.Random(0x7153).randbytes(64 << 10)   # shared content of every file
CHUNK = BLOCK * 16                                    # 1 MiB write unit


def log_uniform_size(rng, scale):
    raw = math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE)))
    return max(FLOOR, int(raw * scale))


def write_package(path, size, mtime, tag):
    """Header (unique per file) + the shared random block repeated up to size."""
    header = f"tiersync-bench {tag} {os.path.basename(path)}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(header + CHUNK)[:size]
        written = os.write(fd, view)
        while written < size:                       # bounded: each write adds >= 1 byte
            n = os.write(fd, memoryview(CHUNK)[:size - written])
            if n <= 0:
                raise OSError(f"short write on {path}")
            written += n
    finally:
        os.close(fd)
    os.utime(path, (mtime, mtime))


def write_atomic(path, data, mtime):
    tmp = path + ".tmp-gen"
    with open(tmp, "wb") as f:
        f.write(data)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def write_index(part_dir, arch, mtime):
    """APKINDEX.tar.gz listing the partition's packages (deterministic bytes)."""
    lines = []
    for entry in sorted(os.scandir(part_dir), key=lambda e: e.name):
        m = APK_RE.match(entry.name)
        if not m:
            continue
        st = entry.stat()
        lines.append(f"P:{m['name']}\nV:{m['ver']}-r{m['rel']}\nA:{arch}\nS:{st.st_size}\n"
                     f"I:{st.st_size * 3}\nT:{m['name']} package\nt:{int(st.st_mtime)}\n\n")
    text = "".join(lines).encode()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("DESCRIPTION", f"{os.path.basename(os.path.dirname(part_dir))}\n".encode()),
                           ("APKINDEX", text)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    gz_buf = io.BytesIO()
    with gzip.GzipFile(fileobj=gz_buf, mode="wb", mtime=mtime, compresslevel=6) as gz:
        gz.write(tar_buf.getvalue())
    write_atomic(os.path.join(part_dir, "APKINDEX.tar.gz"), gz_buf.getvalue(), mtime)


def package_pool(rng, count):
    """count distinct name-version pairs, Alpine style."""
    names = set()
    pool = []
    for _ in range(count * 20):                  # bounded; collisions are rare
        if len(pool) == count:
            break
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        name = rng.choice(PREFIXES) + word + rng.choice(SUFFIXES)
        if name in names:
            continue
        names.add(name)
        ver = ".".join(str(rng.randint(0, 30)) for _ in range(rng.randint(1, 3)))
        pool.append(f"{name}-{ver}-r{rng.randint(0, 5)}.apk")
    if len(pool) != count:
        raise SystemExit("could not make enough distinct package names")
    return pool


def partitions(root):
    for repo in REPOS:
        for arch in ARCHES:
            yield repo, arch, os.path.join(root, RELEASE, repo, arch)


def generate(args):
    root = args.dir
    if os.path.exists(root) and os.listdir(root):
        raise SystemExit(f"{root} exists and is not empty")
    rng = random.Random(args.seed)
    weight_sum = sum(ARCHES.values())
    total_files = total_bytes = 0
    for repo, share in REPOS.items():
        per_arch = {a: round(args.packages * share * w / weight_sum) for a, w in ARCHES.items()}
        pool = package_pool(rng, max(per_arch.values()))
        for arch, count in per_arch.items():
            part_dir = os.path.join(root, RELEASE, repo, arch)
            os.makedirs(part_dir)
            for fname in sorted(rng.sample(pool, count)):
                size = log_uniform_size(rng, args.size_scale)
                mtime = BASE_TIME - rng.randint(0, 365 * 86400)
                write_package(os.path.join(part_dir, fname), size, mtime, f"{args.seed}:{arch}")
                total_files += 1
                total_bytes += size
            write_index(part_dir, arch, BASE_TIME)
    write_atomic(os.path.join(root, "last-updated"), f"{BASE_TIME}\n".encode(), BASE_TIME)
    print(f"generated {total_files} packages, {total_bytes} bytes in {root}")


def mutate(args):
    mutate_tree(args.dir, args.kind, args.size_scale, args.seed)


def mutate_tree(root, kind, size_scale, seed):
    """Apply one step of kind; returns (packages replaced, bytes written)."""
    with open(os.path.join(root, "last-updated")) as f:
        now = int(f.read().strip()) + STEP
    rng = random.Random(f"{seed}:{kind}:{now}")
    packages = []                                 # (part_dir, arch, file name)
    for _repo, arch, part_dir in partitions(root):
        packages += [(part_dir, arch, n) for n in sorted(os.listdir(part_dir)) if APK_RE.match(n)]
    want = KINDS[kind]
    count = want if isinstance(want, int) else max(1, round(len(packages) * want))
    touched = {}
    replaced_bytes = 0
    for part_dir, arch, old in rng.sample(packages, min(count, len(packages))):
        m = APK_RE.match(old)
        new = f"{m['name']}-{m['ver']}-r{int(m['rel']) + 1}.apk"
        size = log_uniform_size(rng, size_scale)
        os.unlink(os.path.join(part_dir, old))
        write_package(os.path.join(part_dir, new), size, now, f"{seed}:{arch}:{now}")
        touched[part_dir] = arch
        replaced_bytes += size
    for part_dir, arch in sorted(touched.items()):
        write_index(part_dir, arch, now)
    write_atomic(os.path.join(root, "last-updated"), f"{now}\n".encode(), now)
    print(f"mutate {kind}: replaced {count} packages ({replaced_bytes} bytes) "
          f"in {len(touched)} partitions, last-updated {now}")
    return count, replaced_bytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a fresh tree")
    g.add_argument("dir")
    g.add_argument("--packages", type=int, default=29000)
    g.add_argument("--size-scale", type=float, default=0.01,
                   help="multiplies the 1 KiB..16 MiB sizes (0.01: about 0.5 GB per copy)")
    g.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("mutate", help="apply one step of upstream changes")
    m.add_argument("dir")
    m.add_argument("--kind", choices=sorted(KINDS), required=True)
    m.add_argument("--size-scale", type=float, default=0.01)
    m.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    (generate if args.cmd == "generate" else mutate)(args)


if __name__ == "__main__":
    sys.exit(main())
