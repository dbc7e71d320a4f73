#!/usr/bin/env python3
"""The guard's limits against the benchmark's mutations (see README.md beside this file).

Generates the benchmark tree (gen_tree.py), publishes it with a tier0 (`tiersyncd --once`) and
syncs a mirror from it over file://, then applies gen_tree.py's mutations one round at a time:
after each, tier0 publishes and the mirror follows. Every round reports whether either node held
a partition (exit 3 and the `hold:` lines of its output) and the largest figure of each of the
guard's rules over all partitions (docs/guard.md), computed from tier0's published tree before
the round and the source after the mutation:

  deleted  files deleted, emptied, much shorter or made symlinks / the applied partition's files
  window   (baseline files - candidate files) / baseline files
  bytes    (baseline bytes - candidate bytes) / baseline bytes
  index    index files lost (deleted, emptied, much shorter, made symlinks, or fewer than the
           baseline's)
  root     the root partition's files damaged plus symlinks retargeted

The baseline is the high-water mark of what tier0 published, as tiersyncd's own history has it:
every round runs seconds after the one before, so all of them fall into one window (a stricter
test than a real day, where 24 hourly rounds take 24 hours).
"""
import argparse
import contextlib
import fcntl
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_tree  # noqa: E402
from run_bench import BenchError, Runner  # noqa: E402

MARKER = ".tiersync-guardbench-workdir"
DEPTH = 3                              # layout {release}/{repo}/{arch}
INDEX_FILES = {"APKINDEX.tar.gz"}
SHRINK_FACTOR = 0.5                    # "much shorter" (docs/guard.md)
DEFAULTS = {"max_delete_ratio": 0.2, "max_bytes_loss_ratio": 0.2, "min_files": 10,
            "small_max_deletes": 2, "root_max_changes": 0}
RULES = ("deleted", "window", "bytes", "index", "root")


def listing(root):
    """{path: (kind, size, target)} of a tree, .tiersync/ left out; kind 'f' or 'l'."""
    out = {}
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root and ".tiersync" in dirnames:
            dirnames.remove(".tiersync")
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("l", 0, os.readlink(path))
            else:
                out[rel] = ("f", st.st_size, None)
    return out


def partition_of(path):
    parts = path.split("/")
    return "/".join(parts[:DEPTH]) if len(parts) > DEPTH else "."


def by_partition(tree):
    parts = {}
    for path, entry in tree.items():
        parts.setdefault(partition_of(path), {})[path] = entry
    return parts


def size_of(part):
    """(files, bytes, index files) of one partition, as measure() counts them."""
    files = len(part)
    size = sum(e[1] for e in part.values() if e[0] == "f")
    index = sum(1 for p in part if os.path.basename(p) in INDEX_FILES)
    return files, size, index


def damage_of(before, after):
    """(damaged, retargeted, index lost) between two listings of one partition (compare())."""
    damaged = retargeted = index_lost = 0
    for path, (kind, size, target) in before.items():
        new = after.get(path)
        lost = False
        if new is None:
            lost = True
        elif kind == "l":
            retargeted += new[0] != "l" or new[2] != target
        elif new[0] == "l":
            lost = True
        elif size > 0 and new[1] == 0:
            lost = True
        elif new[1] < SHRINK_FACTOR * size:
            lost = True
        damaged += lost
        index_lost += lost and os.path.basename(path) in INDEX_FILES
    return damaged, retargeted, index_lost


def share(count, of):
    return count / of if of else 0.0


def figures(applied, candidate, high_water):
    """Per partition: each rule's figure for the change from applied to candidate."""
    out = {}
    for name in sorted(set(applied) | set(candidate)):
        before, after = applied.get(name, {}), candidate.get(name, {})
        if not before and name not in high_water:
            continue                                   # new: never held
        b_files, b_bytes, b_index = size_of(before)
        a_files, a_bytes, a_index = size_of(after)
        h_files, h_bytes, h_index = high_water.get(name, (0, 0, 0))
        base = (max(b_files, h_files), max(b_bytes, h_bytes), max(b_index, h_index))
        damaged, retargeted, index_lost = damage_of(before, after)
        f = {"files": b_files, "damaged": damaged,
             "index": max(index_lost, base[2] - a_index)}
        if name == ".":
            f["root"] = damaged + retargeted
        else:
            f["deleted"] = share(damaged, b_files)
            f["window"] = share(max(0, base[0] - a_files), base[0])
            f["bytes"] = share(max(0, base[1] - a_bytes), base[1])
            f["small"] = base[0] < DEFAULTS["min_files"]
        out[name] = f
    return out


