#!/usr/bin/env python3
"""tiersync at scale: the steps of issue 10's table at a given number of entries, beside rsync.

  run_scale_bench.py --entries 29000 [--entries 300000 ...] [--json-out F] [--plot F.png]
  run_scale_bench.py --plot-only --json-out F --plot F.png

For each size: generates a tree of tiny files (gen_tree.py, --size-scale 0.0001: 128 B to
1.6 KB, so that cost is per entry), then runs once each, over file:// with `--once`:

  tier0 first publish          vs rsync -a initial copy
  relay initial sync           vs rsync -a initial copy
  tier0 publish, hourly change vs rsync of the same change (20 packages): the running daemon's
                               incremental publish (its own cycle time and peak RSS)
  relay hourly incremental     vs rsync of the same change
  relay busy incremental 0.5%  vs rsync of the same change
  tier0 no-op                  vs rsync no-op

Wall time and peak RSS (GNU time) of every command; the rows go to the JSON file (merged with
the sizes already in it) and the plot shows time and memory against entries for each step.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_tree  # noqa: E402
from benchlib import (RSYNC, BenchError, Runner, binary_info, check_binaries,  # noqa: E402
                      fresh_workdir, machine_info, node_configs, remove_workdir, trees_differ,
                      tree_stats, workdir_paths)

# Issue 10's targets, meant at 1,000,000 entries: (largest ratio to rsync, largest peak in MB).
TARGETS = {"tier0_hourly": (0.1, 100), "relay_hourly": (0.05, None), "relay_initial": (1.0, None)}
BYTES_PER_ENTRY = 200                 # every role and step
STEPS = [  # key, title
    ("tier0_first", "tier0 first publish"),
    ("relay_initial", "relay initial sync"),
    ("tier0_hourly", "tier0 publish after hourly (20 pkgs)"),
    ("relay_hourly", "relay hourly incremental"),
    ("relay_busy", "relay busy incremental (0.5%)"),
    ("tier0_noop", "tier0 no-op (--once)"),
]


def one_size(args, entries, run_root):
    root = run_root / f"n{entries}"
    w = workdir_paths(root, args.bin_dir)
    fresh_workdir(root)
    w["logs"].mkdir()
    run = Runner(w["logs"], args.timeout)
    started = time.perf_counter()
    print(f"== {entries} entries: generating ...", flush=True)
    gen_tree.main(["generate", str(w["src"]), "--packages", str(entries),
                   "--size-scale", str(args.size_scale), "--seed", str(args.seed)])
    node_configs(w, run)
    files, size = tree_stats(w["src"])
    print(f"   {files} files, {size / 1e6:.1f} MB, generated in {time.perf_counter() - started:.0f} s",
          flush=True)
    out = {"entries": files, "bytes": size, "rows": {}, "consistency": [], "notes": []}

    def t0(label):
        return run.run([w["d"], "--config", w["t0conf"], "--once"], label, ok=(0, 3), rss=True)

    def mirror(label):
        return run.run([w["d"], "--config", w["mconf"], "--once"], label, rss=True)

    def rsync(label):
        return run.run(RSYNC + [f"{w['src']}/", f"{w['copy']}/"], label, rss=True)

    def row(key, ts, rs, note=""):
        r = {"tiersync_s": ts["s"], "tiersync_rss_kb": ts["rss_kb"], "rsync_s": rs["s"],
             "rsync_rss_kb": rs["rss_kb"], "note": note}
        out["rows"][key] = r
        title = dict(STEPS)[key]
        print(f"   {title:38} {ts['s']:8.2f} s {ts['rss_kb'] / 1024:7.1f} MB   rsync {rs['s']:8.2f} s "
              f"{rs['rss_kb'] / 1024:7.1f} MB   {note}", flush=True)

    def same(what):
        for name in ("t0tree", "mtree", "copy"):
            diff = trees_differ(w["src"], w[name])
            if diff:
                out["consistency"].append(f"{entries}: {name} differs from the source after {what}: {diff}")
                print("   WARNING:", out["consistency"][-1], flush=True)

    first = t0("t0-first")
    relay = mirror("mirror-initial")
    copy = rsync("rsync-initial")
    row("tier0_first", first, copy)
    row("relay_initial", relay, copy)
    same("the initial sync")
    for kind in ("hourly", "busy"):
        if kind == "hourly":  # as dl-master runs it: the daemon's incremental publish
            pub, changed = daemon_publish(w, run, args, kind)
        else:
            changed, _ = gen_tree.mutate_tree(w["src"], kind, args.size_scale, args.seed)
            pub = t0(f"t0-{kind}")
        if pub["rc"] == 3:
            out["notes"].append(f"tier0 held a partition after the {kind} change (exit 3)")
        rel, rs = mirror(f"mirror-{kind}"), rsync(f"rsync-{kind}")
        if kind == "hourly":
            row("tier0_hourly", pub, rs, f"{changed} packages replaced")
        row(f"relay_{kind}", rel, rs, f"{changed} packages replaced; tier0 {pub['s']:.2f} s, "
            f"{pub['rss_kb'] / 1024:.0f} MB")
        same(f"the {kind} change")
    row("tier0_noop", t0("t0-noop"), rsync("rsync-noop"))
    if not args.keep:
        remove_workdir(root)
    return out


def metric_sums(port):
    """The daemon's cycle count and the sum of their durations (GET /metrics)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        for name in ("tiersync_sync_duration_seconds_sum", "tiersync_sync_duration_seconds_count"):
            if line.startswith(name + " "):
                found[name] = float(line.split()[1])
    return found.get("tiersync_sync_duration_seconds_count", 0), found.get(
        "tiersync_sync_duration_seconds_sum", 0.0)


