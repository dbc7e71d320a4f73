#!/usr/bin/env python3
"""tiersync vs rsync benchmark (see README.md beside this file).

Builds a synthetic tree (gen_tree.py), publishes it with a tier0, syncs a file://
mirror from it, keeps an rsync copy beside it, then times both tools on the same
work, alternating them, and prints one table of medians with ratios and targets.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_tree  # noqa: E402
from benchlib import (RSYNC, BenchError, Runner, binary_info, check_binaries,  # noqa: E402,F401
                      fresh_workdir, machine_info, node_configs, remove_workdir, trees_differ,
                      tree_stats, workdir_paths)

TARGETS = {            # row key -> (limit, meaning)
    "tier0_noop": 0.40,
    "relay_noop": 0.05,
    "relay_busy": 0.50,
}
MEM_TARGET = 200       # bytes per entry


def check_same(w, what):
    """The source, tier0's tree, the mirror and the rsync copy must agree."""
    problems = []
    for name in ("t0tree", "mtree", "copy"):
        diff = trees_differ(w["src"], w[name])
        if diff:
            problems.append(f"{name} differs from source after {what}: {diff}")
    for p in problems:
        print("WARNING:", p, flush=True)
    return problems


def setup(args, w, run):
    fresh_workdir(w["root"])
    w["logs"].mkdir()
    est = args.packages * 1.72e6 * args.size_scale          # mean of the log-uniform sizes
    free = shutil.disk_usage(w["root"]).free
    if free < 4 * est + 1e9:
        raise SystemExit(f"need about {4 * est / 1e9:.1f} GB free in {w['root']}, have {free / 1e9:.1f} GB; "
                         "lower --size-scale")
    print(f"generating {args.packages} packages at size-scale {args.size_scale} ...", flush=True)
    gen_tree.main(["generate", str(w["src"]), "--packages", str(args.packages),
                   "--size-scale", str(args.size_scale), "--seed", str(args.seed)])
    node_configs(w, run)
    tiny = w["root"] / "tiny-src"
    tiny.mkdir()
    (tiny / "one").write_bytes(b"x")


def median(runs, key="s"):
    return statistics.median(r[key] for r in runs) if runs else None


def alternate(i, first, second):
    """Run two callables, swapping the order on odd rounds."""
    if i % 2:
        b = second()
        a = first()
    else:
        a = first()
        b = second()
    return a, b


