#!/usr/bin/env python3
"""Scrub benchmark (see README.md beside this file): one scrub pass over the benchmark tree.

Builds the tree of run_bench.py (gen_tree.py), publishes it with a tier0 and syncs a file://
mirror from it, then starts the mirror's daemon with `scrub.mb_per_second` set to each rate
asked for and times its first pass: wall time from the daemon's start to the pass recorded in
state_dir/scrub.json, and the daemon's CPU time (utime + stime from /proc) over that time.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_bench  # noqa: E402

UNLIMITED = 100000  # the largest scrub.mb_per_second: no wait ever at these sizes


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_pass(w, rate, timeout):
    conf = json.loads(w["mconf"].read_text())
    conf["scrub"] = {"mb_per_second": rate}
    conf["upstream"]["poll_seconds"] = 3600
    w["mconf"].write_text(json.dumps(conf, indent=1))
    record = w["root"] / "m1" / "state" / "scrub.json"
    record.unlink(missing_ok=True)
    env = dict(os.environ, TIERSYNC_SCRUB_PAUSE_SECONDS="3600")
    os.sync()
    log = open(w["logs"] / f"scrub-{rate}.log", "ab")
    start = time.perf_counter()
    proc = subprocess.Popen([w["d"], "--config", str(w["mconf"])], stdout=log, stderr=log, env=env)
    try:
        deadline = start + timeout
        cpu = None
        while time.perf_counter() < deadline:
            try:
                if json.loads(record.read_text()).get("passes", 0) >= 1:
                    cpu = cpu_seconds(proc.pid)
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        if cpu is None:
            raise run_bench.BenchError(f"no scrub pass within {timeout} s at {rate} MB/s")
        r = json.loads(record.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    return {"s": seconds, "cpu_s": cpu, "bytes": r["last_pass_bytes"], "files": r["last_pass_files"],
            "found": r["found"]}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default="/tmp/tiersync-scrub-bench")
    p.add_argument("--size-scale", type=float, default=0.01)
    p.add_argument("--packages", type=int, default=29000)
    p.add_argument("--repeat", type=int, default=3, help="passes per rate (median)")
    p.add_argument("--rates", default=f"{UNLIMITED},20", help="scrub.mb_per_second values, comma-separated")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bin-dir", default=str(HERE.parents[1] / "build" / "daemon"))
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    root = Path(args.workdir).resolve()
    w = {"root": root, "src": root / "src", "t0tree": root / "t0" / "tree", "mtree": root / "m1" / "tree",
         "logs": root / "logs", "t0conf": root / "t0.json", "mconf": root / "m1.json",
         "d": str(Path(args.bin_dir) / "tiersyncd"), "ctl": str(Path(args.bin_dir) / "tiersyncctl")}
    run = run_bench.Runner(w["logs"], args.timeout)
    run_bench.setup(args, w, run)
    run.run([w["d"], "--config", str(w["t0conf"]), "--once"], "t0-publish")
    run.run([w["d"], "--config", str(w["mconf"]), "--once"], "m1-sync")
    files, size = run_bench.tree_stats(w["mtree"])
    print(f"tree: {files} files, {size / 1e6:.0f} MB; load {os.getloadavg()[0]:.1f}", flush=True)
    print("| rate (scrub.mb_per_second) | pass | MB/s | CPU s | CPU % of one core |")
    print("|---|---|---|---|---|")
    for rate in [int(r) for r in args.rates.split(",")]:
        runs = [one_pass(w, rate, args.timeout) for _ in range(args.repeat)]
        s = statistics.median(r["s"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        mb = runs[0]["bytes"] / 1e6
        name = "unlimited" if rate == UNLIMITED else str(rate)
        print(f"| {name} | {s:.1f} s | {mb / s:.0f} | {cpu:.1f} | {100 * cpu / s:.0f}% |", flush=True)
        if any(r["found"] for r in runs):
            print("WARNING: the scrubber found damage in a fresh tree", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    sys.exit(main())
