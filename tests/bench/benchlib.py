"""Pieces shared by the tiersync benchmarks (run_bench.py, run_scale_bench.py, ...).

Runner times one command (and, on request, takes its peak RSS from GNU time); the workdir
helpers refuse to wipe a folder that is not a benchmark's; node_configs writes the tier0 and
file:// mirror configurations every benchmark starts from.
"""
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from pathlib import Path

MARKER = ".tiersync-bench-workdir"
TIME = shutil.which("time", path="/usr/bin:/bin")       # GNU time, for peak RSS
RSYNC = ["rsync", "-a", "--delete"]


class BenchError(Exception):
    pass


class Runner:
    """Runs one command, timing it and taking its peak RSS from wait4."""

    def __init__(self, logdir, timeout):
        self.logdir, self.timeout, self.count = logdir, timeout, 0

    def run(self, cmd, label, ok=(0,), rss=False):
        """rss=True: run under GNU time for the peak RSS.  wait4 from Python can't give it:
        a vfork'd child's ru_maxrss starts at the parent's (this interpreter's) RSS.
        The wrapper costs ~2-3 ms, so timed runs are not wrapped."""
        self.count += 1
        log = self.logdir / f"{self.count:04d}-{label}.log"
        rss_file = self.logdir / f"{self.count:04d}-{label}.rss"
        if rss and TIME:
            cmd = [TIME, "-f", "%M", "-o", str(rss_file)] + list(cmd)
        os.sync()      # nothing dirty left for the next command's fsync/syncfs to pay for
        with open(log, "wb") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
            timer = threading.Timer(self.timeout, os.killpg, (proc.pid, 9))   # the wrapper's child too
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            seconds = time.perf_counter() - start
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if rc not in ok:
            tail = log.read_text(errors="replace")[-4000:]
            raise BenchError(f"{label}: `{' '.join(map(str, cmd))}` exited {rc} "
                             f"after {seconds:.2f}s\n--- output ({log}) ---\n{tail}")
        peak = None
        if rss and TIME:
            lines = [ln for ln in rss_file.read_text().splitlines() if ln.strip()]
            peak = int(lines[-1])
        return {"s": seconds, "rss_kb": peak, "rc": rc, "log": str(log)}


def machine_info():
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rsync_v = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "kernel": platform.release(),
            "rsync": " ".join(rsync_v.split()), "load_start": os.getloadavg()[0]}


def binary_info(path):
    st = os.stat(path)
    return f"{path} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(st.st_mtime))}, {st.st_size} bytes)"


def tree_listing(root):
    """{relpath: (size, mtime)} of a tree, .tiersync/ excluded."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".tiersync" in dirnames:
            dirnames.remove(".tiersync")
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_size, int(st.st_mtime))
    return out


def tree_stats(root):
    listing = tree_listing(root)
    return len(listing), sum(size for size, _ in listing.values())


def trees_differ(ref_root, other_root):
    """None when the two trees list the same (path, size, mtime), else a one-line summary."""
    ref, other = tree_listing(ref_root), tree_listing(other_root)
    if ref == other:
        return None
    diff = set(ref.items()) ^ set(other.items())
    return f"{len(diff)} (path, size, mtime) differences, e.g. {sorted(diff)[:3]}"


def fresh_workdir(root):
    """Empties root (only if it is a benchmark's workdir) and marks it as one."""
    if root.exists():
        if not (root / MARKER).exists() and any(root.iterdir()):
            raise SystemExit(f"{root} is not empty and not a benchmark workdir; refusing to use it")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).touch()


def remove_workdir(root):
    if root.exists() and (root / MARKER).exists():
        shutil.rmtree(root)


def check_binaries(*exes):
    for exe in exes:
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe} not found: ninja -C build tiersyncd tiersyncctl")
    if not shutil.which("rsync"):
        raise SystemExit("rsync not found")


def node_configs(w, run):
    """An origin key, a tier0 publishing w["src"] into t0/tree and a mirror of it over file://
    (w: root, src, t0tree, t0conf, mconf, ctl)."""
    run.run([w["ctl"], "keygen", "--out", str(w["root"] / "origin")], "keygen")
    t0 = {"role": "tier0", "name": "origin", "tree": "t0/tree", "state_dir": "t0/state",
          "layout": "{release}/{repo}/{arch}", "index_files": ["APKINDEX.tar.gz"],
          "source": {"dir": str(w["src"]), "settle_seconds": 0}, "signing_key": "origin.key"}
    m1 = {"role": "mirror", "name": "m1", "tree": "m1/tree", "state_dir": "m1/state",
          "upstream": {"url": "file://" + str(w["t0tree"])}, "trusted_keys": ["origin.pub"],
          "guard": {"max_delete_ratio": 0.5}}
    w["t0conf"].write_text(json.dumps(t0, indent=1))
    w["mconf"].write_text(json.dumps(m1, indent=1))


def workdir_paths(root, bin_dir):
    """The paths every file:// benchmark uses below its workdir."""
    return {"root": root, "src": root / "src", "t0tree": root / "t0" / "tree", "mtree": root / "m1" / "tree",
            "copy": root / "rsync-copy", "logs": root / "logs", "t0conf": root / "t0.json",
            "mconf": root / "m1.json", "d": str(Path(bin_dir) / "tiersyncd"),
            "ctl": str(Path(bin_dir) / "tiersyncctl")}