def bench(args, w, run, results):
    def t0(label, rss=False):
        return run.run([w["d"], "--config", w["t0conf"], "--once"], label, ok=(0, 3), rss=rss)

    def mirror(label, rss=False):
        return run.run([w["d"], "--config", w["mconf"], "--once"], label, rss=rss)

    def rsync(label, rss=False):
        return run.run(RSYNC + [f"{w['src']}/", f"{w['copy']}/"], label, rss=rss)

    rows, mem = results["rows"], results["mem"]

    def row(key, title, ts_runs, rs_runs, note=""):
        rows[key] = {"title": title, "tiersync_s": median(ts_runs), "rsync_s": median(rs_runs),
                     "tiersync_samples": [r["s"] for r in ts_runs], "rsync_samples": [r["s"] for r in rs_runs],
                     "note": note}

    def timed_pairs(ts_fn, rs_fn):
        ts, rs = [], []
        for i in range(args.repeat):
            a, b = alternate(i, ts_fn, rs_fn)
            ts.append(a), rs.append(b)
        return ts, rs

    # Initial full copy: one run each, shown for information.
    print("initial publish and full sync ...", flush=True)
    pub = t0("t0-initial", rss=True)
    full_m, full_r = mirror("mirror-initial", rss=True), rsync("rsync-initial", rss=True)
    row("initial_full", "initial full sync (1 run)", [full_m], [full_r],
        f"tier0's first publish (hashes everything): {pub['s']:.2f}s")
    mem.update(t0_initial_rss_kb=pub["rss_kb"], mirror_initial_rss_kb=full_m["rss_kb"],
               rsync_initial_rss_kb=full_r["rss_kb"])
    results["consistency"] += check_same(w, "initial sync")

    # tier0 no-op rescan vs rsync no-op (warm-up runs untimed, they give the peak RSS).
    print("tier0 no-op ...", flush=True)
    warm_t0, warm_rs = t0("t0-noop-warm", rss=True), rsync("rsync-noop-warm", rss=True)
    mem.update(t0_noop_rss_kb=warm_t0["rss_kb"], rsync_noop_rss_kb=warm_rs["rss_kb"])
    ts, rs = timed_pairs(lambda: t0("t0-noop"), lambda: rsync("rsync-noop"))
    row("tier0_noop", "tier0 no-op rescan", ts, rs)

    # relay no-op vs rsync no-op.
    print("relay no-op ...", flush=True)
    mem["mirror_noop_rss_kb"] = mirror("mirror-noop-warm", rss=True)["rss_kb"]
    rsync("rsync-noop-warm")
    ts, rs = timed_pairs(lambda: mirror("mirror-noop"), lambda: rsync("rsync-noop"))
    row("relay_noop", "relay no-op cycle", ts, rs)

    # Incremental rounds: mutate -> tier0 publishes -> mirror and rsync move the same delta.
    # Busy starts with one untimed round run under GNU time: it gives the peak RSS.
    rounds = [("busy", args.repeat, True), ("hourly", args.repeat, False), ("mass", args.mass_repeat, False)]
    for kind, count, warm in rounds:
        print(f"relay {kind} incremental x{count} ...", flush=True)
        ts, rs, pubs, changed = [], [], [], []
        for i in range(-1 if warm else 0, count):
            n, _ = gen_tree.mutate_tree(w["src"], kind, args.size_scale, args.seed)
            p = t0(f"t0-publish-{kind}")
            if p["rc"] == 3:
                results["notes"].append(f"tier0 held a partition after a {kind} mutation (exit 3)")
            a, b = alternate(i, lambda: mirror(f"mirror-{kind}", rss=i < 0),
                             lambda: rsync(f"rsync-{kind}", rss=i < 0))
            if i < 0:
                mem.update(mirror_busy_rss_kb=a["rss_kb"], rsync_busy_rss_kb=b["rss_kb"])
            else:
                ts.append(a), rs.append(b), pubs.append(p), changed.append(n)
        results["consistency"] += check_same(w, f"{kind} rounds")
        row(f"relay_{kind}", f"relay {kind} incremental", ts, rs,
            f"{statistics.median(changed):.0f} packages replaced per round")
        row(f"tier0_{kind}", f"  tier0 publish after {kind}", pubs, rs, "same delta as the rsync run")

    tiny = run.run(RSYNC + [f"{w['root'] / 'tiny-src'}/", f"{w['root'] / 'tiny-dst'}/"], "rsync-tiny", rss=True)
    check = run.run([w["d"], "--config", w["mconf"], "--check-config"], "check-config", rss=True)
    mem.update(rsync_tiny_rss_kb=tiny["rss_kb"], tiersyncd_check_config_rss_kb=check["rss_kb"])


def fmt_s(v):
    return "-" if v is None else f"{v:.3f} s"