def worst(figs):
    """The largest figure of each rule over all partitions, with the partition."""
    best = {}
    for name, f in figs.items():
        for rule in RULES:
            if rule in f and (rule not in best or f[rule] > best[rule][0]):
                best[rule] = (f[rule], name)
    return best


def parse_holds(log_file):
    holds = []
    for line in Path(log_file).read_text(errors="replace").splitlines():
        if "hold: partition=" not in line:
            continue
        fields = {}
        for token in line.split("hold: ", 1)[1].split():
            if "=" in token:
                k, v = token.split("=", 1)
                fields[k] = v
        holds.append(fields)
    return holds


def setup(args, w, run):
    if w["root"].exists():
        if not (w["root"] / MARKER).exists() and any(w["root"].iterdir()):
            raise SystemExit(f"{w['root']} is not empty and not a guard benchmark workdir; "
                             "refusing to use it")
        shutil.rmtree(w["root"])
    w["root"].mkdir(parents=True)
    (w["root"] / MARKER).touch()
    w["logs"].mkdir()
    est = args.packages * 1.72e6 * args.size_scale
    free = shutil.disk_usage(w["root"]).free
    if free < 3 * est + 1e9:
        raise SystemExit(f"need about {3 * est / 1e9:.1f} GB free in {w['root']}, "
                         f"have {free / 1e9:.1f} GB; lower --size-scale")
    print(f"generating {args.packages} packages at size-scale {args.size_scale} ...", flush=True)
    gen_tree.main(["generate", str(w["src"]), "--packages", str(args.packages),
                   "--size-scale", str(args.size_scale), "--seed", str(args.seed)])
    run.run([w["ctl"], "keygen", "--out", str(w["root"] / "origin")], "keygen")
    guard = json.loads(args.guard) if args.guard else {}
    t0 = {"role": "tier0", "name": "origin", "tree": "t0/tree", "state_dir": "t0/state",
          "layout": "{release}/{repo}/{arch}", "index_files": sorted(INDEX_FILES),
          "source": {"dir": str(w["src"]), "settle_seconds": 0}, "signing_key": "origin.key",
          "guard": guard}
    m1 = {"role": "mirror", "name": "m1", "tree": "m1/tree", "state_dir": "m1/state",
          "upstream": {"url": "file://" + str(w["t0tree"])}, "trusted_keys": ["origin.pub"],
          "guard": guard}
    w["t0conf"].write_text(json.dumps(t0, indent=1))
    w["mconf"].write_text(json.dumps(m1, indent=1))


