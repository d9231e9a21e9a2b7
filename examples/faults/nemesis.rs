//! The nemesis of the fault run: one fault at a time, at random instants (a seeded RNG),
//! each kind in turn in a shuffled order (every kind comes once before any comes again, so
//! a short run still sees each), on a random instance. Every fault is written to
//! `events.tsv` when it begins and when it is healed: `t_ms kind begin|end target detail`.
//! The time of a SIGKILL is taken just before the signal: the checker excuses ids answered
//! by that instance within a second before it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::check::Fault;
use crate::load::now_ms;
use crate::procs::{Redis, Verve};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// The pause before each fault: uniform in this range, ms.
    pub gap_ms: (u64, u64),
    /// How long SIGSTOP and `DEBUG SLEEP` last: uniform in this range, ms.
    pub freeze_ms: (u64, u64),
    /// The kinds to inject (single mode: kill and deploy only).
    pub kinds: Vec<Fault>,
}

/// What the nemesis acts on.
pub struct Targets<'a> {
    pub instances: &'a mut [Verve],
    pub redis: Option<&'a mut Redis>,
}

/// `events.tsv`.
pub struct Events<W: Write> {
    out: W,
}

impl<W: Write> Events<W> {
    pub fn new(out: W) -> Self {
        Events { out }
    }

    fn write(
        &mut self,
        fault: Fault,
        begin: bool,
        target: &str,
        detail: &str,
    ) -> Result<(), String> {
        let phase = if begin { "begin" } else { "end" };
        writeln!(
            self.out,
            "{}\t{}\t{phase}\t{target}\t{detail}",
            now_ms(),
            fault.as_str()
        )
        .and_then(|()| self.out.flush())
        .map_err(|e| format!("writing events.tsv: {e}"))
    }
}

fn uniform(rng: &mut Rng, (lo, hi): (u64, u64)) -> u64 {
    lo + rng.next() % (hi.saturating_sub(lo) + 1)
}

/// Injects faults until `until`, and at least one of each kind however long that takes (a
/// slow machine makes the run longer, not thinner); returns how many. Every fault is healed
/// before it returns (the instance runs again, SIGCONT sent, Redis back). An instance or
/// Redis that does not come back is an error: the run stops there.
pub fn run<W: Write>(
    s: &Settings,
    t: &mut Targets<'_>,
    events: &mut Events<W>,
    until: Instant,
    say: &dyn Fn(&str),
) -> Result<u64, String> {
    let mut rng = Rng(s.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut bag: Vec<Fault> = Vec::new();
    let mut done = 0;
    let longest = Duration::from_millis(s.freeze_ms.1 + s.gap_ms.1);
    loop {
        let gap = Duration::from_millis(uniform(&mut rng, s.gap_ms));
        let each_once = done >= s.kinds.len() as u64;
        if (each_once && Instant::now() + gap + longest >= until) || s.kinds.is_empty() {
            return Ok(done);
        }
        std::thread::sleep(gap);
        if bag.is_empty() {
            bag = s.kinds.clone();
            // Fisher-Yates.
            for i in (1..bag.len()).rev() {
                bag.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
        }
        let fault = bag.pop().expect("refilled above");
        let which = (rng.next() % t.instances.len().max(1) as u64) as usize;
        let freeze = Duration::from_millis(uniform(&mut rng, s.freeze_ms));
        inject(fault, which, freeze, t, events, say)?;
        done += 1;
    }
}

fn inject<W: Write>(
    fault: Fault,
    which: usize,
    freeze: Duration,
    t: &mut Targets<'_>,
    events: &mut Events<W>,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let secs = format!("{:.1}s", freeze.as_secs_f64());
    if fault.on_instance() {
        let v = t
            .instances
            .get_mut(which)
            .ok_or("no instance to inject a fault into")?;
        let name = v.name.clone();
        say(&format!("nemesis: {} {name}", fault.as_str()));
        match fault {
            Fault::Kill => {
                events.write(fault, true, &name, "SIGKILL")?;
                v.stop(libc::SIGKILL);
                let started = Instant::now();
                v.spawn()?;
                events.write(
                    fault,
                    false,
                    &name,
                    &format!("serving again after {} ms", started.elapsed().as_millis()),
                )?;
            }
            Fault::Pause => {
                events.write(fault, true, &name, &format!("SIGSTOP for {secs}"))?;
                v.signal(libc::SIGSTOP);
                std::thread::sleep(freeze);
                v.signal(libc::SIGCONT);
                events.write(fault, false, &name, "SIGCONT")?;
            }
            Fault::Deploy => {
                events.write(fault, true, &name, "SIGTERM")?;
                let started = Instant::now();
                let status = v.stop(libc::SIGTERM);
                let exited = match status {
                    Some(s) => format!("exit {s} after {} ms", started.elapsed().as_millis()),
                    None => "did not exit: SIGKILLed".to_string(),
                };
                v.spawn()?;
                events.write(fault, false, &name, &format!("{exited}; serving again"))?;
            }
            _ => unreachable!("an instance fault"),
        }
        return Ok(());
    }
    let Some(redis) = t.redis.as_deref_mut() else {
        return Ok(());
    };
    say(&format!("nemesis: {}", fault.as_str()));
    match fault {
        Fault::RedisSleep => {
            let n = freeze.as_secs().max(1).to_string();
            events.write(fault, true, "redis", &format!("DEBUG SLEEP {n}"))?;
            // redis-cli returns once the server has slept.
            let status = Command::new("redis-cli")
                .args(["-p", &redis.port.to_string(), "DEBUG", "SLEEP", &n])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("redis-cli: {e}"))?;
            events.write(fault, false, "redis", &format!("redis-cli {status}"))?;
        }
        Fault::RedisPause => {
            events.write(fault, true, "redis", &format!("SIGSTOP for {secs}"))?;
            redis.signal(libc::SIGSTOP);
            std::thread::sleep(freeze);
            redis.signal(libc::SIGCONT);
            events.write(fault, false, "redis", "SIGCONT")?;
        }
        Fault::RedisRestart | Fault::RedisKill => {
            let sig = if fault == Fault::RedisKill {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            events.write(
                fault,
                true,
                "redis",
                if sig == libc::SIGKILL {
                    "SIGKILL"
                } else {
                    "SIGTERM"
                },
            )?;
            let status = redis.stop(sig);
            redis.spawn()?;
            events.write(
                fault,
                false,
                "redis",
                &format!(
                    "{}; serving again",
                    status.map_or("killed after the deadline".to_string(), |s| s.to_string())
                ),
            )?;
        }
        _ => unreachable!("a Redis fault"),
    }
    Ok(())
}
