//! One fault run, start to end: starts the topology (cluster: redis-server with an
//! append-only file, `instances` verve instances on it, nginx in front; single: one verve
//! with `--state-file`, nginx in front), drives the load, lets the nemesis loose for all but
//! the last `quiet` seconds, waits for every loaded window's count line (and a lease period
//! more, for a late duplicate), stops everything gracefully, writes `run.txt`, and checks.
//!
//! The run directory keeps everything the checker reads (`run.txt`, `ids-*.tsv`,
//! `events.tsv`, `verve-*.log`) and the rest (`verve-*.out`, `redis/`, `nginx/`), so a run can
//! be checked again: `faults check DIR`. Its results: `summary.txt`, `windows.tsv`.

use std::fmt::Write as _;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::check::{self, Fault, Report};
use crate::load::{self, now_ms, Load};
use crate::nemesis::{self, Events, Targets};
use crate::procs::{Nginx, Redis, Verve};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `instances` instances on one Redis; every fault kind.
    Cluster,
    /// One instance with `--state-file`; SIGKILL and SIGTERM restarts only.
    Single,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cluster => "cluster",
            Mode::Single => "single",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub verve: PathBuf,
    /// Created if missing; should be empty.
    pub dir: PathBuf,
    pub mode: Mode,
    pub instances: usize,
    /// `--interval`, s.
    pub interval: u64,
    /// `--cluster-grace`, s.
    pub grace: u64,
    /// How long the load runs.
    pub duration: Duration,
    /// Load without faults at the start and at the end.
    pub warmup: Duration,
    pub quiet: Duration,
    pub load: load::Settings,
    pub nemesis: nemesis::Settings,
    /// See [`check::Run::protect_ms`] and [`check::Run::slack_ms`].
    pub protect_ms: u64,
    pub slack_ms: u64,
    /// More verve flags, for every instance.
    pub verve_args: Vec<String>,
}

/// The kinds of fault each mode injects.
pub fn kinds(mode: Mode) -> Vec<Fault> {
    match mode {
        Mode::Cluster => Fault::ALL.to_vec(),
        Mode::Single => vec![Fault::Kill, Fault::Deploy],
    }
}

/// How long after the load a duplicate can still come: a leader that died after its line
/// holds its lease (5 s) before another instance takes the window over and reports it again.
const LEASE: Duration = Duration::from_secs(6);

