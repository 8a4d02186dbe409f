//! The packet generator of the forwarded-packets-per-second workload: an AF_XDP
//! socket (copy mode, TX only in practice) on the client's veth, sending
//! Ethernet/IPv4/TCP frames from the kit's builder over many 5-tuples as fast
//! as it can.
//!
//! Every UMEM frame is written once with one tuple's frame and then sent again and
//! again: a completion hands the frame back, its length is restored and it goes on
//! the TX ring once more, so the generator's own per-packet work is a descriptor.
//!
//! `--rate` paces the sending by time (busy-waiting on the clock: the generator
//! has its core to itself). With `--trials`, after the measured window the
//! generator reads `trial <pps> <seconds>` lines on stdin, sends paced for each
//! and prints `trial_start`, then `trial_stop sent=..` once every frame of the
//! trial has left; it exits when stdin closes.
#![allow(unsafe_code)] // UMEM frame access and ring produce/consume; each block says why

use std::{
    io::{BufRead, Write},
    net::{Ipv4Addr, SocketAddrV4},
    num::NonZeroU32,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use dispatchd_testkit::frame::{parse_mac, tcp_flags, FrameSpec};
use xsk_rs::{
    config::{BindFlags, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FrameDesc, TxQueue, Umem,
};

/// Wire length of the SYNs and of the default ACKs, without FCS: 14 + 20 + 20 +
/// 10 bytes of payload.
pub const FRAME_LEN: usize = 64;
/// The longest ACK frame: a 1500-byte IP packet (the veth's MTU).
pub const MAX_FRAME_LEN: usize = 1514;
/// Ethernet + IPv4 + TCP headers.
const HEADERS: usize = 54;
const FRAMES: u32 = 4096;
const RING: u32 = 2048;
const BATCH: usize = 64;

#[derive(clap::Args, Debug, Clone)]
pub struct PktgenArgs {
    #[arg(long, default_value = "c0")]
    pub iface: String,
    #[arg(long)]
    pub src_mac: String,
    #[arg(long)]
    pub dst_mac: String,
    #[arg(long)]
    pub src_ip: Ipv4Addr,
    #[arg(long)]
    pub dst_ip: Ipv4Addr,
    #[arg(long)]
    pub dst_port: u16,
    /// First client port; tuples use base_port .. base_port + tuples.
    #[arg(long, default_value_t = 2000)]
    pub base_port: u16,
    #[arg(long, default_value_t = 1024)]
    pub tuples: u16,
    /// Send one SYN per tuple first (so a stateful forwarder has records).
    #[arg(long)]
    pub syn_first: bool,
    /// Seconds sent before the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds of the measured window.
    #[arg(long)]
    pub seconds: f64,
    /// Core to pin the generator to.
    #[arg(long)]
    pub core: Option<usize>,
    /// Wire length of the ACK frames (their payload fills it), 64..=1514.
    #[arg(long, default_value_t = FRAME_LEN)]
    pub frame_len: usize,
    /// Frames per second of the warm-up and the measured window; 0 = as fast as
    /// the socket takes them.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// After the window, run paced trials read from stdin (`trial <pps>
    /// <seconds>`, one a line) until stdin closes.
    #[arg(long)]
    pub trials: bool,
}

/// How many frames to put on the TX ring now, at most `BATCH`: the frames a
/// steady `rate` would have sent in `elapsed`, less those `sent` already
/// (0 when ahead of time). `rate` 0 is unpaced: always a batch.
pub fn frames_due(elapsed: Duration, rate: f64, sent: u64) -> usize {
    if rate <= 0.0 {
        return BATCH;
    }
    let due = (elapsed.as_secs_f64() * rate) as u64;
    due.saturating_sub(sent).min(BATCH as u64) as usize
}

/// The send side of the socket: frames on `free` are user space's, the rest on
/// the TX or completion ring.
struct Sender<'a> {
    umem: &'a Umem,
    tx: TxQueue,
    comp: CompQueue,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    frame_len: usize,
    produced: u64,
    completed: u64,
}

impl Sender<'_> {
    /// Takes the completions (back on `free` to be sent again when `restore`,
    /// otherwise only counted: the SYN phase sends each once), puts up to
    /// `max` free frames on the TX ring and kicks the kernel while frames are
    /// outstanding (copy mode sends at most 32 per kick). The completions.
    fn round(&mut self, restore: bool, max: usize) -> u64 {
        // SAFETY: completed descriptors belong to this UMEM.
        let done = unsafe { self.comp.consume(&mut self.scratch) };
        if restore {
            for desc in &mut self.scratch[..done] {
                // SAFETY: the frame just completed, so user space owns it; its
                // contents are as written, only the length was reset.
                let mut data = unsafe { self.umem.data_mut(desc) };
                data.cursor().set_pos(self.frame_len);
                self.free.push(*desc);
            }
        }
        self.completed += done as u64;
        let n = self.free.len().min(max).min(BATCH);
        if n > 0 {
            let start = self.free.len() - n;
            // SAFETY: user-space-owned frames of this UMEM; dropped from the free
            // list only if the ring took them (libxdp reserves all or none).
            let sent = unsafe { self.tx.produce(&self.free[start..]) };
            if sent == n {
                self.free.truncate(start);
                self.produced += n as u64;
            }
        }
        if self.produced > self.completed && self.tx.needs_wakeup() {
            let _ = self.tx.wakeup();
        }
        done as u64
    }

    /// Sends at `rate` (0: unpaced) for `window`, then waits (up to a second)
    /// for every frame of it to complete: the frames sent, the seconds of the
    /// window and of the wait after it.
    fn paced(&mut self, rate: f64, window: Duration) -> (u64, f64, f64) {
        let first = self.produced;
        let started = Instant::now();
        loop {
            let elapsed = started.elapsed();
            if elapsed >= window {
                break;
            }
            let due = frames_due(elapsed, rate, self.produced - first);
            self.round(true, due);
        }
        let secs = started.elapsed().as_secs_f64();
        let drain = Instant::now();
        while self.produced > self.completed && drain.elapsed() < Duration::from_secs(1) {
            self.round(true, 0);
        }
        (self.produced - first, secs, drain.elapsed().as_secs_f64())
    }
}

