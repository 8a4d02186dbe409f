//! The workloads, each measured through the testkit's clients or the packet
//! generator in the client namespace: new connections, requests on persistent
//! connections, bulk transfer (echoed, and iperf3's one-way stream), forwarded
//! packets per second.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dispatchd_testkit::Proc;

use crate::{
    cpu::CpuSample,
    report::Latency,
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
        let made = field(&out, "ok=", "ok").unwrap_or(count as f64).max(1.0);
        for (core, id) in [(0, "conn_cpu0_us"), (1, "conn_cpu1_us")] {
            if let Some(c) = cores.get(core) {
                self.results.set(id, v, c.busy() * window / made * 1e6);
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

    pub fn rr(&mut self, v: &'static str, to: &str) -> Result<()> {
        let k = self.opts.rr_connections.to_string();
        let (w, s) = (self.opts.warmup.to_string(), self.opts.seconds.to_string());
        self.testkit(&["rr", "--to", to, "--connections", &k, "--seconds", &w])?;
        let perf = self.perf_start(v, "rr")?;
        let cpu0 = CpuSample::now();
        let out = self.testkit(&["rr", "--to", to, "--connections", &k, "--seconds", &s])?;
        self.results.cpu("rr", v, CpuSample::now().since(&cpu0));
        self.perf_finish(perf)?;
        let rate = field(&out, "requests=", "rate").context("rr printed no rate")?;
        let lat = latency(&out).context("rr printed no latency")?;
        eprintln!("   rr: {rate:.0}/s p50={}us p99={}us", lat.p50, lat.p99);
        self.results.set("rr_rate", v, rate);
        self.results.latency("rr", v, lat);
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
        let (sent, rx_pps) = self.pktgen(v, to, crate::pktgen::FRAME_LEN, "pps")?;
        self.results.set("pps_sent", v, sent);
        self.results.set("pps_received", v, rx_pps);
        Ok(())
    }

    /// The packet generator at 1500-byte IP packets: the substrate's bulk
    /// ceiling in copy mode (the bare forwarder) and each variant's.
    pub fn frames1500(&mut self, v: &'static str, to: &str) -> Result<()> {
        let len = crate::pktgen::MAX_FRAME_LEN;
        let (_, rx_pps) = self.pktgen(v, to, len, "frames1500")?;
        self.results.set("big_mbit", v, rx_pps * 1500.0 * 8.0 / 1e6);
        Ok(())
    }

    /// One generator run of `frame_len`-byte frames: the rates sent and
    /// received at s0.
    fn pktgen(
        &mut self,
        v: &'static str,
        to: &str,
        frame_len: usize,
        workload: &str,
    ) -> Result<(f64, f64)> {
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
        let (mut proc, lines) = Proc::start_reading(cmd).context("starting pktgen")?;
        let mut window = None;
        let mut out = String::new();
        let mut perf = None;
        for line in lines {
            let line = line?;
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
                }
                _ => {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        let status = proc.wait(Duration::from_secs(30));
        self.perf_finish(perf)?;
        if !status.success() {
            bail!("pktgen failed: {}", proc.output().trim());
        }
        let sent = field(&out, "sent=", "pps").context("pktgen printed no pps")?;
        let received = field(&out, "received=", "received").context("no received count")?;
        let secs = field(&out, "received=", "rx_seconds").context("no rx window")?;
        let rx_pps = received / secs;
        eprintln!("   {workload}: sent {sent:.0}/s, received at s0 {rx_pps:.0}/s ({frame_len} B)");
        Ok((sent, rx_pps))
    }
}
