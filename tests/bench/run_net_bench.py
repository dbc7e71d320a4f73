#!/usr/bin/env python3
"""tiersync vs rsync and nginx over loopback (see README.md beside this file).

Generates a synthetic tree (gen_tree.py), runs a tier0 daemon that publishes it and serves it over
http:// and https://, an `rsync --daemon` serving the same source and an nginx serving the same
published tree. Then, in one run, it times a mirror's initial sync, no-op and busy incremental
(`tiersyncd --once` against Alpine's recommended rsync command from the rsync daemon), and the
small-file request rate with keep-alive (wrk) of tiersyncd's server against nginx.
"""
import argparse
import atexit
import grp
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_tree  # noqa: E402
from run_bench import MARKER, BenchError, Runner, machine_info, median, tree_listing  # noqa: E402

# Alpine's recommended mirror command (wiki.alpinelinux.org/wiki/How_to_setup_a_Alpine_Linux_mirror).
RSYNC = ["rsync", "--archive", "--update", "--hard-links", "--delete", "--delete-after", "--delay-updates"]
TARGETS = {            # row kind -> (comparison, limit): ratio tiersync/baseline
    "initial": ("<=", 1.0),
    "noop": ("<=", 0.05),
    "busy": ("<=", 0.3),
    "wrk": (">=", 0.7),
}
TRANSPORTS = ("https", "http", "file")
WRK_FILES = 100        # small files the wrk script rotates over
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Loopback only: a proxy from the environment must not sit between the tools and the servers.
for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "RSYNC_PROXY"):
    os.environ.pop(var, None)
URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