/// `trial <pps> <seconds>`: the rate and the duration of one paced trial.
fn parse_trial(line: &str) -> Result<(f64, Duration)> {
    let bad = || anyhow!("expected `trial <pps> <seconds>`, got {line:?}");
    let mut words = line.split_whitespace();
    if words.next() != Some("trial") {
        return Err(bad());
    }
    let rate: f64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let secs: f64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    if !(rate.is_finite() && rate > 0.0 && secs.is_finite() && secs > 0.0 && secs <= 60.0)
        || words.next().is_some()
    {
        return Err(bad());
    }
    Ok((rate, Duration::from_secs_f64(secs)))
}

/// One tuple's frame: a SYN padded to [`FRAME_LEN`], or an ACK `len` bytes long
/// whose payload fills it (its sequence number one past the SYN's): a real
/// IP length, which a kernel forwarder does not trim.
pub fn build_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    len: usize,
) -> Vec<u8> {
    let syn = flags & tcp_flags::SYN != 0;
    let isn = 0x1000_0000u32.wrapping_add(u32::from(src.port()) << 8);
    let spec = FrameSpec {
        src_mac,
        dst_mac,
        ip_id: src.port(),
        tcp_flags: flags,
        seq: if syn { isn } else { isn + 1 },
        ack: u32::from(flags & tcp_flags::ACK != 0),
        payload: if syn {
            Vec::new()
        } else {
            b"abcdefghij"
                .iter()
                .copied()
                .cycle()
                .take(len.clamp(FRAME_LEN, MAX_FRAME_LEN) - HEADERS)
                .collect()
        },
        ..FrameSpec::tcp(src, dst)
    };
    let mut frame = spec.build().into_bytes();
    if frame.len() < FRAME_LEN {
        frame.resize(FRAME_LEN, 0);
    }
    frame
}

