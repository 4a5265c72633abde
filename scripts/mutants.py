#!/usr/bin/env python3
"""Mutation check of the protocol tests of mm and of the scheduler (`make mutants`).

Each mutation is a realistic one-line (or one-block) protocol bug: a dropped re-check, a weaker
ordering, a plain store for a compare-and-swap, a free before the flush or the grace period. The
script applies one mutation at a time to a copy of its file, runs only the tests that should
catch it (a host test filter, or a loom filter), restores the file, and reports caught / MISSED.
A mutation whose original text is no longer in the file is reported STALE (update the list), one
that does not compile is reported BROKEN; both count as failures, like a miss.

Usage: scripts/mutants.py [--list] [--runs N] [--all-tests] [NAME ...]
  NAME     run only the mutations with these names (default: all)
  --all-tests  run all of mm's host tests (or all loom models) instead of each mutation's filter
  --runs   run each mutation's tests N times; "some runs" in the report means it was caught in
           fewer than N of them (a test that catches a bug only sometimes)
Environment: CARGO_TARGET_DIR (host builds; loom builds use $CARGO_TARGET_DIR/loom), and
MUTANT_TIMEOUT (seconds per test run, default 900; a run that times out counts as caught,
reported as such: the suite's deadlines turn hangs into failures).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    # ("host", filter) runs `cargo test -p mm --lib <filter>`; ("host-release", filter) the same
    # in release; ("loom", filter) the loom models matching <filter>; ("loom-sched", filter) the
    # scheduler's loom models (crate sched-core) matching <filter>.
    kind: str
    test_filter: str
    why: str


MUTANTS = [
    Mutant(
        "pte-table-freed-before-grace-period",
        "mm/src/pgtable/zap.rs",
        "            mem.rcu().call_rcu(Box::new(move || {\n"
        "                for t in tables {\n"
        "                    m.count(Event::PgtableFree);\n"
        "                    m.frames().put(t);\n"
        "                }\n"
        "            }));\n",
        "            (Box::new(move || {\n"
        "                for t in tables {\n"
        "                    m.count(Event::PgtableFree);\n"
        "                    m.frames().put(t);\n"
        "                }\n"
        "            }) as Box<dyn FnOnce()>)();\n",
        "host", "pgtable::",
        "an emptied PTE table freed at once instead of through call_rcu",
    ),
    Mutant(
        "frames-freed-before-shootdown",
        "mm/src/pgtable/zap.rs",
        "        if self.needs_shootdown() {\n"
        "            let pages = ((self.range.end - self.range.start) / 4096) as usize;\n"
        "            mem.platform()\n"
        "                .shootdown(cpus, VirtAddr::new(self.range.start), pages);\n"
        "        }\n"
        "        for f in self.frames {\n"
        "            mem.frames().put(f);\n"
        "        }\n",
        "        for &f in &self.frames {\n"
        "            mem.frames().put(f);\n"
        "        }\n"
        "        if self.needs_shootdown() {\n"
        "            let pages = ((self.range.end - self.range.start) / 4096) as usize;\n"
        "            mem.platform()\n"
        "                .shootdown(cpus, VirtAddr::new(self.range.start), pages);\n"
        "        }\n",
        "host", "tests::tlb",
        "zapped frames freed before the TLB shootdown",
    ),
    Mutant(
        "wp-copy-set-before-shootdown",
        "mm/src/fault/anon.rs",
        "    let _ = pte.take(addr);\n"
        "    mem.platform().shootdown(mm.cpus(), VirtAddr::new(addr), 1);\n"
        "    pte.set(addr, Pte::new(new.into_raw(), flags));\n",
        "    let _ = pte.take(addr);\n"
        "    pte.set(addr, Pte::new(new.into_raw(), flags));\n"
        "    mem.platform().shootdown(mm.cpus(), VirtAddr::new(addr), 1);\n",
        "host", "fault::tests::cow",
        "copy-on-write sets the new PTE before the old translation is shot down",
    ),
    Mutant(
        "fork-parent-vma-not-write-locked",
        "mm/src/ops/fork.rs",
        "            if lock {\n",
        "            if lock && false {\n",
        "host", "fault_vs_dup_mmap_loses_no_write",
        "dup_mmap copies a parent VMA's pages without write-locking it (Linux 6.4)",
    ),
    Mutant(
        "exit-mmap-leaves-upper-tables",
        "mm/src/ops/exit.rs",
        "        self.page_tables().free_user_tables(&g, &mut zap);\n",
        "",
        "host", "an_exited_child_keeps_only_its_root",
        "exit_mmap frees the PTE tables but leaves the PDs and PDPTs of an exited process",
    ),
    Mutant(
        "fork-parent-pte-left-writable",
        "mm/src/ops/fork.rs",
        "                while old.writable() {\n",
        "                while old.writable() && false {\n",
        "host", "fork",
        "dup_mmap shares a frame without write-protecting the parent's PTE",
    ),
    Mutant(
        "fork-no-tlb-flush",
        "mm/src/ops/fork.rs",
        "        if let Some(r) = wp {\n",
        "        if let Some(r) = wp.filter(|_| false) {\n",
        "host", "fork",
        "dup_mmap releases the parent's lock without shooting down the write-protected PTEs",
    ),
    Mutant(
        "wp-reuse-ignores-sharing",
        "mm/src/fault/anon.rs",
        "        if meta.mapcount() == 1 && meta.refcount() == 1 {\n",
        "        if meta.refcount() >= 1 {\n",
        "host", "fork",
        "do_wp_page reuses a frame another process still maps",
    ),
    Mutant(
        "spinlock-unlock-relaxed",
        "mm/src/sync/spinlock.rs",
        "self.lock.locked.store(false, Ordering::Release);",
        "self.lock.locked.store(false, Ordering::Relaxed);",
        "loom", "loom_spinlock",
        "the spinlock's release store weakened to relaxed",
    ),
    Mutant(
        "spinlock-acquire-relaxed",
        "mm/src/sync/spinlock.rs",
        ".compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)",
        ".compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)",
        "loom", "loom_spinlock",
        "the spinlock's acquire weakened to relaxed",
    ),
    Mutant(
        "install-cas-to-load-store",
        "mm/src/pgtable/install.rs",
        "slot.compare_exchange(0, new, Ordering::Release, Ordering::Acquire)",
        "slot.compare_exchange(slot.load(Ordering::Acquire), new, Ordering::Release, Ordering::Acquire)",
        "loom", "loom_pgtable_install",
        "the upper-level install overwrites whatever it loaded (a load and a store, no CAS)",
    ),
    Mutant(
        "install-publish-relaxed",
        "mm/src/pgtable/install.rs",
        "slot.compare_exchange(0, new, Ordering::Release, Ordering::Acquire)",
        "slot.compare_exchange(0, new, Ordering::Relaxed, Ordering::Acquire)",
        "loom", "loom_pgtable_install",
        "the install CAS does not publish the zeroed table (relaxed success)",
    ),
    Mutant(
        "install-fast-path-relaxed",
        "mm/src/pgtable/install.rs",
        "    let e = slot.load(Ordering::Acquire);\n",
        "    let e = slot.load(Ordering::Relaxed);\n",
        "loom", "loom_pgtable_install",
        "a CPU that finds the table installed walks into it without acquire",
    ),
    Mutant(
        "maple-root-publication-relaxed",
        "mm/src/maple/node.rs",
        "    root.store(word, Ordering::Release);\n",
        "    root.store(word, Ordering::Relaxed);\n",
        "loom", "loom_maple",
        "the maple tree publishes a new root with a relaxed store",
    ),
    Mutant(
        "maple-slot-publication-relaxed",
        "mm/src/maple/node.rs",
        "self.node().w[10 + i].store(child.0, Ordering::Release);",
        "self.node().w[10 + i].store(child.0, Ordering::Relaxed);",
        "loom", "loom_maple",
        "the maple tree publishes a new child with a relaxed store",
    ),
    Mutant(
        "vma-start-read-recheck-dropped",
        "mm/src/vma/lock.rs",
        "        if self.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq() {\n"
        "            self.end_read(mm);\n"
        "            return Err(StartReadError::Locked);\n"
        "        }\n"
        "        Ok(())\n",
        "        Ok(())\n",
        "loom", "loom_vma",
        "vma_start_read skips its re-check (4) of mm_lock_seq",
    ),
    Mutant(
        "mm-lock-seq-begin-relaxed",
        "mm/src/sync/mmap_lock.rs",
        "            .store(seq.wrapping_add(1), Ordering::Release);",
        "            .store(seq.wrapping_add(1), Ordering::Relaxed);",
        "loom", "loom_vma_start_read_after_two_write_periods",
        "the store that begins a mm_lock_seq write period is relaxed",
    ),
    Mutant(
        "vma-end-write-all-relaxed",
        "mm/src/sync/mmap_lock.rs",
        "            .store(self.seq.wrapping_add(1), Ordering::Release);",
        "            .store(self.seq.wrapping_add(1), Ordering::Relaxed);",
        "loom", "loom_vma",
        "vma_end_write_all unlocks the VMAs with a relaxed store",
    ),
    Mutant(
        "pte-offset-map-lock-recheck-dropped",
        "mm/src/pgtable/mod.rs",
        "            if pmd.load(Ordering::Relaxed) == e {\n",
        "            if true {\n",
        "host", "pgtable::",
        "pte_offset_map_lock does not re-check the PMD entry under the PTE lock",
    ),
    Mutant(
        "rewrite-detaches-before-tree-write",
        "mm/src/ops/rewrite.rs",
        "    if mm.tree().store_span(span, entries).is_err() {\n"
        "        return Err(TreeOutOfMemory);\n"
        "    }\n"
        "    for v in &removed {\n"
        "        v.lock().mark_detached(g);\n"
        "    }\n",
        "    for v in &removed {\n"
        "        v.lock().mark_detached(g);\n"
        "    }\n"
        "    if mm.tree().store_span(span, entries).is_err() {\n"
        "        return Err(TreeOutOfMemory);\n"
        "    }\n",
        "host", "tests::inject",
        "a VMA rewrite detaches the old VMAs before the tree write that may run out of memory",
    ),
    Mutant(
        "maple-failed-write-keeps-new-nodes",
        "mm/src/maple/write.rs",
        "        let n = NodeRef::alloc(leaf, end).ok_or(NoMemory)?;\n"
        "        self.fresh.push(n);\n",
        "        let n = NodeRef::alloc(leaf, end).ok_or(NoMemory)?;\n",
        "host", "tests::inject",
        "a tree write that runs out of memory does not free the nodes it already made",
    ),
    Mutant(
        "mremap-moved-ptes-not-shot-down",
        "mm/src/pgtable/move_ptes.rs",
        "        ZapFlush::moved(old, moved)\n",
        "        ZapFlush::moved(old, moved * 0)\n",
        "host-release", "tests::prop",
        "mremap frees and reuses the old range with other CPUs still caching its translations",
    ),
    Mutant(
        "downgrade-leaves-readers-queued",
        "mm/src/sync/rwsem/mod.rs",
        "            \"downgrade_write without down_write\"\n"
        "        );\n"
        "        if prev & WAITERS != 0 {\n"
        "            self.rwsem_wake();\n"
        "        }\n",
        "            \"downgrade_write without down_write\"\n"
        "        );\n"
        "        let _ = prev & WAITERS;\n",
        "host", "munmap_zaps_under_the_read_lock",
        "mmap_write_downgrade does not grant the queued readers: faults wait for munmap's zap",
    ),
    Mutant(
        "munmap-frees-a-shared-pte-table",
        "mm/src/ops/munmap.rs",
        "        .zap_detached(&r, range, |span| mm.vmas_in(span).is_empty());\n",
        "        .zap_detached(&r, range, |_| true);\n",
        "host", "munmap_keeps_a_pte_table",
        "munmap frees, under the read lock, an emptied PTE table a neighbouring VMA shares",
    ),
    Mutant(
        "mremap-moves-before-write-locking-the-vma",
        "mm/src/ops/mremap.rs",
        "            v.start_write(&g);\n",
        "            let _ = v;\n",
        "host", "a_move_waits_for_readers",
        "mremap moves the PTEs before write-locking the old VMA (a fault under its read lock runs on)",
    ),
    Mutant(
        "sched-wait-check-outside-lock",
        "sched-core/src/wait.rs",
        "        let mut q = self.waiters.lock();\n"
        "        if !cond() {\n"
        "            return false;\n"
        "        }\n",
        "        if !cond() {\n"
        "            return false;\n"
        "        }\n"
        "        let mut q = self.waiters.lock();\n",
        "loom-sched", "loom_sched_wake_vs_block",
        "a waiter checks its condition before it takes the wait-queue lock (lost wake-up)",
    ),
    Mutant(
        "sched-on-cpu-release-relaxed",
        "sched-core/src/schedule.rs",
        "        prev.sched().on_cpu.store(false, Ordering::Release);\n",
        "        prev.sched().on_cpu.store(false, Ordering::Relaxed);\n",
        "loom-sched", "loom_sched_preempted_thread_stolen",
        "finish_switch clears on_cpu without release: the next CPU may read a stale rsp",
    ),
    Mutant(
        "sched-preempted-not-requeued",
        "sched-core/src/schedule.rs",
        "    } else if !se.idle && se.cas_state(State::Running, State::Ready) {\n"
        "        rq.push(cur.clone(), irqs);\n"
        "    }\n",
        "    } else if !se.idle {\n"
        "        se.cas_state(State::Running, State::Ready);\n"
        "    }\n",
        "loom-sched", "loom_sched_preempted_thread_stolen",
        "schedule makes a preempted thread Ready but does not queue it (it is lost)",
    ),
    Mutant(
        "sched-exit-done-relaxed",
        "sched-core/src/task.rs",
        "        self.done.store(true, Ordering::Release);\n",
        "        self.done.store(true, Ordering::Relaxed);\n",
        "loom-sched", "loom_sched_exit_join",
        "exit publishes done without release: a joiner may read the exit code before it",
    ),
    Mutant(
        "sched-exit-state-not-set",
        "sched-core/src/schedule.rs",
        "    me.sched().set_state(State::Exited);\n",
        "",
        "loom-sched", "loom_sched_exit_join",
        "an exiting thread stays Running, so schedule queues it again",
    ),
    Mutant(
        "sched-steal-ignores-affinity",
        "sched-core/src/rq.rs",
        "            se.may_run_on(thief) && !se.on_cpu.load(Ordering::Acquire)\n",
        "            !se.on_cpu.load(Ordering::Acquire)\n",
        "loom-sched", "loom_sched_affinity_steal",
        "a stealer takes a thread its affinity keeps off the stealing CPU",
    ),
    Mutant(
        "sched-wake-ignores-affinity",
        "sched-core/src/wake.rs",
        "    let usable = |c: usize| se.may_run_on(c) && m.online(c);\n",
        "    let usable = |c: usize| m.online(c);\n",
        "loom-sched", "loom_sched_affinity_migrate",
        "a wake-up queues the thread on a CPU its affinity excludes",
    ),
    Mutant(
        "sched-migrating-thread-requeued",
        "sched-core/src/schedule.rs",
        "    if !se.idle && !se.may_run_on(cpu_id) {\n"
        "        migrates = se.cas_state(State::Running, State::Blocked);\n"
        "    } else if",
        "    if false {\n"
        "    } else if",
        "loom-sched", "loom_sched_affinity_migrate",
        "schedule requeues a preempted thread on its CPU although its affinity now excludes it",
    ),
    Mutant(
        "sched-migrating-thread-not-woken",
        "sched-core/src/schedule.rs",
        "        if migrates {\n",
        "        if false && migrates {\n",
        "loom-sched", "loom_sched_affinity_migrate",
        "finish_switch does not hand over a thread that left its CPU for its affinity (lost)",
    ),
    Mutant(
        "sched-block-cancel-ignores-stray-wake",
        "sched-core/src/wait.rs",
        "    let switch = blocked || !me.sched().cancel_blocked(irqs);\n",
        "    me.sched().cancel_blocked(irqs);\n"
        "    let switch = blocked;\n",
        "loom-sched", "loom_sched_block_cancelled_vs_stray_wake",
        "a cancelled block runs on although a stray wake-up made it Ready (it runs twice)",
    ),
]


def cargo_cmd(kind: str, test_filter: str, no_run: bool):
    env = dict(os.environ)
    target = env.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    if kind in ("loom", "loom-sched"):
        env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " --cfg loom").strip()
        env["CARGO_TARGET_DIR"] = os.path.join(target, "loom")
        crate = "mm" if kind == "loom" else "sched-core"
        cmd = ["cargo", "test", "-p", crate, "--release", "--lib"]
    else:
        env["CARGO_TARGET_DIR"] = target
        cmd = ["cargo", "test", "-p", "mm", "--lib"]
        if kind == "host-release":
            cmd.append("--release")
    if no_run:
        cmd.append("--no-run")
    else:
        cmd.append(test_filter)
    return cmd, env


def run(cmd, env, timeout, log):
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           timeout=timeout)
        return p.returncode
    except subprocess.TimeoutExpired:
        return None


def try_mutant(m: Mutant, runs: int, timeout: int, logdir: str, all_tests: bool):
    path = os.path.join(ROOT, m.file)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if source.count(m.original) != 1:
        return "STALE", f"original text found {source.count(m.original)} times"
    backup = path + ".mutant-backup"
    shutil.copy2(path, backup)
    log_path = os.path.join(logdir, m.name + ".log")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source.replace(m.original, m.replacement))
        with open(log_path, "w", encoding="utf-8") as log:
            cmd, env = cargo_cmd(m.kind, m.test_filter, no_run=True)
            if run(cmd, env, timeout, log) != 0:
                return "BROKEN", f"does not compile (see {log_path})"
            caught = timeouts = 0
            for _ in range(runs):
                test_filter = ("loom" if m.kind.startswith("loom") else "") if all_tests else m.test_filter
                cmd, env = cargo_cmd(m.kind, test_filter, no_run=False)
                rc = run(cmd, env, timeout, log)
                if rc is None:
                    timeouts += 1
                    caught += 1
                elif rc != 0:
                    caught += 1
    finally:
        # Restored with a new modification time: cargo must rebuild from the original (a copy
        # that kept the old time would leave the mutated build looking up to date).
        shutil.copyfile(backup, path)
        os.utime(path)
        os.remove(backup)
    note = f"{caught}/{runs} runs" + (f", {timeouts} by timeout" if timeouts else "")
    if caught == runs:
        return "caught", note
    if caught:
        return "some runs", note
    return "MISSED", note


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--all-tests", action="store_true")
    ap.add_argument("--kind", choices=sorted({m.kind for m in MUTANTS}),
                    help="only the mutations whose tests are of this kind")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS
              if (not args.names or m.name in args.names) and (not args.kind or m.kind == args.kind)]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        sys.exit(f"unknown mutations: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.name:40} {m.kind:10} {m.test_filter:45} {m.why}")
        return
    timeout = int(os.environ.get("MUTANT_TIMEOUT", "900"))
    logdir = tempfile.mkdtemp(prefix="mm-mutants-")
    results = []
    for m in chosen:
        print(f"[{len(results) + 1}/{len(chosen)}] {m.name} ({m.kind} {m.test_filter}) ...",
              flush=True)
        verdict, note = try_mutant(m, args.runs, timeout, logdir, args.all_tests)
        print(f"    {verdict}: {note}", flush=True)
        results.append((m, verdict, note))
    print()
    print(f"{'mutation':40} {'caught by':55} verdict")
    for m, verdict, note in results:
        print(f"{m.name:40} {m.kind + ' ' + m.test_filter:55} {verdict} ({note})")
    bad = [m.name for m, v, _ in results if v != "caught"]
    print(f"\n{len(results) - len(bad)} of {len(results)} caught on every run; logs in {logdir}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