/// Runs it; `say` gets progress lines. An `Err` is a run that could not be carried out (a
/// process that would not start); the checker's verdict is in the `Report`.
pub fn run(s: &Settings, say: &dyn Fn(&str)) -> Result<Report, String> {
    std::fs::create_dir_all(&s.dir).map_err(|e| format!("{}: {e}", s.dir.display()))?;
    let mut redis = match s.mode {
        Mode::Cluster => Some(Redis::start(&s.dir.join("redis"))?),
        Mode::Single => None,
    };
    let count = if s.mode == Mode::Single {
        1
    } else {
        s.instances.max(1)
    };
    let mut instances = Vec::new();
    for i in 1..=count {
        let name = format!("i{i}");
        let mut args = vec!["--interval".to_string(), s.interval.to_string()];
        match (&redis, s.mode) {
            (Some(r), Mode::Cluster) => args.extend([
                "--redis".to_string(),
                r.url(),
                "--redis-prefix".to_string(),
                "faults".to_string(),
                "--instance-id".to_string(),
                name.clone(),
                "--cluster-grace".to_string(),
                s.grace.to_string(),
            ]),
            _ => args.extend([
                "--state-file".to_string(),
                s.dir.join("state").display().to_string(),
            ]),
        }
        args.extend(s.verve_args.iter().cloned());
        instances.push(Verve::start(&s.verve, &s.dir, &name, args)?);
    }
    let mut nginx = Nginx::start(
        &s.dir,
        &instances.iter().map(|v| v.addr).collect::<Vec<_>>(),
    )?;
    let mut info = String::new();
    let _ = writeln!(info, "mode={}", s.mode.as_str());
    let _ = writeln!(info, "seed={}", s.nemesis.seed);
    let _ = writeln!(info, "interval_ms={}", s.interval * 1000);
    let _ = writeln!(info, "grace_s={}", s.grace);
    let _ = writeln!(info, "protect_ms={}", s.protect_ms);
    let _ = writeln!(info, "slack_ms={}", s.slack_ms);
    let _ = writeln!(
        info,
        "load=rate {} connections {} depth {}",
        s.load.rate, s.load.connections, s.load.depth
    );
    for v in &instances {
        let log = v.log.file_name().map(|f| f.to_string_lossy().into_owned());
        let _ = writeln!(
            info,
            "instance={} {} {}",
            v.name,
            v.addr,
            log.unwrap_or_default()
        );
        let _ = writeln!(info, "command={}", v.command_line());
    }
    if let Some(r) = &redis {
        let _ = writeln!(
            info,
            "redis={} appendonly yes appendfsync everysec",
            r.url()
        );
    }
    say(&format!(
        "{} mode: {} instance(s) behind nginx on 127.0.0.1:{}, --interval {}{}; load {} req/s \
         for {} s; nemesis seed {}",
        s.mode.as_str(),
        instances.len(),
        nginx.port,
        s.interval,
        if s.mode == Mode::Cluster {
            format!(" --cluster-grace {}", s.grace)
        } else {
            " --state-file".to_string()
        },
        s.load.rate,
        s.duration.as_secs(),
        s.nemesis.seed
    ));

    let events_file =
        std::fs::File::create(s.dir.join("events.tsv")).map_err(|e| format!("events.tsv: {e}"))?;
    let mut events = Events::new(BufWriter::new(events_file));
    let mut load_settings = s.load.clone();
    load_settings.addr = ([127, 0, 0, 1], nginx.port).into();
    let start = Instant::now();
    let load_start_ms = now_ms();
    let load =
        Load::start(&load_settings, &s.dir).map_err(|e| format!("starting the load: {e}"))?;
    std::thread::sleep(s.warmup);
    let faults = nemesis::run(
        &s.nemesis,
        &mut Targets {
            instances: &mut instances,
            redis: redis.as_mut(),
        },
        &mut events,
        start + s.duration.saturating_sub(s.quiet),
        say,
    );
    // Whatever the nemesis did, the load stops and the processes are stopped below; after
    // the last fault, at least `quiet` of load (the nemesis may have run over).
    let rest = (start + s.duration)
        .saturating_duration_since(Instant::now())
        .max(s.quiet);
    if faults.is_ok() {
        std::thread::sleep(rest);
    }
    let sent = load.stop()?;
    let load_end_ms = now_ms();
    let faults = faults?;
    say(&format!(
        "load done: {sent} ids sent; {faults} faults; waiting for the count lines"
    ));

    // Every loaded window's count line, then a lease period for a late duplicate.
    let iv = s.interval * 1000;
    let (first, last) = (load_start_ms / iv, load_end_ms / iv);
    let deadline = Instant::now() + Duration::from_secs(s.interval + s.grace) + LEASE * 2;
    while Instant::now() < deadline {
        let mut seen = std::collections::BTreeSet::new();
        for v in &instances {
            let text = std::fs::read_to_string(&v.log).unwrap_or_default();
            let mut r = check::Run::default();
            check::read_log(&mut r, 0, &text);
            seen.extend(r.lines.iter().map(|l| l.window_start_ms / iv));
        }
        if (first..=last).all(|w| seen.contains(&w)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if s.mode == Mode::Cluster {
        std::thread::sleep(LEASE);
    }

    // Stop: nginx, then every instance at once (each ships what it holds; the last one
    // reports), then Redis.
    nginx.stop();
    for v in &instances {
        v.signal(libc::SIGTERM);
    }
    for v in &mut instances {
        if let Some(status) = v.stop(libc::SIGTERM) {
            if !status.success() {
                say(&format!(
                    "warning: {} exited with {status} at the end",
                    v.name
                ));
            }
        } else {
            say(&format!(
                "warning: {} did not exit on SIGTERM at the end",
                v.name
            ));
        }
    }
    if let Some(r) = redis.as_mut() {
        r.stop(libc::SIGTERM);
    }
    let _ = writeln!(info, "load_start_ms={load_start_ms}");
    let _ = writeln!(info, "load_end_ms={load_end_ms}");
    let _ = writeln!(info, "run_end_ms={}", now_ms());
    std::fs::write(s.dir.join("run.txt"), info).map_err(|e| format!("run.txt: {e}"))?;
    check_dir(&s.dir, None)
}

/// Reads a run directory, checks it, writes `windows.tsv` and `summary.txt` into it.
/// `protect_ms` overrides the run's own.
pub fn check_dir(dir: &Path, protect_ms: Option<u64>) -> Result<Report, String> {
    let mut run = check::read_dir(dir)?;
    if let Some(p) = protect_ms {
        run.protect_ms = p;
    }
    let mut report = check::check(&run);
    if report.faults.contains_key(&Fault::Kill) {
        // How far back before a SIGKILL ids were really lost.
        for ms in [0, 250, 500, 750] {
            if ms < run.protect_ms {
                let r = check::check(&check::Run {
                    protect_ms: ms,
                    ..run.clone()
                });
                report.lost_with_allowance.push((ms, r.lost));
            }
        }
    }
    std::fs::write(dir.join("windows.tsv"), report.windows_tsv(run.interval_ms))
        .map_err(|e| format!("windows.tsv: {e}"))?;
    std::fs::write(dir.join("summary.txt"), report.summary(run.interval_ms))
        .map_err(|e| format!("summary.txt: {e}"))?;
    Ok(report)
}