pub fn run(a: PktgenArgs) -> Result<()> {
    if let Some(id) = a.core {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
    let mac = |text: &str| parse_mac(text).with_context(|| format!("MAC address {text:?}"));
    let (src_mac, dst_mac) = (mac(&a.src_mac)?, mac(&a.dst_mac)?);
    let tuples = a.tuples.max(1);
    if !(FRAME_LEN..=MAX_FRAME_LEN).contains(&a.frame_len) {
        return Err(anyhow!(
            "--frame-len {} is outside {FRAME_LEN}..={MAX_FRAME_LEN}",
            a.frame_len
        ));
    }
    let frame_len = a.frame_len;
    let frame = |i: u16, flags: u8| {
        build_frame(
            src_mac,
            dst_mac,
            SocketAddrV4::new(a.src_ip, a.base_port + i),
            SocketAddrV4::new(a.dst_ip, a.dst_port),
            flags,
            frame_len,
        )
    };

    let ring = QueueSize::new(RING).map_err(|e| anyhow!("ring size: {e}"))?;
    let umem_config = UmemConfig::builder()
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| anyhow!("UMEM config: {e}"))?;
    let (umem, mut frames) =
        xsk_rs::Umem::new(umem_config, NonZeroU32::new(FRAMES).unwrap(), false)
            .map_err(|e| anyhow!("creating the UMEM: {e}"))?;
    let socket_config = SocketConfig::builder()
        .rx_queue_size(QueueSize::new(64).map_err(|e| anyhow!("{e}"))?)
        .tx_queue_size(ring)
        // Nothing steers to this socket; it only sends.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let name = a
        .iface
        .parse()
        .map_err(|_| anyhow!("interface {}", a.iface))?;
    // SAFETY: the only socket on this UMEM, bound once, with program loading
    // inhibited.
    let (tx, _rx, fill_comp) = unsafe { xsk_rs::Socket::new(socket_config, &umem, &name, 0) }
        .map_err(|e| anyhow!("binding an AF_XDP socket to {} queue 0: {e}", a.iface))?;
    let (_fill, comp) = fill_comp.context("a fresh socket has its own fill/comp rings")?;

    let write = |frames: &mut [FrameDesc], flags: u8| -> Result<()> {
        for (i, desc) in frames.iter_mut().enumerate() {
            let bytes = frame((i % tuples as usize) as u16, flags);
            // SAFETY: the frame is owned by user space (on no ring) and belongs to
            // this UMEM.
            let mut data = unsafe { umem.data_mut(desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            cursor.write_all(&bytes)?;
        }
        Ok(())
    };

    let mut sender = Sender {
        umem: &umem,
        tx,
        comp,
        free: Vec::with_capacity(FRAMES as usize),
        scratch: frames.clone(),
        frame_len,
        produced: 0,
        completed: 0,
    };

    if a.syn_first {
        let mut syns = frames[..tuples as usize].to_vec();
        write(&mut syns, tcp_flags::SYN)?;
        // Paced, 16 at a time: a burst of 1024 at line rate overflows the
        // forwarder's RX ring while its worker is still waking up, and a lost
        // SYN leaves its tuple without a record for the whole run.
        let mut completed = 0u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        for chunk in syns.chunks(16) {
            sender.free.extend_from_slice(chunk);
            while !sender.free.is_empty() && Instant::now() < deadline {
                completed += sender.round(false, BATCH);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        while completed < u64::from(tuples) && Instant::now() < deadline {
            completed += sender.round(false, BATCH);
        }
        println!("syn_sent={completed}");
        // Let the forwarder see them all before the first ACK arrives.
        std::thread::sleep(Duration::from_millis(300));
        sender.free.clear();
        // A SYN that never completed is no longer counted as outstanding.
        sender.completed = sender.produced;
    }
    write(&mut frames, tcp_flags::ACK)?;
    sender.free.extend_from_slice(&frames);

    let rate = a.rate.max(0.0);
    let warm_end = Instant::now() + Duration::from_secs_f64(a.warmup);
    let warm_started = Instant::now();
    let warm_first = sender.produced;
    while Instant::now() < warm_end {
        let due = frames_due(warm_started.elapsed(), rate, sender.produced - warm_first);
        sender.round(true, due);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "start")?;
    out.flush()?;
    let started = Instant::now();
    let window = Duration::from_secs_f64(a.seconds);
    let first = sender.produced;
    let mut sent = 0u64;
    let mut rounds = 0u64;
    while started.elapsed() < window {
        let due = frames_due(started.elapsed(), rate, sender.produced - first);
        sent += sender.round(true, due);
        rounds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(out, "stop")?;
    writeln!(
        out,
        "sent={sent} seconds={secs:.3} pps={:.0} rounds={rounds} tuples={tuples} frame_len={frame_len} rate={rate}",
        sent as f64 / secs
    )?;
    out.flush()?;
    if !a.trials {
        return Ok(());
    }
    // Frames of the window still on the rings leave before the first trial.
    sender.paced(rate, Duration::ZERO);
    writeln!(out, "trials")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let (rate, window) = parse_trial(&line?)?;
        writeln!(out, "trial_start")?;
        out.flush()?;
        let (sent, secs, drain) = sender.paced(rate, window);
        // Until the last frame left: frames the forwarder kept waiting on the
        // TX ring were not sent at the asked rate.
        let secs = secs + drain;
        writeln!(
            out,
            "trial_stop sent={sent} seconds={secs:.4} pps={:.0} rate={rate:.0} drain_ms={:.1}",
            sent as f64 / secs,
            drain * 1e3
        )?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use etherparse::{SlicedPacket, TransportSlice};

    use super::*;

    #[test]
    fn frames_are_wire_sized_and_parse() {
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 2000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
        for (flags, len, wire, payload) in [
            (tcp_flags::SYN, FRAME_LEN, FRAME_LEN, 0),
            (tcp_flags::SYN, MAX_FRAME_LEN, FRAME_LEN, 0),
            (tcp_flags::ACK, FRAME_LEN, FRAME_LEN, 10),
            (tcp_flags::ACK, MAX_FRAME_LEN, MAX_FRAME_LEN, 1460),
        ] {
            let f = build_frame([2; 6], [4; 6], src, dst, flags, len);
            assert_eq!(f.len(), wire);
            let p = SlicedPacket::from_ethernet(&f).expect("parses");
            let Some(TransportSlice::Tcp(tcp)) = p.transport else {
                panic!("no TCP")
            };
            assert_eq!(tcp.syn(), flags == tcp_flags::SYN);
            assert_eq!(tcp.ack(), flags == tcp_flags::ACK);
            assert_eq!(tcp.payload().len(), payload);
        }
    }

    #[test]
    fn pacing_keeps_the_rate_and_sends_in_batches() {
        let ms = Duration::from_millis;
        // 100k/s: 100 frames are due after a millisecond, in batches of BATCH.
        assert_eq!(frames_due(ms(1), 100_000.0, 0), BATCH);
        assert_eq!(frames_due(ms(1), 100_000.0, 64), 36);
        assert_eq!(frames_due(ms(1), 100_000.0, 100), 0);
        // Ahead of time (sent more than due): nothing, never a wrap-around.
        assert_eq!(frames_due(ms(1), 100_000.0, 500), 0);
        assert_eq!(frames_due(Duration::ZERO, 1e6, 0), 0);
        // Unpaced: a batch whatever the time.
        assert_eq!(frames_due(Duration::ZERO, 0.0, 1 << 40), BATCH);
        // A sender that takes what is due as soon as it is due sends the rate
        // to within a frame, at 50k and at 1M frames per second.
        for rate in [50_000.0, 1_000_000.0] {
            let mut sent = 0u64;
            let (mut t, mut last) = (Duration::ZERO, Duration::ZERO);
            while t < Duration::from_secs(1) {
                sent += frames_due(t, rate, sent) as u64;
                last = t;
                t += Duration::from_micros(7);
            }
            let expected = rate * last.as_secs_f64();
            assert!((sent as f64 - expected).abs() <= 1.0, "{rate}: {sent}");
        }
    }

    #[test]
    fn trial_lines_parse_or_fail_clearly() {
        let (rate, secs) = parse_trial("trial 250000 0.5").unwrap();
        assert_eq!((rate, secs), (250_000.0, Duration::from_millis(500)));
        for bad in [
            "",
            "trial",
            "trial 1000",
            "trial x 1",
            "trial 0 1",
            "trial -5 1",
            "trial 1000 0",
            "trial 1000 1 more",
            "stop 1000 1",
            "trial inf 1",
        ] {
            let e = parse_trial(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected `trial <pps> <seconds>`"),
                "{bad:?}: {e}"
            );
        }
    }
}
