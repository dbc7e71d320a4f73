#!/usr/bin/env python3
"""tiersync vs rsync across a long link (see README.md beside this file).

The same synthetic tree (gen_tree.py) is served by a tier0 daemon over plain HTTP and by
`rsync --daemon`; each is reached through its own tests/tools/linksim.py proxy, which adds a
one-way delay each way and a bandwidth cap per connection. For each round trip asked for
(default 50, 100 and 250 ms) it times a mirror's initial sync, busy incremental and no-op
(`tiersyncd --once` against Alpine's recommended rsync command through the same kind of link), and
the daemon propagation: publish at tier0 -> applied by a mirror two hops away (tier0 -> tier1 ->
mirror, each hop through a proxy of that round trip, long polls open).
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
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_tree  # noqa: E402
from run_bench import MARKER, BenchError, Runner, machine_info, median, tree_listing  # noqa: E402
from run_net_bench import (RSYNC, Daemons, free_port, publish, rsyncd_conf, t0_status,  # noqa: E402
                           wait_port)

LINKSIM = HERE.parent / "tools" / "linksim.py"
TARGETS = {"initial": 1.0, "busy": 0.5, "noop": 0.2}   # ratio tiersync / rsync, at most
URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def start_link(daemons, w, name, target_port, delay_ms, rate_mbit):
    """A linksim proxy in front of 127.0.0.1:target_port; returns its port."""
    daemons.start(name, [sys.executable, LINKSIM, "--target", f"127.0.0.1:{target_port}",
                         "--delay-ms", str(delay_ms), "--rate-mbit", str(rate_mbit),
                         "--stats", w["logs"] / f"{name}.json"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        daemons.check(name)
        text = daemons.log_text(name)
        if text.startswith("listening ") and "\n" in text:
            return int(text.split()[1])
        time.sleep(0.05)
    raise BenchError(f"{name}: the link simulator did not start")


def status_serial(port):
    try:
        with URLOPEN(f"http://127.0.0.1:{port}/.tiersync/v1/status", timeout=5) as r:
            return json.loads(r.read()).get("serial") or 0
    except OSError:
        return 0


def setup(args, w, run, daemons):
    if w["root"].exists():
        if not (w["root"] / MARKER).exists() and any(w["root"].iterdir()):
            raise SystemExit(f"{w['root']} is not empty and not a benchmark workdir; refusing to use it")
        shutil.rmtree(w["root"])
    w["root"].mkdir(parents=True)
    (w["root"] / MARKER).touch()
    w["logs"].mkdir()
    print(f"generating {args.packages} packages at size-scale {args.size_scale} ...", flush=True)
    gen_tree.main(["generate", str(w["src"]), "--packages", str(args.packages),
                   "--size-scale", str(args.size_scale), "--seed", str(args.seed)])
    run.run([w["ctl"], "keygen", "--out", w["root"] / "origin"], "keygen")
    ports = {"t0_http": free_port(), "rsyncd": free_port()}
    w["ports"] = ports
    t0 = {"role": "tier0", "name": "origin", "tree": "t0/tree", "state_dir": "t0/state",
          "layout": "{release}/{repo}/{arch}", "index_files": ["APKINDEX.tar.gz"],
          "source": {"dir": str(w["src"]), "settle_seconds": 86400}, "signing_key": "origin.key",
          "guard": {"max_delete_ratio": 0.5},
          "listen": [{"address": "127.0.0.1", "port": ports["t0_http"], "tls": False}]}
    w["t0conf"].write_text(json.dumps(t0, indent=1))
    print("tier0 daemon: first publish ...", flush=True)
    daemons.start("tier0", [w["d"], "--config", w["t0conf"]])
    wait_port(ports["t0_http"], daemons, "tier0", 30)
    publish(w, run, daemons, 0, args.timeout)
    daemons.start("rsyncd", rsyncd_conf(w, ports["rsyncd"]))
    wait_port(ports["rsyncd"], daemons, "rsyncd", 30)


def node_config(w, name, upstream_port, listen_port=None, pipeline_depth=None):
    upstream = {"url": f"http://127.0.0.1:{upstream_port}/", "poll_seconds": 300}
    if pipeline_depth:
        upstream["pipeline_depth"] = pipeline_depth
    conf = {"role": "mirror", "name": name, "tree": f"{name}/tree", "state_dir": f"{name}/state",
            "upstream": upstream,
            "trusted_keys": ["origin.pub"], "guard": {"max_delete_ratio": 0.5}}
    if listen_port:
        conf["listen"] = [{"address": "127.0.0.1", "port": listen_port, "tls": False}]
    path = w["root"] / f"{name}.json"
    path.write_text(json.dumps(conf, indent=1))
    return path


def wipe(w, names):
    for name in names:
        for path in (w["root"] / name / "tree", w["root"] / name / "state"):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(w["copy"], ignore_errors=True)


def one_rtt(args, w, run, daemons, rtt, rows):
    """The --once rows and the daemon propagation at one round trip (ms)."""
    delay = rtt / 2
    t0_link = start_link(daemons, w, f"link-t0-{rtt}", w["ports"]["t0_http"], delay, args.rate_mbit)
    rs_link = start_link(daemons, w, f"link-rsync-{rtt}", w["ports"]["rsyncd"], delay, args.rate_mbit)
    name = f"m{rtt}"
    conf = node_config(w, name, t0_link, pipeline_depth=args.pipeline_depth)
    tiersync = lambda label: run.run([w["d"], "--config", conf, "--once"], f"{name}-{label}")  # noqa: E731
    rsync = lambda label: run.run(  # noqa: E731
        RSYNC + [f"rsync://127.0.0.1:{rs_link}/src/", f"{w['copy']}/"], f"rsync{rtt}-{label}")
    samples = {k: {"tiersync": [], "rsync": []} for k in ("initial", "noop", "busy")}

    def both(kind, i):
        order = [("tiersync", tiersync), ("rsync", rsync)]
        for side, fn in (order if i % 2 == 0 else order[::-1]):
            samples[kind][side].append(fn(kind))

    print(f"{rtt} ms: initial sync x{args.initial_repeat} ...", flush=True)
    for i in range(args.initial_repeat):
        wipe(w, [name])
        both("initial", i)
    print(f"{rtt} ms: no-op x{args.repeat} ...", flush=True)
    for i in range(args.repeat):
        both("noop", i)
    print(f"{rtt} ms: busy incremental x{args.repeat} ...", flush=True)
    for i in range(args.repeat):
        gen_tree.mutate_tree(w["src"], "busy", args.size_scale, args.seed)
        publish(w, run, daemons, t0_status(w)["serial"], args.timeout)
        both("busy", i)
    ref = tree_listing(w["src"])
    for label, path in ((name, w["root"] / name / "tree"), ("rsync copy", w["copy"])):
        diff = set(ref.items()) ^ set(tree_listing(path).items())
        if diff:
            rows.setdefault("notes", []).append(f"{rtt} ms: {label} differs from the source: {sorted(diff)[:3]}")
    for kind, s in samples.items():
        rows[f"{kind}_{rtt}"] = {"kind": kind, "rtt_ms": rtt, "tiersync_s": median(s["tiersync"]),
                                 "rsync_s": median(s["rsync"]),
                                 "tiersync_samples": [r["s"] for r in s["tiersync"]],
                                 "rsync_samples": [r["s"] for r in s["rsync"]]}

    # Daemon propagation, two hops: tier0 -> (link) -> tier1 -> (link) -> mirror.
    print(f"{rtt} ms: propagation x{args.repeat} ...", flush=True)
    t1_port, mirror_port = free_port(), free_port()
    t1_name, mirror_name = f"t1-{rtt}", f"pm-{rtt}"
    wipe(w, [t1_name, mirror_name])
    t1_conf = node_config(w, t1_name, t0_link, t1_port, args.pipeline_depth)
    t1_link = start_link(daemons, w, f"link-t1-{rtt}", t1_port, delay, args.rate_mbit)
    mirror_conf = node_config(w, mirror_name, t1_link, mirror_port, args.pipeline_depth)
    daemons.start(t1_name, [w["d"], "--config", t1_conf])
    daemons.start(mirror_name, [w["d"], "--config", mirror_conf])
    serial = t0_status(w)["serial"]
    deadline = time.monotonic() + args.timeout
    while status_serial(mirror_port) < serial:        # the initial sync, untimed
        daemons.check(t1_name)
        daemons.check(mirror_name)
        if time.monotonic() > deadline:
            raise BenchError(f"{rtt} ms: the two-hop mirror never reached serial {serial}")
        time.sleep(0.1)
    times = []
    for _ in range(args.repeat):
        gen_tree.mutate_tree(w["src"], "hourly", args.size_scale, args.seed)
        before = t0_status(w)["serial"]
        run.run([w["ctl"], "--config", w["t0conf"], "sync-now"], "t0-sync-now")
        deadline = time.monotonic() + args.timeout
        while (t0_status(w).get("serial") or 0) <= before:   # tier0 published (polled every 5 ms)
            if time.monotonic() > deadline:
                raise BenchError(f"{rtt} ms: tier0 did not publish")
            time.sleep(0.005)
        published = time.perf_counter()
        serial = t0_status(w)["serial"]
        deadline = time.monotonic() + args.timeout
        while status_serial(mirror_port) < serial:
            if time.monotonic() > deadline:
                raise BenchError(f"{rtt} ms: serial {serial} never reached the two-hop mirror")
            time.sleep(0.01)
        times.append(time.perf_counter() - published)
    daemons.stop(mirror_name)
    daemons.stop(t1_name)
    rows[f"propagation_{rtt}"] = {"kind": "propagation", "rtt_ms": rtt, "tiersync_s": statistics.median(times),
                                  "tiersync_samples": times}
    for link in (f"link-t0-{rtt}", f"link-rsync-{rtt}", f"link-t1-{rtt}"):
        daemons.stop(link)


def report(args, info, results):
    tree = results["tree"]
    print()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['rsync']}; load average "
          f"{' '.join(f'{x:.2f}' for x in info['load_start_all'])} at start, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
    print(f"tree: {tree['files']} files, {tree['bytes'] / 1e6:.1f} MB (size-scale {args.size_scale}); "
          f"link: linksim.py, {args.rate_mbit:g} Mbit/s per connection and direction; "
          f"medians of {args.initial_repeat} (initial) and {args.repeat} runs; tier0 over http://")
    print(f"rsync side: {' '.join(RSYNC)} rsync://(link)/src/ copy/")
    header = f"{'measure':34} {'tiersync':>10} {'rsync':>10} {'ratio':>7} {'target':>7}"
    print(header)
    print("-" * len(header))
    titles = {"initial": "initial sync", "busy": "busy incremental", "noop": "no-op",
              "propagation": "propagation, 2 hops"}
    for rtt in args.rtts:
        for kind in ("initial", "busy", "noop", "propagation"):
            r = results["rows"].get(f"{kind}_{rtt}")
            if not r:
                continue
            label = f"{titles[kind]}, {rtt} ms"
            if kind == "propagation":
                rounds = r["tiersync_s"] / (rtt / 1000)
                print(f"{label:34} {r['tiersync_s']:>8.3f} s {'':>10} {'':>7} {'':>7}  ({rounds:.1f} round trips)")
                continue
            ratio = r["tiersync_s"] / r["rsync_s"] if r["rsync_s"] else None
            ok = "PASS" if ratio is not None and ratio <= TARGETS[kind] else "FAIL"
            r.update(ratio=ratio, result=ok)
            print(f"{label:34} {r['tiersync_s']:>8.3f} s {r['rsync_s']:>8.3f} s {ratio:>7.3f} "
                  f"{'<= ' + str(TARGETS[kind]):>7} {ok}")
    for note in results["notes"] + results["errors"]:
        print("note:", note)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default="/tmp/tiersync-latencybench")
    p.add_argument("--packages", type=int, default=9000)
    p.add_argument("--size-scale", type=float, default=0.002, help="file size multiplier")
    p.add_argument("--rtts", default="50,100,250", help="round trips in ms, comma-separated")
    p.add_argument("--rate-mbit", type=float, default=100, help="per connection and direction")
    p.add_argument("--repeat", type=int, default=3, help="timed no-op, busy and propagation runs")
    p.add_argument("--initial-repeat", type=int, default=3)
    p.add_argument("--pipeline-depth", type=int, help="upstream.pipeline_depth of the relays (default: theirs)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bin-dir", default=str(HERE.parents[1] / "build-bench" / "daemon"))
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json-out")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    args.rtts = [int(x) for x in args.rtts.split(",") if x.strip()]
    root = Path(args.workdir).resolve()
    w = {"root": root, "src": root / "src", "t0tree": root / "t0" / "tree", "copy": root / "rsync-copy",
         "logs": root / "logs", "t0conf": root / "t0.json", "rsyncd_conf": root / "rsyncd.conf",
         "d": str(Path(args.bin_dir) / "tiersyncd"), "ctl": str(Path(args.bin_dir) / "tiersyncctl")}
    for exe in (w["d"], w["ctl"]):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe} not found: build tiersyncd and tiersyncctl, or pass --bin-dir")
    if not shutil.which("rsync"):
        raise SystemExit("rsync not found")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    info = machine_info()
    info["load_start_all"] = os.getloadavg()
    results = {"machine": info, "rows": {}, "notes": [], "errors": [],
               "params": {k: getattr(args, k) for k in ("packages", "size_scale", "rtts", "rate_mbit", "pipeline_depth",
                                                        "repeat", "initial_repeat", "seed")}}
    run = Runner(w["logs"], args.timeout)
    daemons = None
    status = 0
    try:
        root.mkdir(parents=True, exist_ok=True)
        daemons = Daemons(w["logs"])
        setup(args, w, run, daemons)
        files = tree_listing(w["src"])
        results["tree"] = {"files": len(files), "bytes": sum(size for size, _ in files.values())}
        for rtt in args.rtts:
            one_rtt(args, w, run, daemons, rtt, results["rows"])
            results["notes"] += results["rows"].pop("notes", [])
    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        results["errors"].append(str(e).split("\n")[0])
        status = 1
    except KeyboardInterrupt:
        results["errors"].append("interrupted")
        status = 130
    finally:
        if daemons:
            daemons.stop_all()
    if "tree" in results:
        report(args, info, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.keep or status:
        print(f"workdir kept: {root} (logs in {w['logs']})")
    elif root.exists() and (root / MARKER).exists():
        shutil.rmtree(root)
    return status


if __name__ == "__main__":
    sys.exit(main())