class Daemons:
    """The long-running processes this script starts; every one is stopped at exit."""

    def __init__(self, logdir):
        self.logdir, self.procs = logdir, {}
        atexit.register(self.stop_all)

    def start(self, name, cmd):
        log = open(self.logdir / f"daemon-{name}.log", "wb")
        proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = (proc, log)
        return proc

    def pid(self, name):
        return self.procs[name][0].pid

    def check(self, name):
        proc, log = self.procs[name]
        if proc.poll() is not None:
            log.flush()
            tail = Path(log.name).read_text(errors="replace")[-3000:]
            raise BenchError(f"{name} exited {proc.returncode}\n--- {log.name} ---\n{tail}")

    def log_text(self, name):
        return Path(self.procs[name][1].name).read_text(errors="replace")

    def stop(self, name):
        proc, log = self.procs.pop(name)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)      # its own session: nginx's workers too
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        log.close()

    def stop_all(self):
        for name in reversed(list(self.procs)):
            self.stop(name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, daemons, name, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        daemons.check(name)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{name} does not accept connections on 127.0.0.1:{port} after {limit:.0f}s")


def cpu_seconds(pid, children=False):
    """utime + stime of a live process (all threads) from /proc; with children=True also those
    of the children it has reaped (rsync's daemon forks one process per connection)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def wait_reaped(pid, limit=5.0):
    """Until the rsync daemon has reaped its per-connection child (its CPU is counted then)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and path.exists() and path.read_text().strip():
        time.sleep(0.01)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tool_versions():
    """One line naming the versions of openssl, nginx and wrk (whichever are installed)."""
    out = []
    for cmd in (["openssl", "version"], ["nginx", "-v"], ["wrk", "--version"]):
        if shutil.which(cmd[0]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
            text = (r.stdout + r.stderr).strip().splitlines()
            words = text[0].replace("nginx version: ", "").split() if text else [cmd[0]]
            out.append(" ".join(words[:2]))
    return ", ".join(out)


def rotate(i, fns):
    """Calls every fn once, starting with fns[i % len]: each tool goes first equally often."""
    k = i % len(fns)
    out = [None] * len(fns)
    for j in list(range(k, len(fns))) + list(range(k)):
        out[j] = fns[j]()
    return out


# ---------------------------------------------------------------------------------------------
# Setup


def make_pki(run, pki):
    """A CA and a server certificate for 127.0.0.1 (P-256), with the openssl CLI; None without it."""
    if not shutil.which("openssl"):
        return None
    pki.mkdir()
    ca, ca_key, crt, key = pki / "ca.pem", pki / "ca.key", pki / "server.pem", pki / "server.key"
    ext = pki / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    try:
        run.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
                 "-subj", "/CN=tiersync netbench CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "openssl-ca")
        run.run(["openssl", "req", "-new", *ec, "-keyout", key, "-out", pki / "server.csr",
                 "-subj", "/CN=127.0.0.1"], "openssl-csr")
        run.run(["openssl", "x509", "-req", "-in", pki / "server.csr", "-CA", ca, "-CAkey", ca_key,
                 "-set_serial", "2", "-days", "2", "-out", crt, "-extfile", ext], "openssl-sign")
    except BenchError as e:
        print(f"note: no TLS ({str(e).splitlines()[0]})", flush=True)
        return None
    return {"ca": ca, "cert": crt, "key": key}


def rsyncd_conf(w, port):
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    w["rsyncd_conf"].write_text(f"""# written by run_net_bench.py
use chroot = no
reverse lookup = no
log file = {w['logs'] / 'rsyncd.log'}
transfer logging = no
[src]
    path = {w['src']}
    read only = yes
    uid = {user}
    gid = {group}
    munge symlinks = no
""")
    return ["rsync", "--daemon", "--no-detach", f"--config={w['rsyncd_conf']}", f"--port={port}",
            "--address=127.0.0.1"]


def nginx_conf(w, http_port, https_port, pki):
    """nginx as a tuned static mirror would run it: 2 workers like tiersyncd's 2 server threads,
    sendfile, keep-alive (1000 requests per connection, as tiersyncd), no access log."""
    user = ""
    if os.getuid() == 0:      # workers would drop to nobody, who may not read the workdir
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
    prefix = w["root"] / "nginx"
    prefix.mkdir(exist_ok=True)
    tls = ""
    if pki and https_port:
        tls = f"""
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {pki['cert']};
        ssl_certificate_key {pki['key']};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {w['t0tree']};
    }}"""
    temp = "\n".join(f"    {k}_temp_path {prefix / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    w["nginx_conf"].write_text(f"""# written by run_net_bench.py
{user}
daemon off;
master_process on;
worker_processes 2;
pid {prefix / 'nginx.pid'};
error_log {w['logs'] / 'nginx-error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 30s;
    keepalive_requests 1000;
    default_type application/octet-stream;
{temp}
    server {{
        listen 127.0.0.1:{http_port};
        root {w['t0tree']};
    }}{tls}
}}
""")
    return ["nginx", "-c", w["nginx_conf"], "-p", prefix, "-e", w["logs"] / "nginx-error.log"]


def write_configs(args, w, ports, pki):
    listen = [{"address": "127.0.0.1", "port": ports["t0_http"], "tls": False}]
    if pki:
        listen.append({"address": "127.0.0.1", "port": ports["t0_https"],
                       "tls_cert": str(pki["cert"]), "tls_key": str(pki["key"])})
    # settle_seconds at its maximum: the daemon publishes only when told to (sync-now), never in
    # the middle of a mutation.
    t0 = {"role": "tier0", "name": "origin", "tree": "t0/tree", "state_dir": "t0/state",
          "layout": "{release}/{repo}/{arch}", "index_files": ["APKINDEX.tar.gz"],
          "source": {"dir": str(w["src"]), "settle_seconds": 86400}, "signing_key": "origin.key",
          "guard": {"max_delete_ratio": 0.5}, "listen": listen}
    w["t0conf"].write_text(json.dumps(t0, indent=1))
    urls = {"https": f"https://127.0.0.1:{ports.get('t0_https')}/",
            "http": f"http://127.0.0.1:{ports['t0_http']}/",
            "file": "file://" + str(w["t0tree"])}
    for t in args.transports:
        upstream = {"url": urls[t]}
        if t == "https":
            upstream["ca_file"] = str(pki["ca"])
        m = {"role": "mirror", "name": f"m-{t}", "tree": f"m-{t}/tree", "state_dir": f"m-{t}/state",
             "upstream": upstream, "trusted_keys": ["origin.pub"], "guard": {"max_delete_ratio": 0.5}}
        (w["root"] / f"m-{t}.json").write_text(json.dumps(m, indent=1))


def setup(args, w, run, daemons, results):
    if w["root"].exists():
        if not (w["root"] / MARKER).exists() and any(w["root"].iterdir()):
            raise SystemExit(f"{w['root']} is not empty and not a benchmark workdir; refusing to use it")
        # Set aside, deleted at the end: see wipe() in sync_bench for why not now.
        w["old"] = w["root"].with_name(f"{w['root'].name}.old-{os.getpid()}")
        w["root"].rename(w["old"])
        atexit.register(shutil.rmtree, w["old"], ignore_errors=True)
    w["root"].mkdir(parents=True)
    (w["root"] / MARKER).touch()
    w["logs"].mkdir()
    est = args.packages * 1.72e6 * args.size_scale          # mean of the log-uniform sizes
    # The source, then per initial round the rsync copy and one tree per mirror (see wipe()).
    copies = 1 + args.initial_repeat * (1 + len(args.transports))
    free = shutil.disk_usage(w["root"]).free
    if free < copies * est + 1e9:
        raise SystemExit(f"need about {copies * est / 1e9:.1f} GB free in {w['root']}, have {free / 1e9:.1f} GB; "
                         "lower --size-scale or --packages")
    print(f"generating {args.packages} packages at size-scale {args.size_scale} ...", flush=True)
    gen_tree.main(["generate", str(w["src"]), "--packages", str(args.packages),
                   "--size-scale", str(args.size_scale), "--seed", str(args.seed)])
    run.run([w["ctl"], "keygen", "--out", w["root"] / "origin"], "keygen")
    pki = make_pki(run, w["root"] / "pki") if "https" in args.transports else None
    if "https" in args.transports and not pki:
        args.transports = [t for t in args.transports if t != "https"]
        results["notes"].append("TLS unavailable (openssl CLI): https rows skipped")
    if not args.transports:
        raise SystemExit("no transport left to measure")
    names = ["t0_http", "t0_https", "rsyncd", "nginx_http", "nginx_https"]
    ports = dict(zip(names, (free_port() for _ in names)))
    w["ports"], w["pki"] = ports, pki
    write_configs(args, w, ports, pki)

    # tier0: start it, then make it publish, and wait until its status shows a serial.
    print("tier0 daemon: first publish ...", flush=True)
    daemons.start("tier0", [w["d"], "--config", w["t0conf"]])
    wait_port(ports["t0_http"], daemons, "tier0", 30)
    start = time.perf_counter()
    serial = publish(w, run, daemons, 0, args.timeout)
    results["tier0_first_publish_s"] = time.perf_counter() - start
    print(f"  serial {serial}, {results['tier0_first_publish_s']:.1f}s", flush=True)

    daemons.start("rsyncd", rsyncd_conf(w, ports["rsyncd"]))
    wait_port(ports["rsyncd"], daemons, "rsyncd", 30)
    if not args.no_wrk:
        daemons.start("nginx", nginx_conf(w, ports["nginx_http"], ports["nginx_https"], pki))
        wait_port(ports["nginx_http"], daemons, "nginx", 30)


def t0_status(w):
    with URLOPEN(f"http://127.0.0.1:{w['ports']['t0_http']}/.tiersync/v1/status", timeout=10) as r:
        return json.loads(r.read())


def publish(w, run, daemons, before, limit):
    """`tiersyncctl sync-now` (retried until the control socket answers), then waits until the
    tier0's status shows a serial above `before`; returns it."""
    deadline = time.monotonic() + limit
    while True:
        daemons.check("tier0")
        try:
            run.run([w["ctl"], "--config", w["t0conf"], "sync-now"], "t0-sync-now")
            break
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    while time.monotonic() < deadline:
        daemons.check("tier0")
        status = t0_status(w)
        if (status.get("serial") or 0) > before:
            return status["serial"]
        if status.get("held"):
            raise BenchError(f"tier0 holds partitions: {status['held']}")
        time.sleep(0.05)
    raise BenchError(f"tier0 did not publish a serial above {before} within {limit:.0f}s; "
                     f"last status {t0_status(w)}")


# ---------------------------------------------------------------------------------------------
# The measurements


def check_same(args, w, what):
    """The source, tier0's tree, every mirror and the rsync copy must agree (path, size, mtime)."""
    ref = tree_listing(w["src"])
    trees = {"t0tree": w["t0tree"], "rsync-copy": w["copy"]}
    trees.update({f"m-{t}": w["root"] / f"m-{t}" / "tree" for t in args.transports})
    problems = []
    for name, path in trees.items():
        diff = set(ref.items()) ^ set(tree_listing(path).items())
        if diff:
            problems.append(f"{name} differs from the source after {what}: {len(diff)} "
                            f"(path, size, mtime) differences, e.g. {sorted(diff)[:3]}")
    for p in problems:
        print("WARNING:", p, flush=True)
    return problems


def sync_bench(args, w, run, daemons, results):
    t0_pid, rsyncd_pid = daemons.pid("tier0"), daemons.pid("rsyncd")
    idle = results["tier0_idle_cpu_per_s"]

    def timed(cmd, label, server_cpu):
        """Wall time of cmd, with its own CPU (client) and the serving daemon's (server)."""
        for name in ("tier0", "rsyncd"):
            daemons.check(name)
        s0, c0 = server_cpu(), children_cpu()
        r = run.run(cmd, label)
        r["client_cpu"] = children_cpu() - c0
        r["server_cpu"] = max(0.0, server_cpu() - s0)    # the idle correction may overshoot a little
        return r

    def mirror(t, label):
        def tier0_cpu():
            # Less the tier0's idle cost (watching its source) over the same time.
            return cpu_seconds(t0_pid) - idle * time.perf_counter()
        cpu = tier0_cpu if t != "file" else (lambda: 0.0)
        return lambda: timed([w["d"], "--config", w["root"] / f"m-{t}.json", "--once"], f"mirror-{t}-{label}", cpu)

    def rsync_cpu():
        wait_reaped(rsyncd_pid)
        return cpu_seconds(rsyncd_pid, children=True)

    rsync = lambda label: lambda: timed(  # noqa: E731
        RSYNC + [f"rsync://127.0.0.1:{w['ports']['rsyncd']}/src/", f"{w['copy']}/"], f"rsync-{label}", rsync_cpu)
    sides = list(args.transports) + ["rsync"]
    rows = results["rows"]

    def record(kind, samples, note=""):
        for t in args.transports:
            ts, rs = samples[t], samples["rsync"]
            rows[f"{kind}_{t}"] = {
                "kind": kind, "transport": t, "note": note,
                "tiersync_s": median(ts), "rsync_s": median(rs),
                "tiersync_samples": [r["s"] for r in ts], "rsync_samples": [r["s"] for r in rs],
                "tiersync_client_cpu": statistics.median(r["client_cpu"] for r in ts),
                "tiersync_server_cpu": statistics.median(r["server_cpu"] for r in ts),
                "rsync_client_cpu": statistics.median(r["client_cpu"] for r in rs),
                "rsync_server_cpu": statistics.median(r["server_cpu"] for r in rs)}

    def rounds(label, count, before_each=None):
        samples = {s: [] for s in sides}
        for i in range(count):
            if before_each:
                before_each(i)
            fns = [mirror(t, label) if t != "rsync" else rsync(label) for t in sides]
            for s, r in zip(sides, rotate(i, fns)):
                samples[s].append(r)
        return samples

    # Initial sync: every repeat starts from an empty mirror (tree and state) and an empty copy.
    # The previous round's trees are moved aside, not deleted: on ext4 without a journal, creating
    # a file right after tens of thousands were deleted costs a scan past every inode freed in the
    # last 30 seconds (recently_deleted() in ext4's inode allocator). That made an initial sync
    # 2 to 3 times slower. The trash goes only after the last timed run (main()): deleted after
    # the initial rounds, it appeared to slow the busy rounds of the next 30 seconds instead.
    trash = w["trash"]

    def wipe(i):
        for path in [w["root"] / f"m-{t}" / sub for t in args.transports for sub in ("tree", "state")] + [w["copy"]]:
            if path.exists():
                dest = trash / str(i) / path.relative_to(w["root"])
                dest.parent.mkdir(parents=True, exist_ok=True)
                path.rename(dest)
    print(f"initial sync x{args.initial_repeat} ...", flush=True)
    record("initial", rounds("initial", args.initial_repeat, wipe))
    results["consistency"] += check_same(args, w, "initial sync")

    print(f"no-op x{args.repeat} ...", flush=True)
    rounds("noop-warm", 1)
    record("noop", rounds("noop", args.repeat))

    # Busy incremental: mutate the source, the tier0 publishes it (untimed), then every side
    # moves the same delta. One extra untimed round first.
    print(f"busy incremental x{args.repeat} ...", flush=True)
    changed = []

    def mutate(_i):
        n, _ = gen_tree.mutate_tree(w["src"], "busy", args.size_scale, args.seed)
        changed.append(n)
        publish(w, run, daemons, t0_status(w)["serial"], args.timeout)
    rounds("busy-warm", 1, mutate)
    record("busy", rounds("busy", args.repeat, mutate), f"{statistics.median(changed):.0f} packages replaced per round")
    results["consistency"] += check_same(args, w, "busy rounds")


def wrk_paths(tree, count):
    """The indexes, then the smallest packages: URL paths of `count` small files of the tree."""
    indexes, packages = [], []
    for dirpath, dirnames, filenames in os.walk(tree):
        if dirpath == str(tree) and ".tiersync" in dirnames:
            dirnames.remove(".tiersync")
        for name in filenames:
            path = os.path.join(dirpath, name)
            item = (os.lstat(path).st_size, os.path.relpath(path, tree))
            (indexes if name == "APKINDEX.tar.gz" else packages).append(item)
    chosen = sorted(indexes)[:count] + sorted(packages)[:max(0, count - len(indexes))]
    return ["/" + urllib.parse.quote(rel) for _, rel in chosen], [size for size, _ in chosen]


def parse_wrk(text):
    out = {"non2xx": 0, "socket_errors": 0}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            out["rps"] = float(words[1])
        elif "requests in" in line:
            out["requests"] = int(words[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            out["non2xx"] = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            out["socket_errors"] = sum(int(x.rstrip(",")) for x in words[3::2])
        elif line.strip().startswith("Latency") and len(words) >= 2:
            out["latency_avg"] = words[1]
    return out


def wrk_bench(args, w, daemons, results):
    paths, sizes = wrk_paths(w["t0tree"], WRK_FILES)
    lua = w["root"] / "rotate.lua"
    lua.write_text("-- written by run_net_bench.py: each request asks for the next of these paths\n"
                   "local paths = {\n" + "".join(f'  "{p}",\n' for p in paths) + "}\n"
                   "local i = 0\n"
                   "request = function()\n"
                   "  i = i + 1\n"
                   "  return wrk.format(\"GET\", paths[(i % #paths) + 1])\n"
                   "end\n")
    results["wrk_files"] = {"count": len(paths), "bytes_min": min(sizes), "bytes_max": max(sizes),
                            "bytes_median": statistics.median(sizes)}
    # The files must answer 200 from both servers before any rate means anything.
    for p in paths[:3] + paths[-3:]:
        for port in (w["ports"]["t0_http"], w["ports"]["nginx_http"]):
            with URLOPEN(f"http://127.0.0.1:{port}{p}", timeout=10) as r:
                if r.status != 200:
                    raise BenchError(f"GET {p} on port {port}: {r.status}")
    schemes = [s for s in ("http", "https") if s == "http" or w["pki"]]
    servers = {"tiersync": {"http": w["ports"]["t0_http"], "https": w["ports"]["t0_https"]},
               "nginx": {"http": w["ports"]["nginx_http"], "https": w["ports"]["nginx_https"]}}

    def one(server, scheme, seconds, label):
        daemons.check("tier0"), daemons.check("nginx")
        url = f"{scheme}://127.0.0.1:{servers[server][scheme]}/"
        cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.wrk_connections}", f"-d{seconds}s",
               "--timeout", "5s", "-s", str(lua), url]
        log = w["logs"] / f"wrk-{server}-{scheme}-{label}.log"
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                           stdin=subprocess.DEVNULL)
        log.write_text(r.stdout + r.stderr)
        parsed = parse_wrk(r.stdout)
        if r.returncode != 0 or "rps" not in parsed:
            raise BenchError(f"wrk against {server} {scheme} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        if parsed["non2xx"] or parsed["socket_errors"]:
            results["notes"].append(f"wrk {server} {scheme} {label}: {parsed['non2xx']} non-2xx responses, "
                                    f"{parsed['socket_errors']} socket errors")
        return parsed

    for scheme in schemes:
        print(f"wrk {scheme} x{args.wrk_repeat} ({args.wrk_duration}s each) ...", flush=True)
        one("tiersync", scheme, 1, "warm"), one("nginx", scheme, 1, "warm")
        ts, ng = [], []
        for i in range(args.wrk_repeat):
            a, b = rotate(i, [lambda: one("tiersync", scheme, args.wrk_duration, str(i)),
                              lambda: one("nginx", scheme, args.wrk_duration, str(i))])
            ts.append(a), ng.append(b)
        results["rows"][f"wrk_{scheme}"] = {
            "kind": "wrk", "transport": scheme,
            "tiersync_rps": median(ts, "rps"), "nginx_rps": median(ng, "rps"),
            "tiersync_samples": [r["rps"] for r in ts], "nginx_samples": [r["rps"] for r in ng],
            "tiersync_latency_avg": ts[-1].get("latency_avg"), "nginx_latency_avg": ng[-1].get("latency_avg")}


# ---------------------------------------------------------------------------------------------
# Report


def verdict(kind, ratio, main):
    """(target text, PASS/FAIL or '') of a row; targets apply to the main transport's rows."""
    if kind not in TARGETS or ratio is None or not main:
        return "", ""
    op, limit = TARGETS[kind]
    ok = ratio <= limit if op == "<=" else ratio >= limit
    return f"{op} {limit}", "PASS" if ok else "FAIL"


def report(args, info, results):
    info["load_end"] = os.getloadavg()
    tree = results["tree"]
    print()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Linux {info['kernel']}, {info['rsync']}; "
          f"load average {' '.join(f'{x:.2f}' for x in info['load_start_all'])} at start, "
          f"{' '.join(f'{x:.2f}' for x in info['load_end'])} at end")
    print(f"binary: {info['tiersyncd']}; {info['tools']}")
    print(f"tree: {tree['files']} files, {tree['bytes'] / 1e6:.1f} MB (size-scale {args.size_scale}); "
          f"N = {args.repeat} (initial: {args.initial_repeat}"
          f"{'' if args.no_wrk else f', wrk: {args.wrk_repeat} x {args.wrk_duration}s'}); "
          f"medians, warm page cache, loopback")
    print(f"rsync side: {' '.join(RSYNC)} rsync://127.0.0.1/src/ copy/   (rsync --daemon, same source)")
    main = args.transports[0]
    header = (f"{'measure':30} {'tiersync':>11} {'rsync':>11} {'ratio':>7} {'target':>8} {'':4}  "
              f"cpu s: tiersync client+server / rsync client+server")
    print(header)
    print("-" * len(header))
    titles = {"initial": "initial sync", "noop": "no-op", "busy": "busy incremental"}
    for kind in ("initial", "noop", "busy"):
        for t in args.transports:
            r = results["rows"].get(f"{kind}_{t}")
            if r is None:
                continue
            ratio = r["tiersync_s"] / r["rsync_s"] if r["rsync_s"] else None
            target, result = verdict(kind, ratio, t == main)
            r.update(ratio=ratio, target=target or None, result=result or None)
            print(f"{titles[kind] + ', ' + t:30} {r['tiersync_s']:>9.3f} s {r['rsync_s']:>9.3f} s "
                  f"{ratio:>7.3f} {target:>8} {result:4}  "
                  f"{r['tiersync_client_cpu']:.2f}+{r['tiersync_server_cpu']:.2f} / "
                  f"{r['rsync_client_cpu']:.2f}+{r['rsync_server_cpu']:.2f}"
                  f"{'  ' + r['note'] if r['note'] and t == main else ''}")
    wrk_rows = [results["rows"][k] for k in ("wrk_http", "wrk_https") if k in results["rows"]]
    if wrk_rows:
        f = results["wrk_files"]
        print(f"{'small files, keep-alive':30} {'tiersyncd':>11} {'nginx':>11} {'ratio':>7} {'target':>8}       "
              f"wrk -t{args.wrk_threads} -c{args.wrk_connections}, {f['count']} files of "
              f"{f['bytes_min']}..{f['bytes_max']} B (median {f['bytes_median']:.0f})")
        for r in wrk_rows:
            ratio = r["tiersync_rps"] / r["nginx_rps"]
            target, result = verdict("wrk", ratio, True)
            r.update(ratio=ratio, target=target, result=result)
            print(f"{'  requests/s, ' + r['transport']:30} {r['tiersync_rps']:>11.0f} {r['nginx_rps']:>11.0f} "
                  f"{ratio:>7.3f} {target:>8} {result:4}  "
                  f"mean latency {r['tiersync_latency_avg']} / {r['nginx_latency_avg']}")
    print(f"tier0's first publish (daemon, sync-now to serial): {results['tier0_first_publish_s']:.1f} s; "
          f"its idle CPU (watching the source): {100 * results['tier0_idle_cpu_per_s']:.1f}% of a core, "
          f"subtracted from the server CPU above")
    for note in results["notes"] + results["consistency"] + results["errors"]:
        print("note:", note)


def interrupted(_signum, _frame):
    """SIGTERM: unwind like Ctrl-C, so the daemons are stopped and the workdir is reported."""
    raise KeyboardInterrupt


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default="/tmp/tiersync-netbench")
    p.add_argument("--size-scale", type=float, default=0.01, help="file size multiplier (0.01: ~0.5 GB per copy)")
    p.add_argument("--packages", type=int, default=29000)
    p.add_argument("--repeat", type=int, default=5, help="timed runs of the no-op and the busy incremental")
    p.add_argument("--initial-repeat", type=int, default=3, help="timed initial syncs")
    p.add_argument("--transports", default="https,http",
                   help="the mirror's upstream, comma-separated from https,http,file; the first one is "
                        "judged against the targets (https when TLS works)")
    p.add_argument("--wrk-repeat", type=int, default=3)
    p.add_argument("--wrk-duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--no-wrk", action="store_true", help="skip the request-rate comparison with nginx")
    p.add_argument("--smoke", action="store_true",
                   help="a quick check that everything runs: --packages 2000 --repeat 1 --initial-repeat 1 "
                        "--wrk-repeat 1 --wrk-duration 2")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bin-dir", default=str(HERE.parents[1] / "build-bench" / "daemon"))
    p.add_argument("--timeout", type=float, default=900, help="seconds before one command is killed")
    p.add_argument("--json-out")
    p.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = p.parse_args()
    if args.smoke:
        args.packages, args.repeat, args.initial_repeat, args.wrk_repeat, args.wrk_duration = 2000, 1, 1, 1, 2
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not args.transports or any(t not in TRANSPORTS for t in args.transports):
        raise SystemExit(f"--transports: a comma-separated list of {', '.join(TRANSPORTS)}")
    if min(args.repeat, args.initial_repeat, args.wrk_repeat, args.wrk_duration) < 1:
        raise SystemExit("--repeat, --initial-repeat, --wrk-repeat and --wrk-duration must be >= 1")
    root = Path(args.workdir).resolve()
    w = {"root": root, "old": None, "src": root / "src", "t0tree": root / "t0" / "tree", "copy": root / "rsync-copy",
         "trash": root / "trash", "logs": root / "logs", "t0conf": root / "t0.json",
         "rsyncd_conf": root / "rsyncd.conf", "nginx_conf": root / "nginx.conf",
         "d": str(Path(args.bin_dir) / "tiersyncd"), "ctl": str(Path(args.bin_dir) / "tiersyncctl")}
    for exe in (w["d"], w["ctl"]):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe} not found: ninja -C build-bench tiersyncd tiersyncctl, or pass --bin-dir")
    for tool in ["rsync"] + ([] if args.no_wrk else ["wrk", "nginx"]):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (--no-wrk skips wrk and nginx)")
    signal.signal(signal.SIGTERM, interrupted)
    info = machine_info()
    info["tools"] = tool_versions()
    info["load_start_all"] = os.getloadavg()
    st = os.stat(w["d"])
    info["tiersyncd"] = f"{w['d']} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(st.st_mtime))}, {st.st_size} bytes)"
    results = {"machine": info, "rows": {}, "notes": [], "consistency": [], "errors": [],
               "params": {k: getattr(args, k) for k in ("size_scale", "packages", "repeat", "initial_repeat",
                                                        "transports", "wrk_repeat", "wrk_duration",
                                                        "wrk_threads", "wrk_connections", "seed")},
               "rsync_command": RSYNC}
    run = Runner(w["logs"], args.timeout)
    daemons = Daemons(w["logs"])       # they log into w["logs"], which setup() makes first
    status = 0
    try:
        setup(args, w, run, daemons, results)
        files = tree_listing(w["src"])
        results["tree"] = {"files": len(files), "bytes": sum(size for size, _ in files.values())}
        cpu0, t = cpu_seconds(daemons.pid("tier0")), time.perf_counter()
        time.sleep(3)
        results["tier0_idle_cpu_per_s"] = (cpu_seconds(daemons.pid("tier0")) - cpu0) / (time.perf_counter() - t)
        sync_bench(args, w, run, daemons, results)
        if not args.no_wrk:
            wrk_bench(args, w, daemons, results)
    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        results["errors"].append(str(e).split("\n")[0])
        status = 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        results["errors"].append("interrupted")
        status = 130
    finally:
        daemons.stop_all()
        shutil.rmtree(w["trash"], ignore_errors=True)
    if "tree" in results and "tier0_idle_cpu_per_s" in results:
        report(args, info, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.keep or status:
        print(f"workdir kept: {root} (command and daemon logs in {w['logs']})")
    elif root.exists() and (root / MARKER).exists():
        shutil.rmtree(root)
    return status


if __name__ == "__main__":
    sys.exit(main())
