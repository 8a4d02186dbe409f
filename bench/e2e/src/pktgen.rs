//! The packet generator of the forwarded-packets-per-second workload: an AF_XDP
//! socket (copy mode, TX only in practice) on the client's veth, sending
//! Ethernet/IPv4/TCP frames from the kit's builder over many 5-tuples as fast
//! as it can.
//!
//! Every UMEM frame is written once with one tuple's frame and then sent again and
//! again: a completion hands the frame back, its length is restored and it goes on
//! the TX ring once more, so the generator's own per-packet work is a descriptor.
#![allow(unsafe_code)] // UMEM frame access and ring produce/consume; each block says why

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    num::NonZeroU32,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use dispatchd_testkit::frame::{parse_mac, tcp_flags, FrameSpec};
use xsk_rs::{
    config::{BindFlags, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    FrameDesc,
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
    let (mut tx, _rx, fill_comp) =
        unsafe { xsk_rs::Socket::new(socket_config, &umem, &name, 0) }
            .map_err(|e| anyhow!("binding an AF_XDP socket to {} queue 0: {e}", a.iface))?;
    let (_fill, mut comp) = fill_comp.context("a fresh socket has its own fill/comp rings")?;

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

    // State of the send loop: frames on the free list are ours, the rest are on
    // the TX or completion ring.
    let mut free: Vec<FrameDesc> = Vec::with_capacity(FRAMES as usize);
    let mut scratch = frames.clone();
    // `restore`: completed frames go back on `free` to be sent again; otherwise
    // they are only counted (the SYN phase sends each once).
    let mut send_round = |free: &mut Vec<FrameDesc>, restore: bool| -> u64 {
        // SAFETY: completed descriptors belong to this UMEM.
        let done = unsafe { comp.consume(&mut scratch) };
        for desc in &mut scratch[..done] {
            if !restore {
                continue;
            }
            // SAFETY: the frame just completed, so user space owns it; its
            // contents are as written, only the length was reset.
            let mut data = unsafe { umem.data_mut(desc) };
            data.cursor().set_pos(frame_len);
            free.push(*desc);
        }
        let n = free.len().min(BATCH);
        if n > 0 {
            let start = free.len() - n;
            // SAFETY: user-space-owned frames of this UMEM; dropped from the free
            // list only if the ring took them (libxdp reserves all or none).
            let sent = unsafe { tx.produce(&free[start..]) };
            if sent == n {
                free.truncate(start);
            }
        }
        if tx.needs_wakeup() {
            let _ = tx.wakeup();
        }
        done as u64
    };

    if a.syn_first {
        let mut syns = frames[..tuples as usize].to_vec();
        write(&mut syns, tcp_flags::SYN)?;
        // Paced, 16 at a time: a burst of 1024 at line rate overflows the
        // forwarder's RX ring while its worker is still waking up, and a lost
        // SYN leaves its tuple without a record for the whole run.
        let mut completed = 0u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut queued = Vec::new();
        for chunk in syns.chunks(16) {
            queued.extend_from_slice(chunk);
            while !queued.is_empty() && Instant::now() < deadline {
                completed += send_round(&mut queued, false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        while completed < u64::from(tuples) && Instant::now() < deadline {
            completed += send_round(&mut queued, false);
        }
        println!("syn_sent={completed}");
        // Let the forwarder see them all before the first ACK arrives.
        std::thread::sleep(Duration::from_millis(300));
        free.clear();
    }
    write(&mut frames, tcp_flags::ACK)?;
    free.extend_from_slice(&frames);

    let warm_end = Instant::now() + Duration::from_secs_f64(a.warmup);
    while Instant::now() < warm_end {
        send_round(&mut free, true);
    }
    println!("start");
    std::io::stdout().flush()?;
    let started = Instant::now();
    let window = Duration::from_secs_f64(a.seconds);
    let mut sent = 0u64;
    let mut rounds = 0u64;
    while started.elapsed() < window {
        sent += send_round(&mut free, true);
        rounds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("stop");
    println!(
        "sent={sent} seconds={secs:.3} pps={:.0} rounds={rounds} tuples={tuples} frame_len={frame_len}",
        sent as f64 / secs
    );
    std::io::stdout().flush()?;
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
}
