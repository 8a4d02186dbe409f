//! The workloads, each measured through the testkit's clients or the packet
//! generator in the client namespace: new connections, requests on persistent
//! connections, bulk transfer (echoed, and iperf3's one-way stream), forwarded
//! packets per second.
use std::{
    io::{BufReader, Lines, Write},
    process::{ChildStdin, ChildStdout, Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dispatchd_testkit::Proc;

use crate::{
    cpu::{CoreCpu, CpuSample},
    lossless::{self, Bounds, Search, Trial, DRAIN, FLUSH, FLUSH_RATE, GENERATOR_SHARE, PAUSE},
    placement,
    report::{Latency, FIXED_RATE},
    run::{Bench, PKTGEN_PORT, STREAM_PORT},
};

/// The number after `key=` on the first line starting with `line_prefix` that
/// has one (any line if the prefix is empty).
fn field(out: &str, line_prefix: &str, key: &str) -> Option<f64> {
    out.lines()
        .filter(|l| line_prefix.is_empty() || l.starts_with(line_prefix))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// `latency_us p50=.. p90=.. p99=.. p99.9=.. max=..`.
fn latency(out: &str) -> Option<Latency> {
    let l = |k| field(out, "latency_us", k);
    Some(Latency {
        p50: l("p50")?,
        p90: l("p90")?,
        p99: l("p99")?,
        p99_9: l("p99.9")?,
        max: l("max")?,
    })
}

impl Bench {
    /// Runs a testkit client in the client namespace; its stdout.
    fn testkit(&self, args: &[&str]) -> Result<String> {
        let out = self
            .end_cmd(&self.topo.client(), &self.topo.programs().testkit)
            .args(args)
            .output()
            .context("running dispatchd-testkit")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "testkit {} failed: {}\n{}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim(),
                text.lines()
                    .filter(|l| l.starts_with("error"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(text)
    }

    pub fn connections(&mut self, v: &'static str, to: &str) -> Result<()> {
        let c = self.opts.concurrency.to_string();
        let warm = self.testkit(&[
            "connect",
            "--to",
            to,
            "--connections",
            "500",
            "--concurrency",
            &c,
            "--payload",
            "64",
        ])?;
        // The warm-up's rate sizes the measured run to last about --seconds.
        let rate = field(&warm, "ok=", "rate").unwrap_or(1000.0);
        let count = (rate * self.opts.seconds).clamp(500.0, 500_000.0) as usize;
        let n = count.to_string();
        let perf = self.perf_start(v, "connections")?;
        let cpu0 = CpuSample::now();
        let out = self.testkit(&[
            "connect",
            "--to",
            to,
            "--connections",
            &n,
            "--concurrency",
            &c,
            "--payload",
            "64",
        ])?;
        let cpu1 = CpuSample::now();
        self.perf_finish(perf)?;
        let rate = field(&out, "ok=", "rate").context("connect printed no rate")?;
        let lat = latency(&out).context("connect printed no latency")?;
        let cores = cpu1.since(&cpu0);
        // CPU per connection: each core's busy time over the window (the
        // client's start and exit included: a few ms) per connection made.
        let window = cpu1.seconds_since(&cpu0);
        let made = field(&out, "ok=", "ok").unwrap_or(count as f64);
        for (core, id) in [(0, "conn_cpu0_us"), (1, "conn_cpu1_us")] {
            if let Some(c) = cores.get(core) {
                self.results.set(id, v, c.busy_per(window, made) * 1e6);
            }
        }
        self.results.cpu("connections", v, cores);
        eprintln!(
            "   connections: {rate:.0}/s p50={}us p99={}us",
            lat.p50, lat.p99
        );
        self.results.set("conn_rate", v, rate);
        self.results.latency("connections", v, lat);
        Ok(())
    }

    /// Persistent 64 B request/reply on `connections` connections, recorded as
    /// `workload` ("rr", or "rr4").
    pub fn rr(
        &mut self,
        v: &'static str,
        to: &str,
        workload: &str,
        connections: usize,
    ) -> Result<()> {
        let k = connections.to_string();
        let (w, s) = (self.opts.warmup.to_string(), self.opts.seconds.to_string());
        self.testkit(&["rr", "--to", to, "--connections", &k, "--seconds", &w])?;
        let perf = self.perf_start(v, workload)?;
        let cpu0 = CpuSample::now();
        let out = self.testkit(&["rr", "--to", to, "--connections", &k, "--seconds", &s])?;
        let cpu1 = CpuSample::now();
        let cores = cpu1.since(&cpu0);
        self.perf_finish(perf)?;
        let rate = field(&out, "requests=", "rate").context("rr printed no rate")?;
        // The forwarding core's cost per request, as for a connection: where
        // core 0 (clients and daemons) bounds the rate for every variant, this
        // is what sets the forwarders apart.
        if let (Some(core1), Some(requests)) = (cores.get(1), field(&out, "requests=", "requests"))
        {
            let window = cpu1.seconds_since(&cpu0);
            let us = core1.busy_per(window, requests) * 1e6;
            self.results.set(&format!("{workload}_cpu1_us"), v, us);
        }
        self.results.cpu(workload, v, cores);
        let lat = latency(&out).context("rr printed no latency")?;
        eprintln!(
            "   {workload}: {rate:.0}/s p50={}us p99={}us",
            lat.p50, lat.p99
        );
        self.results.set(&format!("{workload}_rate"), v, rate);
        self.results.latency(workload, v, lat);
        Ok(())
    }

    pub fn bulk(&mut self, v: &'static str, to: &str) -> Result<()> {
        let warm = self.testkit(&["bulk", "--to", to, "--bytes", "4000000"])?;
        let mbit = field(&warm, "", "mbit_per_s").unwrap_or(1000.0);
        // Both directions carry the bytes: size it to last about --seconds.
        let bytes = (mbit * 1e6 / 8.0 / 2.0 * self.opts.seconds).clamp(4e6, 256e6) as usize;
        let cpu0 = CpuSample::now();
        let out = self.testkit(&["bulk", "--to", to, "--bytes", &bytes.to_string()])?;
        self.results.cpu("bulk", v, CpuSample::now().since(&cpu0));
        let mbit = field(&out, "", "mbit_per_s").context("bulk printed no mbit_per_s")?;
        eprintln!("   bulk: {mbit:.0} Mbit/s ({bytes} bytes each way)");
        self.results.set("bulk_mbit", v, mbit);
        Ok(())
    }

    /// Bulk as iperf3 measures it: one connection streaming one way, client to
    /// daemon, for --seconds after --warmup omitted seconds (`host`: the VIP,
    /// or the daemon's own address for direct).
    pub fn stream(&mut self, v: &'static str, host: &str) -> Result<()> {
        let port = STREAM_PORT.to_string();
        let (w, s) = (
            format!("{:.0}", self.opts.warmup.ceil().max(1.0)),
            format!("{:.0}", self.opts.seconds.ceil().max(1.0)),
        );
        let cpu0 = CpuSample::now();
        let out = self
            .end_cmd(&self.topo.client(), "iperf3")
            .args(["-c", host, "-p", &port, "-t", &s, "-O", &w, "-J"])
            .output()
            .context("running iperf3")?;
        let cores = CpuSample::now().since(&cpu0);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 -J printed no JSON (status {})", out.status))?;
        if let Some(e) = report["error"].as_str() {
            bail!("iperf3: {e}");
        }
        let end = &report["end"];
        let bits = end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3: no end.sum_received.bits_per_second")?;
        let retransmits = end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
        eprintln!(
            "   stream: {:.0} Mbit/s, {retransmits} retransmits",
            bits / 1e6
        );
        self.results.cpu("stream", v, cores);
        self.results.set("stream_mbit", v, bits / 1e6);
        self.results.set("stream_retransmits", v, retransmits);
        Ok(())
    }

    /// The packet generator sends for the warm-up, prints `start`, sends for
    /// the window, prints `stop`: s0's receive counter is read at each line, so
    /// the received rate covers the same window as the sent one.
    pub fn pps(&mut self, v: &'static str, to: &str) -> Result<()> {
        let run = self.pktgen(v, to, crate::pktgen::FRAME_LEN, "pps")?;
        self.results.set("pps_sent", v, run.sent);
        self.results.set("pps_received", v, run.received);
        self.cost_rows(v, "pps", run.cost);
        if let Some(best) = self.lossless_result("pps", v, run.search) {
            self.results.set("pps_lossless", v, best);
        }
        Ok(())
    }

    /// The packet generator at 1500-byte IP packets: the substrate's bulk
    /// ceiling in copy mode (the bare forwarder) and each variant's.
    pub fn frames1500(&mut self, v: &'static str, to: &str) -> Result<()> {
        let len = crate::pktgen::MAX_FRAME_LEN;
        let run = self.pktgen(v, to, len, "frames1500")?;
        self.results
            .set("big_mbit", v, run.received * 1500.0 * 8.0 / 1e6);
        self.cost_rows(v, "big", run.cost);
        if let Some(best) = self.lossless_result("frames1500", v, run.search) {
            self.results
                .set("big_lossless_mbit", v, best * 1500.0 * 8.0 / 1e6);
        }
        Ok(())
    }

    /// The fixed-rate window into the results: the forwarding core's busy
    /// time per frame received, as row `{prefix}_cpu1_ns` (core 0's is the
    /// generator's spin, whatever the forwarder).
    fn cost_rows(&mut self, v: &str, prefix: &str, cost: Option<Cost>) {
        const _: () = assert!(
            placement::FORWARDING_CORE == 1,
            "the rows are named after core 1"
        );
        let Some(cost) = cost else { return };
        let core = cost.cores.get(placement::FORWARDING_CORE);
        if let (Some(core), true) = (core, cost.trial.received > 0) {
            let ns = core.busy_per(cost.seconds, cost.trial.received as f64) * 1e9;
            self.results.set(&format!("{prefix}_cpu1_ns"), v, ns);
        }
        if !cost.trial.passes() {
            self.results.note(format!(
                "{v} {prefix}: the fixed-rate window did not pass ({:.0}/s asked, {:.0}/s sent, {:.2} % lost); \
                 its busy time per frame counts the received ones only",
                cost.trial.rate,
                cost.trial.achieved(),
                cost.trial.loss() * 100.0
            ));
        }
    }

    /// A search into the results; its highest passing rate (achieved, pps).
    fn lossless_result(&mut self, workload: &str, v: &str, s: Option<Search>) -> Option<f64> {
        let s = s?;
        let best = s.best.map(|t| t.achieved());
        if best.is_none() {
            let lowest = s
                .trials
                .iter()
                .map(|t| t.rate)
                .fold(f64::INFINITY, f64::min);
            self.results.note(format!(
                "{v} {workload}: no zero-loss trial passed (lowest tried {lowest:.0} pps)"
            ));
        }
        self.results.lossless(workload, v, s);
        best
    }

    /// One generator run of `frame_len`-byte frames: the rates sent and
    /// received at s0 in the overload window, then (unless
    /// --lossless-trials 0) the zero-loss search over paced trials.
    fn pktgen(
        &mut self,
        v: &'static str,
        to: &str,
        frame_len: usize,
        workload: &str,
    ) -> Result<GeneratorRun> {
        let (ip, port) = to.split_once(':').context("address")?;
        let mut cmd = self.topo.cmd(&self.topo.client(), &self.me);
        cmd.args([
            "pktgen",
            "--iface",
            "c0",
            "--src-mac",
            &self.c0_mac,
            "--dst-mac",
            &self.l0_mac,
            "--src-ip",
            "198.18.0.2",
            "--dst-ip",
            ip,
            "--dst-port",
            port,
            "--base-port",
            &PKTGEN_PORT.to_string(),
            "--tuples",
            &self.opts.tuples.to_string(),
            "--warmup",
            &self.opts.warmup.to_string(),
            "--seconds",
            &self.opts.seconds.to_string(),
            "--core",
            "0",
            "--frame-len",
            &frame_len.to_string(),
        ]);
        if v.starts_with("dispatchd") {
            cmd.arg("--syn-first");
        }
        let mut lossless = self.opts.lossless_rates > 0;
        let fixed_rate = self.opts.fixed_rate_window(self.mode);
        if lossless || fixed_rate {
            cmd.arg("--trials");
        }
        let mut gen = Generator::spawn(cmd)?;
        let mut window = None;
        let mut out = String::new();
        let mut perf = None;
        while let Some(line) = gen.line()? {
            match line.as_str() {
                "start" => {
                    window = Some((self.rx()?, Instant::now(), CpuSample::now()));
                    perf = self.perf_start(v, workload)?;
                }
                "stop" => {
                    let (rx0, t0, cpu0) = window.take().context("stop before start")?;
                    let (rx1, secs) = (self.rx()?, t0.elapsed().as_secs_f64());
                    self.results.cpu(workload, v, CpuSample::now().since(&cpu0));
                    out.push_str(&format!("received={} rx_seconds={secs:.3}\n", rx1 - rx0));
                    self.perf_finish(perf.take())?;
                }
                // The generator waits for trials.
                "trials" => break,
                _ => {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        let overload = || -> Option<(f64, f64)> {
            let sent = field(&out, "sent=", "pps")?;
            let received = field(&out, "received=", "received")?;
            Some((sent, received / field(&out, "received=", "rx_seconds")?))
        };
        let Some((sent, rx_pps)) = overload() else {
            let status = gen.finish();
            bail!(
                "pktgen printed no window ({status}): {}\n{out}",
                gen.stderr()
            );
        };
        eprintln!("   {workload}: sent {sent:.0}/s, received at s0 {rx_pps:.0}/s ({frame_len} B)");
        let cost = if fixed_rate {
            let rate = f64::from(self.opts.cost_rate);
            // A failed window, like a failed search, keeps the overload
            // window's values.
            match self.measured_trial(&mut gen, rate, self.opts.cost_seconds) {
                Ok((trial, cores, seconds)) => {
                    self.results
                        .cpu(&format!("{workload}{FIXED_RATE}"), v, cores.clone());
                    Some(Cost {
                        trial,
                        cores,
                        seconds,
                    })
                }
                Err(e) => {
                    let status = gen.finish();
                    let e = format!("{e:#} ({status}): {}", gen.stderr().trim());
                    eprintln!("dispatchd-bench: {v} {workload} fixed-rate window: {e}");
                    self.results
                        .note(format!("{v} {workload}: fixed-rate window failed: {e}"));
                    // The generator is gone: no search either.
                    lossless = false;
                    None
                }
            }
        } else {
            None
        };
        let search =
            if lossless {
                let bounds = Bounds {
                    start: rx_pps,
                    ceiling: rx_pps * lossless::CEILING_FACTOR,
                    // Paced, the generator reaches about 99 % of its unpaced rate.
                    limit: sent * GENERATOR_SHARE,
                    max_rates: self.opts.lossless_rates,
                };
                let secs = self.opts.lossless_seconds;
                // A failed search keeps the overload window's values.
                match lossless::search(bounds, |rate| self.trial(&mut gen, rate, secs)) {
                    Ok(s) => {
                        let best = s.best.map_or(0.0, |t| t.achieved());
                        eprintln!(
                        "   {workload}: zero-loss {best:.0}/s after {} trials (lowest failure: {})",
                        s.trials.len(),
                        s.lowest_failure
                            .map_or("none, the generator's limit".into(), |f| format!("{f:.0}/s"))
                    );
                        Some(s)
                    }
                    Err(e) => {
                        let status = gen.finish();
                        let e = format!("{e:#} ({status}): {}", gen.stderr().trim());
                        eprintln!("dispatchd-bench: {v} {workload} zero-loss search: {e}");
                        self.results
                            .note(format!("{v} {workload}: zero-loss search failed: {e}"));
                        None
                    }
                }
            } else {
                None
            };
        let status = gen.finish();
        if !status.success() {
            bail!("pktgen failed ({status}): {}", gen.stderr().trim());
        }
        Ok(GeneratorRun {
            sent,
            received: rx_pps,
            cost,
            search,
        })
    }

    /// One zero-loss trial: `rate` for `secs`, received counted by s0's
    /// ingress rule from before the trial to [`DRAIN`] after its last frame.
    fn trial(&self, gen: &mut Generator, rate: f64, secs: f64) -> Result<Trial> {
        Ok(self.measured_trial(gen, rate, secs)?.0)
    }

    /// [`trial`](Self::trial), with each core's CPU from sending the trial to
    /// its last frame leaving the generator, and that window's seconds.
    fn measured_trial(
        &self,
        gen: &mut Generator,
        rate: f64,
        secs: f64,
    ) -> Result<(Trial, Vec<CoreCpu>, f64)> {
        // Frames of what came before (the overload window, a failed trial)
        // can wait on the forwarder's TX ring until received frames wake it:
        // a short uncounted trial at a rate it carries pushes them out.
        Self::trial_line(gen, &format!("trial {FLUSH_RATE} {}", FLUSH.as_secs_f64()))?;
        // Read before the trial starts, once those frames are through.
        std::thread::sleep(PAUSE);
        let (arrived0, rx0) = (self.pktgen_arrived()?, self.rx()?);
        let cpu0 = CpuSample::now();
        let stop = Self::trial_line(gen, &format!("trial {rate:.0} {secs}"))?;
        let cpu1 = CpuSample::now();
        std::thread::sleep(DRAIN);
        let (arrived1, rx1) = (self.pktgen_arrived()?, self.rx()?);
        let sent = field(&stop, "", "sent").context("trial_stop without sent")?;
        let seconds = field(&stop, "", "seconds").context("trial_stop without seconds")?;
        let t = Trial {
            rate,
            sent: sent as u64,
            received: arrived1 - arrived0,
            seconds,
        };
        // s0's rx_packets counts everything, the rule only the generator's.
        let other = (rx1 - rx0) as i64 - t.received as i64;
        eprintln!(
            "     trial {rate:.0}/s: sent {} at {:.0}/s ({:+.2} % of asked), received {}, loss {:.3} %{}{}",
            t.sent,
            t.achieved(),
            (t.achieved() / rate - 1.0) * 100.0,
            t.received,
            t.loss() * 100.0,
            if t.passes() {
                ", pass"
            } else if t.short() {
                ", short of the asked rate"
            } else {
                ""
            },
            if other != 0 {
                format!(", s0 rx_packets {other:+} besides")
            } else {
                String::new()
            }
        );
        Ok((t, cpu1.since(&cpu0), cpu1.seconds_since(&cpu0)))
    }

    /// Sends a trial to the generator; its `trial_stop` line.
    fn trial_line(gen: &mut Generator, trial: &str) -> Result<String> {
        gen.send(trial)?;
        loop {
            let line = gen.line()?.context("pktgen ended during a trial")?;
            if line.starts_with("trial_stop") {
                return Ok(line);
            }
        }
    }
}

/// What one generator run measured: the overload window's rates sent and
/// received at s0, and the zero-loss search when there was one.
struct GeneratorRun {
    sent: f64,
    received: f64,
    /// The fixed-rate window, unless --cost-rate 0.
    cost: Option<Cost>,
    search: Option<Search>,
}

/// The fixed-rate window: its trial, each core's CPU over it, and its seconds.
struct Cost {
    trial: Trial,
    cores: Vec<CoreCpu>,
    seconds: f64,
}

/// The generator process: its stdin takes the trials, its stdout's lines are
/// read as they come, its stderr collected; killed on drop, and it exits by
/// itself when its stdin closes (the bench ending, even by a kill).
struct Generator {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Generator {
    fn spawn(cmd: Command) -> Result<Generator> {
        let (proc, stdin, lines) = Proc::start_talking(cmd).context("starting pktgen")?;
        Ok(Generator {
            proc,
            stdin: Some(stdin),
            lines,
        })
    }

    /// The next line of stdout; None at its end.
    fn line(&mut self) -> Result<Option<String>> {
        self.lines
            .next()
            .transpose()
            .context("reading pktgen's output")
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("pktgen's stdin is closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .context("pktgen stopped taking trials")
    }

    /// Closes stdin and waits up to 30 s for the exit (then kills).
    fn finish(&mut self) -> ExitStatus {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.proc.exited() {
                // Let the stderr reader take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc.terminate(Duration::ZERO);
        self.proc.exited().unwrap_or_default()
    }

    fn stderr(&self) -> String {
        self.proc.output()
    }
}
