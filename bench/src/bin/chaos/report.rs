//! The run's Markdown report (printed and written under `--out-dir`), and
//! the UTC time formatting the fault log and file names use (std has no
//! calendar, and one small function beats a date crate for this).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::checks::{Check, Figures};
use crate::faults::kinds;
use crate::stats::{Tally, get};

/// `+12.345s`: time since the start of the run.
pub fn elapsed(d: Duration) -> String {
    format!("+{:.3}s", d.as_secs_f64())
}

/// (year, month, day, hour, minute, second, millisecond) of now, in UTC.
fn utc_now() -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    // Days to civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = secs % 86_400;
    (year, month, day, s / 3600, s / 60 % 60, s % 60, since.subsec_millis())
}

/// `12:34:56.789Z`, for log lines.
pub fn utc_clock() -> String {
    let (_, _, _, h, m, s, ms) = utc_now();
    format!("{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// `20250101T123456Z`, for file names and run ids.
pub fn utc_stamp() -> String {
    let (y, mo, d, h, m, s, _) = utc_now();
    format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z")
}

/// `2025-01-01 12:34:56Z`, for the report's header.
pub fn utc_iso() -> String {
    let (y, mo, d, h, m, s, _) = utc_now();
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}Z")
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn opt(v: Option<i64>) -> String {
    v.map_or("unreadable".into(), |v| v.to_string())
}

fn client_row(out: &mut String, kind: &str, tally: &Tally, stored: Option<i64>) {
    let _ = writeln!(
        out,
        "| {kind} | {} | {} | {} | {} | {} |",
        tally.requests(),
        tally.ok(),
        tally.failed(),
        opt(stored),
        tally.summary()
    );
}

pub fn render(f: &Figures, checks: &[Check]) -> String {
    let stats = &f.load.stats;
    let pass = checks.iter().all(|c| c.pass);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# tally chaos soak — {}\n", f.started_utc);
    let _ = writeln!(w, "**Result: {}** ({} of {} checks passed)\n", verdict(pass), passed(checks), checks.len());
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| store | {:?} |", f.store);
    let _ = writeln!(w, "| fault phase | {} s |", f.seconds);
    let _ = writeln!(w, "| clean phase | {} s |", f.clean_seconds);
    let _ = writeln!(w, "| seed | {} (repeat with `--seed {}`) |", f.seed, f.seed);
    let _ = writeln!(w, "| run id | {} |", f.run_id);
    let recovery = f.recovery.map_or("not within the bound".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    let _ = writeln!(w, "| recovery after the faults | {recovery} |");
    let _ = writeln!(w, "| wall time | {:.0} s |\n", f.wall.as_secs_f64());

    let _ = writeln!(
        w,
        "## Faults\n\n| kind | injected | failed | writers' failed requests until the next fault |\n|---|---:|---:|---:|"
    );
    let after = |kind| f.writer_failures_after.get(&kind).copied().unwrap_or(0);
    for &kind in kinds(f.store) {
        let of_kind: Vec<_> = f.faults.iter().filter(|x| x.kind == kind).collect();
        let failed = of_kind.iter().filter(|x| x.error.is_some()).count();
        let _ = writeln!(w, "| {kind} | {} | {failed} | {} |", of_kind.len(), after(Some(kind)));
    }
    let _ = writeln!(w, "| (before the first fault) | | | {} |", after(None));
    let _ = writeln!(w, "\n<details><summary>fault log</summary>\n");
    for x in &f.faults {
        let error = x.error.as_ref().map_or(String::new(), |e| format!(" — FAILED: {e}"));
        let (at, hold) = (x.at.as_secs_f64(), x.hold.as_secs_f64());
        let _ = writeln!(w, "- +{at:.3}s ({}) {} of {} for {hold:.1} s{error}", x.wall, x.kind, x.target);
    }
    let _ = writeln!(w, "\n</details>\n");

    let _ = writeln!(w, "## Clients\n");
    let _ = writeln!(w, "| kind | requests | acknowledged (200) | failed | stored | outcomes |");
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---|");
    client_row(w, "keyed (attempts)", &stats.keyed, f.stored.keyed);
    client_row(w, "unkeyed", &stats.plain, f.stored.plain);
    client_row(w, "aborting (1–5 ms timeout)", &stats.abort, f.stored.abort);
    client_row(w, "readers", &stats.reads, None);
    client_row(w, "clean phase (all kinds)", &stats.clean, None);
    let _ = writeln!(
        w,
        "\nKeyed logical increments: {} acknowledged ({} of them as replays of an applied attempt), {} abandoned.\n",
        get(&stats.keyed_completed),
        get(&stats.keyed_replayed),
        get(&stats.keyed_abandoned)
    );
    let slow = &stats.slow;
    let _ = writeln!(
        w,
        "Slow clients: {} started, {} closed in time, {} late, {} never closed, {} could not connect; closed after {}–{} ms.\n",
        get(&slow.started),
        get(&slow.closed_in_time),
        get(&slow.closed_late),
        get(&slow.never_closed),
        get(&slow.connect_failed),
        get(&slow.min_close_ms),
        get(&slow.max_close_ms)
    );

    let _ = writeln!(w, "## Peak memory (VmRSS, sampled every second)\n\n| process | peak MiB |\n|---|---:|");
    let peaks: &BTreeMap<_, _> = &f.peaks_kib;
    for (name, kib) in peaks {
        let _ = writeln!(w, "| {name} | {} |", mib(*kib));
    }

    let _ = writeln!(w, "\n## Checks\n\n| check | result | detail |\n|---|---|---|");
    for c in checks {
        let _ = writeln!(w, "| {} | {} | {} |", c.name, verdict(c.pass), c.detail);
    }
    out
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

fn passed(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.pass).count()
}
