#!/usr/bin/env python3
"""How much of the machine's idle time is a core idling while another core
has a task waiting to run, from a `perf sched record` file.

On the shared development machine the chain leaves the cores idle about
twice as long as the one-process reference (docs/bench/performance-log.md).
Idle time while no task is runnable anywhere is the closed loop waiting on
itself; idle time while a runnable task waits on another core's queue is
the kernel not moving it (an idle core does not pull work when its idle
periods are short), which no change in the services reaches.

    perf sched record -o FILE -- sleep 2
    scripts/idle_imbalance.py FILE   # prints: idle_percent imbalanced_percent

Both are shares of the cores' total time over the recording. The replay
follows sched_waking (a task becomes runnable on its target core),
sched_migrate_task (a runnable task moves) and sched_switch (the next task
runs; a preempted one stays queued, a sleeping one leaves).
"""
import re
import subprocess
import sys
from collections import defaultdict

EVENT = re.compile(r"\s*\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)")


def field(trace, name):
    return int(re.search(rf"\b{name}=(\d+)", trace)[1])


def shares(lines):
    """(idle share, imbalanced idle share) of all cores' time, in percent."""
    running = {}  # core -> pid running there (0: the idle task)
    queued = defaultdict(set)  # core -> runnable pids waiting there
    queued_on = {}  # pid -> core whose queue holds it
    idle = imbalanced = 0.0
    first = last = None
    for line in lines:
        m = EVENT.match(line)
        if not m:
            continue
        core, t, event, trace = int(m[1]), float(m[2]), m[3], m[4]
        if last is not None:
            dt = t - last
            for c, pid in running.items():
                if pid == 0:
                    idle += dt
                    if any(queued[o] for o in running if o != c):
                        imbalanced += dt
        first = t if first is None else first
        last = t
        if event == "sched_waking":
            pid = field(trace, "pid")
            if pid in queued_on:
                queued[queued_on.pop(pid)].discard(pid)
            if pid not in running.values():
                target = field(trace, "target_cpu")
                queued[target].add(pid)
                queued_on[pid] = target
        elif event == "sched_migrate_task":
            pid = field(trace, "pid")
            if pid in queued_on:
                queued[queued_on[pid]].discard(pid)
                queued_on[pid] = field(trace, "dest_cpu")
                queued[queued_on[pid]].add(pid)
        elif event == "sched_switch":
            prev, nxt = field(trace, "prev_pid"), field(trace, "next_pid")
            if prev != 0 and re.search(r"prev_state=R", trace):
                queued[core].add(prev)
                queued_on[prev] = core
            if nxt in queued_on:
                queued[queued_on.pop(nxt)].discard(nxt)
            running[core] = nxt
    total = (last - first) * max(len(running), 1) if first is not None else 0
    if total <= 0:
        raise SystemExit("no scheduler events in the recording")
    return 100 * idle / total, 100 * imbalanced / total


def main():
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} PERF_SCHED_DATA")
    script = subprocess.run(
        ["perf", "script", "-i", sys.argv[1], "-F", "cpu,time,event,trace"],
        capture_output=True, text=True, check=True,
    )
    idle, imbalanced = shares(script.stdout.splitlines())
    print(f"{idle:.1f} {imbalanced:.1f}")


if __name__ == "__main__":
    main()