def report(args, info, results):
    files, size = results["tree"]["files"], results["tree"]["bytes"]
    print()
    info["load_end"] = os.getloadavg()[0]
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, {info['rsync']}; "
          f"load average {info['load_start']:.2f} at start, {info['load_end']:.2f} at end")
    print(f"binary: {info['tiersyncd']}")
    print(f"tree: {files} files, {size / 1e6:.1f} MB (size-scale {args.size_scale}); "
          f"N = {args.repeat} (mass: {args.mass_repeat}); medians, warm page cache")
    header = f"{'measure':34} {'tiersync':>12} {'rsync':>12} {'ratio':>7} {'target':>9}  result"
    print(header)
    print("-" * len(header))
    order = ["tier0_noop", "relay_noop", "relay_busy", "relay_hourly", "relay_mass",
             "tier0_busy", "tier0_hourly", "tier0_mass", "initial_full"]
    for key in order:
        r = results["rows"].get(key)
        if r is None:
            continue
        ratio = r["tiersync_s"] / r["rsync_s"] if r["tiersync_s"] and r["rsync_s"] else None
        r["ratio"] = ratio
        limit = TARGETS.get(key)
        verdict = "" if limit is None or ratio is None else ("PASS" if ratio <= limit else "FAIL")
        r["target"], r["result"] = limit, verdict or None
        print(f"{r['title']:34} {fmt_s(r['tiersync_s']):>12} {fmt_s(r['rsync_s']):>12} "
              f"{'-' if ratio is None else f'{ratio:.3f}':>7} {'' if limit is None else f'<= {limit}':>9}  "
              f"{verdict}{'  ' if verdict and r['note'] else ''}{r['note']}")
    m, mb = results["mem"], lambda kb: f"{kb / 1024:.1f} MB"
    if m.get("mirror_busy_rss_kb") and m.get("rsync_busy_rss_kb"):
        entries = files
        ts_pe = (m["mirror_busy_rss_kb"] - m["mirror_noop_rss_kb"]) * 1024 / entries
        rs_pe = (m["rsync_busy_rss_kb"] - m["rsync_tiny_rss_kb"]) * 1024 / entries
        verdict = "PASS" if ts_pe < MEM_TARGET else "FAIL"
        m.update(entries=entries, tiersync_bytes_per_entry=ts_pe, rsync_bytes_per_entry=rs_pe, result=verdict)
        print(f"{'peak RSS, busy incremental':34} {mb(m['mirror_busy_rss_kb']):>12} {mb(m['rsync_busy_rss_kb']):>12} "
              f"{m['mirror_busy_rss_kb'] / m['rsync_busy_rss_kb']:>7.3f} {'':>9}  "
              f"no-op: mirror {mb(m['mirror_noop_rss_kb'])}, rsync {mb(m['rsync_noop_rss_kb'])}")
        print(f"{'resident bytes per entry':34} {ts_pe:>10.0f} B {rs_pe:>10.0f} B "
              f"{ts_pe / rs_pe if rs_pe > 0 else float('nan'):>7.3f} {'< ' + str(MEM_TARGET) + ' B':>9}  "
              f"{verdict}  {entries} entries")
        print(f"  tiersync: (mirror busy peak - mirror no-op peak) / entries.  rsync: (busy peak - peak on a "
              f"1-file tree, {mb(m['rsync_tiny_rss_kb'])}) / entries, for the largest single rsync process.")
        print(f"  other peaks: tier0 first publish {mb(m['t0_initial_rss_kb'])}, tier0 no-op {mb(m['t0_noop_rss_kb'])}, "
              f"mirror full sync {mb(m['mirror_initial_rss_kb'])}, rsync full copy {mb(m['rsync_initial_rss_kb'])}, "
              f"tiersyncd --check-config {mb(m['tiersyncd_check_config_rss_kb'])}")
    elif "mirror_noop_rss_kb" in m:
        print("memory: not measured (needs GNU time in /usr/bin)")
    for note in results["notes"] + results["consistency"] + results["errors"]:
        print("note:", note)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default="/tmp/tiersync-bench")
    p.add_argument("--size-scale", type=float, default=0.01, help="file size multiplier (0.01: ~0.5 GB per copy)")
    p.add_argument("--packages", type=int, default=29000)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per scenario (median)")
    p.add_argument("--mass-repeat", type=int, default=1, help="timed mass-rebuild rounds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bin-dir", default=str(HERE.parents[1] / "build" / "daemon"))
    p.add_argument("--timeout", type=float, default=900, help="seconds before one command is killed")
    p.add_argument("--json-out")
    p.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = p.parse_args()
    if args.repeat < 1 or args.mass_repeat < 1:
        raise SystemExit("--repeat and --mass-repeat must be >= 1")
    root = Path(args.workdir).resolve()
    w = workdir_paths(root, args.bin_dir)
    check_binaries(w["d"], w["ctl"])
    info = machine_info()
    info["tiersyncd"] = binary_info(w["d"])
    results = {"machine": info, "rows": {}, "mem": {}, "notes": [], "consistency": [], "errors": [],
               "params": {"size_scale": args.size_scale, "packages": args.packages, "repeat": args.repeat,
                          "mass_repeat": args.mass_repeat, "seed": args.seed}}
    run = Runner(w["logs"], args.timeout)
    status = 0
    try:
        setup(args, w, run)
        files, size = tree_stats(w["src"])
        results["tree"] = {"files": files, "bytes": size}
        bench(args, w, run, results)
    except BenchError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        results["errors"].append(str(e).split("\n")[0])
        status = 1
    if "tree" in results:
        report(args, info, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.keep or status:
        print(f"workdir kept: {root} (command logs in {w['logs']})")
    else:
        remove_workdir(root)
    return status


if __name__ == "__main__":
    sys.exit(main())