def wait_until(what, check, limit, step=0.1):
    for _ in range(int(limit / step) + 1):   # bounded
        value = check()
        if value:
            return value
        time.sleep(step)
    raise BenchError(f"timed out after {limit:.0f} s waiting for {what}")


def daemon_publish(w, run, args, kind):
    """tier0's publish of one change as the daemon makes it (inotify names the changed
    partitions; docs/architecture.md, "Incremental publish"). Time: the sum of the durations of
    the cycles the change caused (the daemon's own metric: no settle or look interval in it);
    memory: the peak RSS (VmHWM) from the change to the end of those cycles."""
    conf = json.loads(w["t0conf"].read_text())
    conf["listen"] = [{"address": "127.0.0.1", "port": 0, "tls": False}]
    # As deployed: one publish once the upload has settled, not one per second while it is written.
    conf["source"]["settle_seconds"] = 2
    conf_path = w["root"] / "t0-daemon.json"
    conf_path.write_text(json.dumps(conf, indent=1))
    ports = w["root"] / "t0" / "state" / "ports.json"
    log = open(w["logs"] / f"t0-daemon-{kind}.log", "wb")
    proc = subprocess.Popen([w["d"], "--config", str(conf_path)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    try:
        def port():
            try:
                report = json.loads(ports.read_text())
                return report["pid"] == proc.pid and report["listen"][0]["port"]
            except (OSError, ValueError, KeyError, IndexError):
                return None
        p = wait_until("the daemon's ports", port, args.timeout)

        def settled(minimum):
            # `minimum` cycles done, and none for 2 s since (the first look's walk follows the
            # start's; a change's publish may be followed by a no-op for events it caused).
            state = {"n": -1, "since": time.monotonic()}

            def check():
                n, _ = metric_sums(p)
                if n != state["n"]:
                    state["n"], state["since"] = n, time.monotonic()
                return n >= minimum and time.monotonic() - state["since"] >= 2 and n
            return check
        before = wait_until("the daemon's first cycles", settled(2), args.timeout)
        _, sum_before = metric_sums(p)
        status = Path(f"/proc/{proc.pid}/status")
        base = next(int(line.split()[1]) for line in status.read_text().splitlines()
                    if line.startswith("VmRSS:"))
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")   # VmHWM starts again from here
        changed, _ = gen_tree.mutate_tree(w["src"], kind, args.size_scale, args.seed)
        after = wait_until("the publish of the change", settled(before + 1), args.timeout)
        _, sum_after = metric_sums(p)
        hwm = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
        print(f"   (tier0 daemon: {after - before:.0f} cycle(s) for the change; resident before it "
              f"{base / 1024:.0f} MB)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return {"s": sum_after - sum_before, "rss_kb": hwm, "rc": 0, "log": str(log.name)}, changed


def verdicts(data):
    """held / not held for each target, at the largest size measured."""
    if not data["sizes"]:
        return []
    top = max(data["sizes"].values(), key=lambda s: s["entries"])
    lines = []
    for key, (ratio, mb) in TARGETS.items():
        r = top["rows"].get(key)
        if not r:
            continue
        got = r["tiersync_s"] / r["rsync_s"]
        ok = got <= ratio and (mb is None or r["tiersync_rss_kb"] / 1024 < mb)
        lines.append(f"{key}: {got:.3f}x rsync (target <= {ratio}x)"
                     + (f", {r['tiersync_rss_kb'] / 1024:.0f} MB (target < {mb} MB)" if mb else "")
                     + f" at {top['entries']} entries: {'held' if ok else 'NOT held'}")
    sizes = sorted(data["sizes"].values(), key=lambda s: s["entries"])
    if len(sizes) > 1:  # what one more entry costs, the fixed part (binary, buffers) left out
        lo = sizes[-2]
        for key, _ in STEPS:
            if key in top["rows"] and key in lo["rows"]:
                extra = (top["rows"][key]["tiersync_rss_kb"] - lo["rows"][key]["tiersync_rss_kb"]) * 1024
                lines.append(f"{key}: {extra / (top['entries'] - lo['entries']):.0f} B per added entry "
                             f"({lo['entries']} -> {top['entries']})")
    worst = max(((r["tiersync_rss_kb"] * 1024 / top["entries"], k) for k, r in top["rows"].items()))
    lines.append(f"peak RSS per entry, worst step {worst[1]}: {worst[0]:.0f} B (target < {BYTES_PER_ENTRY} B): "
                 f"{'held' if worst[0] < BYTES_PER_ENTRY else 'NOT held'}")
    return lines


def print_table(data):
    sizes = sorted(data["sizes"].values(), key=lambda s: s["entries"])
    for s in sizes:
        n = s["entries"]
        print(f"\n{n} entries ({s['bytes'] / 1e6:.0f} MB)")
        header = f"{'step':38} {'tiersync':>10} {'peak':>9} {'B/entry':>8} {'rsync -a':>10} {'peak':>9} {'ratio':>7}"
        print(header)
        print("-" * len(header))
        for key, title in STEPS:
            r = s["rows"].get(key)
            if not r:
                continue
            print(f"{title:38} {r['tiersync_s']:8.2f} s {r['tiersync_rss_kb'] / 1024:6.1f} MB "
                  f"{r['tiersync_rss_kb'] * 1024 / n:8.0f} {r['rsync_s']:8.2f} s "
                  f"{r['rsync_rss_kb'] / 1024:6.1f} MB {r['tiersync_s'] / r['rsync_s']:7.3f}")
        for note in s["notes"] + s["consistency"]:
            print("note:", note)
    print()
    for line in verdicts(data):
        print("target", line)


def plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted(data["sizes"].values(), key=lambda s: s["entries"])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 4), dpi=80)
    for i, (key, title) in enumerate(STEPS):
        pts = [(s["entries"], s["rows"][key]) for s in sizes if key in s["rows"]]
        if not pts:
            continue
        xs = [n for n, _ in pts]
        color = f"C{i}"
        ax_t.plot(xs, [r["tiersync_s"] for _, r in pts], "o-", color=color, label=title)
        ax_t.plot(xs, [r["rsync_s"] for _, r in pts], "x:", color=color)
        ax_m.plot(xs, [r["tiersync_rss_kb"] / 1024 for _, r in pts], "o-", color=color, label=title)
    ax_m.plot([s["entries"] for s in sizes], [s["entries"] * BYTES_PER_ENTRY / 2**20 for s in sizes], "k--",
              label=f"{BYTES_PER_ENTRY} B/entry")
    for ax, label in ((ax_t, "wall time, s (dotted: rsync -a)"), (ax_m, "peak RSS, MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("entries")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_m.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("tiersync over file://, tiny files (--once; tier0 hourly: the daemon)", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    print(f"plot: {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, action="append", default=[],
                   help="packages to generate (29000, 300000, 1000000); repeatable")
    p.add_argument("--workdir", default="/tmp/tiersync-scalebench")
    p.add_argument("--size-scale", type=float, default=0.0001, help="gen_tree.py's size multiplier (tiny)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bin-dir", default=str(HERE.parents[1] / "build-rel" / "daemon"),
                   help="a Release build (cmake -B build-rel -DCMAKE_BUILD_TYPE=Release)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before one command is killed")
    p.add_argument("--json-out", default="/tmp/tiersync-scale.json",
                   help="results, merged with the sizes already in the file")
    p.add_argument("--plot", help="PNG of time and memory against entries")
    p.add_argument("--plot-only", action="store_true", help="only print and plot the JSON file")
    p.add_argument("--keep", action="store_true", help="keep each size's workdir")
    args = p.parse_args()
    out = Path(args.json_out)
    data = json.loads(out.read_text()) if out.exists() else {"sizes": {}}
    status = 0
    if not args.plot_only:
        if not args.entries:
            raise SystemExit("--entries N is required (or --plot-only)")
        root = Path(args.workdir).resolve()
        w = workdir_paths(root, args.bin_dir)
        check_binaries(w["d"], w["ctl"])
        fresh_workdir(root)
        data["machine"] = machine_info()
        data["machine"]["tiersyncd"] = binary_info(w["d"])
        data["size_scale"] = args.size_scale
        for n in args.entries:
            try:
                data["sizes"][str(n)] = one_size(args, n, root)
            except BenchError as e:
                print(f"\nERROR at {n} entries: {e}", file=sys.stderr)
                status = 1
                break
            out.write_text(json.dumps(data, indent=1) + "\n")
        if not args.keep and not status:
            remove_workdir(root)
    print_table(data)
    if args.plot:
        plot(data, args.plot)
    return status


if __name__ == "__main__":
    sys.exit(main())
