//! A system-wide `perf record` over one measured window, and its top symbols
//! written next to the results.
use std::{fmt::Write as _, fs, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};
use dispatchd_testkit::Proc;

use crate::run::Bench;

pub struct Perf {
    proc: Proc,
    data: PathBuf,
    report: PathBuf,
}

impl Bench {
    /// Starts perf for the connections, rr, rr4 and generator workloads of nftables,
    /// dispatchd and the bare forwarder when `--perf` asked for it.
    pub fn perf_start(&self, v: &str, workload: &str) -> Result<Option<Perf>> {
        if !self.opts.perf || !matches!(v, "dispatchd" | "nftables" | "bare" | "bare-xdp") {
            return Ok(None);
        }
        fs::create_dir_all(&self.opts.out_dir)?;
        let data = std::env::temp_dir().join(format!("dispatchd-bench-{v}-{workload}.data"));
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-a", "-e", "cpu-clock", "-F", "2000", "-g", "-o"])
            .arg(&data)
            .args(["--", "sleep", &(self.opts.seconds * 0.8).to_string()]);
        let proc = Proc::start(cmd, "", Duration::ZERO).context("starting perf record")?;
        let report = self
            .opts
            .out_dir
            .join(format!("e2e-{}-perf-{v}-{workload}.txt", self.stamp));
        Ok(Some(Perf { proc, data, report }))
    }

    pub fn perf_finish(&mut self, perf: Option<Perf>) -> Result<()> {
        let Some(Perf {
            mut proc,
            data,
            report,
        }) = perf
        else {
            return Ok(());
        };
        // perf stops by itself when its `sleep` ends, inside the window.
        proc.wait(Duration::from_secs_f64(self.opts.seconds + 60.0));
        let mut text = String::new();
        let views: [(&str, &[&str]); 5] = [
            ("--sort cpu", &["--sort", "cpu"]),
            (
                "--cpu 1 --sort comm,sym (the forwarding core in dedicated mode)",
                &["--cpu", "1", "--sort", "comm,sym"],
            ),
            ("--sort comm,dso", &["--sort", "comm,dso"]),
            ("--sort sym", &["--sort", "sym"]),
            (
                "--comms dispatchd-q0 --sort dso,sym (the worker thread alone)",
                &["--comms", "dispatchd-q0", "--sort", "dso,sym"],
            ),
        ];
        for (sort, args) in views {
            let out = Command::new("perf")
                .args([
                    "report",
                    "--no-children",
                    "--stdio",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0.5",
                ])
                .args(args)
                .arg("-i")
                .arg(&data)
                .output()
                .context("perf report")?;
            let _ = writeln!(text, "### perf report {sort}\n");
            text.push_str(
                &String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            text.push_str("\n\n");
        }
        fs::write(&report, text)?;
        self.results.note(format!(
            "perf profile: {} (data with call graphs: {})",
            report.display(),
            data.display()
        ));
        Ok(())
    }
}