def fmt(rule, value):
    if value is None:
        return "-"
    return f"{value:d}" if rule in ("index", "root") else f"{value:.4f}"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/tiersync-guardbench")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies the 29,000 packages (0.1: 2,900)")
    p.add_argument("--size-scale", type=float, default=0.01, help="gen_tree.py's file size multiplier")
    p.add_argument("--rounds", default="hourly:24,busy:4,mass:1",
                   help="mutations in order, KIND:COUNT,... (default: a day of hourly rounds, "
                        "4 busy ones, one mass rebuild)")
    p.add_argument("--guard", help="the nodes' guard section as JSON (default: the defaults)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bin-dir", default=str(HERE.parents[1] / "build-rel" / "daemon"))
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json-out")
    p.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = p.parse_args()
    args.packages = max(27, round(29000 * args.scale))
    rounds = []
    for item in args.rounds.split(","):
        kind, _, count = item.partition(":")
        if kind not in gen_tree.KINDS or not count.isdigit():
            raise SystemExit(f"--rounds: {item!r} is not KIND:COUNT with KIND one of "
                             f"{', '.join(sorted(gen_tree.KINDS))}")
        rounds += [kind] * int(count)
    root = Path(args.workdir).resolve()
    w = {"root": root, "src": root / "src", "t0tree": root / "t0" / "tree",
         "mtree": root / "m1" / "tree", "logs": root / "logs", "t0conf": root / "t0.json",
         "mconf": root / "m1.json", "d": str(Path(args.bin_dir) / "tiersyncd"),
         "ctl": str(Path(args.bin_dir) / "tiersyncctl")}
    for exe in (w["d"], w["ctl"]):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe} not found: cmake -S . -B build-rel -G Ninja "
                             "-DCMAKE_BUILD_TYPE=Release && ninja -C build-rel tiersyncd tiersyncctl")
    st = os.stat(w["d"])
    results = {"binary": f"{w['d']} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(st.st_mtime))})",
               "params": {"packages": args.packages, "size_scale": args.size_scale,
                          "rounds": args.rounds, "guard": args.guard or "defaults",
                          "seed": args.seed},
               "rounds": []}
    # One run per workdir: a second one would mutate and delete the same trees.
    lock = open(f"{root}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another run_guard_bench.py uses {root} ({root}.lock is locked)")
    run = Runner(w["logs"], args.timeout)
    status = 0
    try:
        setup(args, w, run)
        t0 = run.run([w["d"], "--config", w["t0conf"], "--once"], "t0-initial")
        run.run([w["d"], "--config", w["mconf"], "--once"], "mirror-initial")
        applied = by_partition(listing(w["t0tree"]))
        files = sum(len(p) for p in applied.values())
        print(f"tree: {files} files in {len(applied)} partitions (root included); "
              f"first publish {t0['s']:.1f} s", flush=True)
        high_water = {name: size_of(part) for name, part in applied.items()}
        header = (f"{'round':>5} {'kind':7} {'t0':5} {'mirror':6} "
                  + " ".join(f"{r:>8}" for r in RULES) + "  worst partitions (deleted / bytes)")
        print(header)
        print("-" * len(header))
        for i, kind in enumerate(rounds, 1):
            with contextlib.redirect_stdout(io.StringIO()):   # its one line per round
                n, _ = gen_tree.mutate_tree(w["src"], kind, args.size_scale, args.seed)
            candidate = by_partition(listing(w["src"]))
            figs = figures(applied, candidate, high_water)
            best = worst(figs)
            p0 = run.run([w["d"], "--config", w["t0conf"], "--once"], f"t0-{kind}", ok=(0, 3))
            pm = run.run([w["d"], "--config", w["mconf"], "--once"], f"mirror-{kind}", ok=(0, 3))
            holds0 = parse_holds(w["logs"] / f"{run.count - 1:04d}-t0-{kind}.log")
            holdsm = parse_holds(w["logs"] / f"{run.count:04d}-mirror-{kind}.log")
            applied = by_partition(listing(w["t0tree"]))
            for name, part in applied.items():
                old = high_water.get(name, (0, 0, 0))
                high_water[name] = tuple(max(a, b) for a, b in zip(old, size_of(part)))
            row = {"round": i, "kind": kind, "replaced": n,
                   "t0_rc": p0["rc"], "mirror_rc": pm["rc"], "t0_holds": holds0,
                   "mirror_holds": holdsm,
                   "worst": {r: {"value": v, "partition": name} for r, (v, name) in best.items()},
                   "partitions": figs}
            results["rounds"].append(row)
            t0_state = "HELD" if p0["rc"] == 3 else "ok"
            m_state = "HELD" if pm["rc"] == 3 else "ok"
            print(f"{i:>5} {kind:7} {t0_state:5} {m_state:6} "
                  + " ".join(f"{fmt(r, best.get(r, (None,))[0]):>8}" for r in RULES)
                  + f"  {best['deleted'][1]} / {best['bytes'][1]}", flush=True)
            for h in holds0:
                print(f"      tier0 hold: {' '.join(f'{k}={v}' for k, v in h.items() if k not in ('candidate',))}")
            for h in holdsm:
                print(f"      mirror hold: {' '.join(f'{k}={v}' for k, v in h.items() if k not in ('candidate',))}")
        print()
        summary = {}
        for kind in dict.fromkeys(rounds):
            rows = [r for r in results["rounds"] if r["kind"] == kind]
            s = {"rounds": len(rows), "held_rounds": sum(r["t0_rc"] == 3 or r["mirror_rc"] == 3 for r in rows)}
            for rule in RULES:
                values = [(r["worst"][rule]["value"], r["worst"][rule]["partition"])
                          for r in rows if rule in r["worst"]]
                if values:
                    s[rule] = max(values)
            summary[kind] = s
            print(f"{kind}: {s['rounds']} rounds, {s['held_rounds']} held; largest: "
                  + ", ".join(f"{rule} {fmt(rule, s[rule][0])} ({s[rule][1]})"
                              for rule in RULES if rule in s))
        results["summary"] = summary
    except BenchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        status = 1
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str))
    if status == 0 and not args.keep:
        shutil.rmtree(w["root"])
    elif w["root"].exists():
        print(f"workdir kept: {w['root']} (logs in {w['logs']})")
    return status


if __name__ == "__main__":
    sys.exit(main())
