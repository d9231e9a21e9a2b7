//! The fault-injection run (a nemesis and a checker, in the manner of Jepsen): verve behind
//! nginx under pipelined load of distinct ids while processes are killed, frozen, restarted
//! and Redis is stalled and restarted; then every window's count lines are checked against
//! what was sent and answered. `perf/faults.sh` runs it; `tests/faults.rs` runs a short one.
//!
//! ```sh
//! cargo run --release --example faults -- run --mode cluster --seconds 60 --dir /tmp/f
//! cargo run --release --example faults -- check /tmp/f        # check a run again
//! ```
//!
//! Prints the windows checked, the faults injected by kind, the ids lost, the duplicate
//! lines and the violations; exits 0 when the checker passed, 1 when it found a violation,
//! 2 when the run could not be carried out. Module by module:
//!
//! - `run`: the run from start to end, and the run directory;
//! - `procs`: redis-server, the verve instances and nginx, and their signals;
//! - `load`: the pipelined load and its per-id records;
//! - `nemesis`: the faults, at random instants;
//! - `check`: the checker (also unit-tested on synthetic logs in `tests/faults.rs`).

mod check;
mod load;
mod nemesis;
mod procs;
#[path = "../support/rng.rs"]
mod rng;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "verve's fault-injection run: nemesis, load and checker")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Cluster,
    Single,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the topology, run load and faults, stop, check.
    Run {
        #[arg(long, value_enum, default_value = "cluster")]
        mode: ModeArg,
        /// The verve binary (default: `verve` next to this example's directory).
        #[arg(long)]
        verve: Option<PathBuf>,
        /// The run directory (created; default a new one under the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Instances in cluster mode.
        #[arg(long, default_value_t = 3)]
        instances: usize,
        /// verve's --interval, s.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// verve's --cluster-grace, s.
        #[arg(long, default_value_t = 3)]
        grace: u64,
        /// How long the load runs, s.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds without faults at the start and at the end of the load.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        #[arg(long, default_value_t = 4)]
        quiet: u64,
        /// Requests per second, all connections together.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Requests per write (pipelined) at most.
        #[arg(long, default_value_t = 16)]
        depth: usize,
        /// The nemesis's seed (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// Pause before each fault, ms: MIN,MAX.
        #[arg(long, default_value = "500,3000", value_parser = parse_range)]
        gap_ms: (u64, u64),
        /// SIGSTOP and DEBUG SLEEP durations, ms: MIN,MAX.
        #[arg(long, default_value = "1000,6000", value_parser = parse_range)]
        freeze_ms: (u64, u64),
        /// An id answered ok may be lost only if its instance was SIGKILLed within this
        /// long after the answer, ms.
        #[arg(long, default_value_t = 1000)]
        protect_ms: u64,
        /// Rounding slack on each id's send and answer times, ms.
        #[arg(long, default_value_t = 2)]
        slack_ms: u64,
        /// More flags for every verve instance (one string, split on spaces).
        #[arg(long, default_value = "")]
        verve_args: String,
    },
    /// Check a run directory again (writes its summary.txt and windows.tsv).
    Check {
        dir: PathBuf,
        /// Override the run's --protect-ms.
        #[arg(long)]
        protect_ms: Option<u64>,
    },
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once(',').ok_or("expected MIN,MAX")?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| "MIN is not a number")?,
        b.trim().parse().map_err(|_| "MAX is not a number")?,
    );
    if a > b {
        return Err("MIN is above MAX".into());
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    let say = |s: &str| eprintln!("faults: {s}");
    let (dir, result) = match Cli::parse().command {
        Cmd::Check { dir, protect_ms } => {
            let r = run::check_dir(&dir, protect_ms);
            (dir, r)
        }
        Cmd::Run {
            mode,
            verve,
            dir,
            instances,
            interval,
            grace,
            seconds,
            warmup,
            quiet,
            rate,
            connections,
            depth,
            seed,
            gap_ms,
            freeze_ms,
            protect_ms,
            slack_ms,
            verve_args,
        } => {
            let mode = match mode {
                ModeArg::Cluster => run::Mode::Cluster,
                ModeArg::Single => run::Mode::Single,
            };
            let verve = verve.unwrap_or_else(|| {
                let me = std::env::current_exe().unwrap_or_default();
                // target/<profile>/examples/faults -> target/<profile>/verve
                me.parent()
                    .and_then(|p| p.parent())
                    .map(|p| p.join("verve"))
                    .unwrap_or_else(|| PathBuf::from("verve"))
            });
            let seed = seed.unwrap_or_else(|| load::now_ms() % 1_000_000);
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("verve-faults-{}-{seed}", mode.as_str()))
            });
            let s = run::Settings {
                verve,
                dir: dir.clone(),
                mode,
                instances,
                interval,
                grace,
                duration: Duration::from_secs(seconds),
                warmup: Duration::from_secs(warmup),
                quiet: Duration::from_secs(quiet),
                load: load::Settings {
                    addr: ([127, 0, 0, 1], 0).into(),
                    rate,
                    connections,
                    depth,
                },
                nemesis: nemesis::Settings {
                    seed,
                    gap_ms,
                    freeze_ms,
                    kinds: run::kinds(mode),
                },
                protect_ms,
                slack_ms,
                verve_args: verve_args.split_whitespace().map(String::from).collect(),
            };
            say(&format!("seed {seed}, run directory {}", dir.display()));
            let r = run::run(&s, &say);
            (dir, r)
        }
    };
    match result {
        Ok(report) => {
            let summary = std::fs::read_to_string(dir.join("summary.txt")).unwrap_or_default();
            print!("{summary}");
            println!("run directory: {}", dir.display());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("faults: {e} (run directory: {})", dir.display());
            ExitCode::from(2)
        }
    }
}
