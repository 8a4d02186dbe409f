//! Hitless takeover (`dispatchd run --takeover`): what the new process (B) and
//! the running one (A) say to each other on A's control socket.
//!
//! ```text
//! B -> A  takeover protocol=1 front=l0 back=l1 replies=stateless layout=0:f0/b0 reply_key=16 reply_key6=40\n
//! A -> B  error: takeover refused: ...\n            (A goes on unchanged)
//!    or   links <pid>\n  + SCM_RIGHTS [front link, back link, tracked map, tracked6 map]
//!         B copies the tracked maps (reply_mode "tracked") into its own,
//!         then points both links at its own program (bpf_link_update)
//! B -> A  switched\n
//!         A stops its workers (their sockets and UMEMs close)
//! A -> B  records <n>\n  + n records of RECORD_WIRE bytes
//! A -> B  records6 <m>\n + m IPv6 records of RECORD6_WIRE bytes; A exits
//! ```
//!
//! The IPv6 section is an addition within protocol 1, not a new version: a
//! new process must be able to take over from the running older one (the
//! upgrade this exists for), and neither side can announce it to an older
//! peer without being refused (the request's words and the answers are read
//! strictly). An older B reads the IPv4 section and closes, never reading
//! the IPv6 one (its IPv6 connections are lost, as they were); a new B that
//! finds the stream closed after the IPv4 section (an older A) goes on with
//! no IPv6 records.
//!
//! `reply_key=` (the key size of B's tracked map) is an addition within
//! protocol 1 too. The key gained the protocol (16 bytes; 12 before), and a
//! process of the version before copies a map with its own key size, which
//! the kernel would overrun: so A refuses, in tracked mode, a request that
//! does not say `reply_key=` (an older B). An older A answers the word as a
//! malformed request and goes on; B then asks again without it, and reads
//! the layout of the map it gets from the map's key size (an older A's keys
//! are converted, see `daemon::copy_tracked` and the README's "Tracked
//! replies: the key carries the protocol").
//!
//! `reply_key6=` (the key size of B's IPv6 tracked map) asks for that map
//! too: A passes it as a fourth descriptor only to a B that said the word,
//! and refuses one whose size differs from its own in tracked mode. An A of
//! the version before answers the word as malformed; B asks again without
//! it (and then, for an A older still, without `reply_key=` as well), gets
//! three descriptors, and writes its IPv6 map from the records in the
//! switch window, before its workers run.
//!
//! Between the switch and B's first socket, B's program finds its XSKMAP empty
//! and drops service frames (counted `no_socket`): never passed to the host,
//! whose stack would answer them with RST. TCP retransmits them.
//!
//! Records travel with their owner (worker index) and their times as ages, as
//! each process's clock counts from its own start.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    os::{fd::AsFd, fd::OwnedFd, unix::net::UnixStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    config::{Protocol, ServiceConfig},
    flow::{FlowKey, FlowKey6, FlowRecord, FlowRecord6, TcpState},
    ids::BackendId,
    sys,
    tracked::Tracked,
    xdp::{reply_key, reply_key_v0_parts, ReplyKey, ReplyKeyV0, TrackedKey},
};

/// The first word of B's request.
pub const VERB: &str = "takeover";
/// The version of this exchange and of the records' wire form: processes of
/// different versions refuse each other (an upgrade that changes them needs a
/// plain restart).
pub const PROTOCOL: u32 = 1;
/// How long either side waits for the other's next step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long before A's [`STEP_TIMEOUT`] B no longer re-points the links: the
/// switch and the word that says so must reach A while it still waits.
pub const SWITCH_MARGIN: Duration = Duration::from_secs(1);
/// Bytes of one record on the wire.
pub const RECORD_WIRE: usize = 46;
/// Bytes of one IPv6 record on the wire.
pub const RECORD6_WIRE: usize = 82;
/// The request's word for the key size of the new process's tracked map.
const REPLY_KEY_WORD: &str = "reply_key";
/// The request's word for the key size of its IPv6 tracked map.
const REPLY_KEY6_WORD: &str = "reply_key6";
/// How an older running process answers a request with a word it does not
/// know: the new process asks again without `reply_key=`.
const MALFORMED: &str = "malformed takeover request";
/// The first word of the line that opens the IPv6 section.
const RECORDS6: &str = "records6";
/// Test hook: a stage (`links`: it holds the links; `switched`: it has
/// re-pointed them but not said so) at which the new process kills itself.
pub const DIE_AT_ENV: &str = "DISPATCHD_TEST_TAKEOVER_DIE_AT";

/// What must be the same in both processes: the interfaces and which worker
/// serves which queues (records are handed to the worker of the same index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub front: String,
    pub back: String,
    /// `reply_mode`: which replies the program takes.
    pub replies: String,
    /// `w:f<queues>/b<queues>` per worker, `;`-separated.
    pub layout: String,
    /// The key size of the process's tracked map (`reply_key=`): `None` in
    /// the request of an older process, which does not say it (and whose key
    /// has no protocol), or in one this process retries without it for an
    /// older running process (see the module's note).
    pub reply_key: Option<u32>,
    /// The key size of its IPv6 tracked map (`reply_key6=`): `None` in the
    /// request of an older process, which takes no such map, or in one this
    /// process retries without it.
    pub reply_key6: Option<u32>,
}

impl Identity {
    pub fn line(&self) -> String {
        let mut line = format!(
            "{VERB} protocol={PROTOCOL} front={} back={} replies={} layout={}",
            self.front, self.back, self.replies, self.layout
        );
        if let Some(size) = self.reply_key {
            line.push_str(&format!(" {REPLY_KEY_WORD}={size}"));
        }
        if let Some(size) = self.reply_key6 {
            line.push_str(&format!(" {REPLY_KEY6_WORD}={size}"));
        }
        line
    }

    /// The same identity in the words of the version before the one whose
    /// words it uses: without `reply_key6=`, then without `reply_key=`;
    /// `None` once it says neither.
    pub fn in_older_words(&self) -> Option<Identity> {
        let mut older = self.clone();
        if older.reply_key6.take().is_none() {
            older.reply_key.take()?;
        }
        Some(older)
    }

    /// The identity a request line carries; an error (the reply) if it is not
    /// one this process understands.
    pub fn parse(line: &str) -> Result<Identity, String> {
        let mut words = line.split_whitespace();
        if words.next() != Some(VERB) {
            return Err(format!("not a takeover request: {:?}", line.trim()));
        }
        let protocol = format!("protocol={PROTOCOL}");
        if words.next() != Some(protocol.as_str()) {
            return Err(format!(
                "takeover refused: the new process speaks another takeover protocol than this \
                 one ({protocol}); restart instead"
            ));
        }
        Self::fields(words).ok_or_else(|| format!("{MALFORMED} {:?}", line.trim()))
    }

    fn fields<'a>(words: impl Iterator<Item = &'a str>) -> Option<Identity> {
        let (mut front, mut back, mut replies, mut layout) = (None, None, None, None);
        let (mut reply_key, mut reply_key6) = (None, None);
        for w in words {
            match w.split_once('=') {
                Some(("front", v)) => front = Some(v.to_owned()),
                Some(("back", v)) => back = Some(v.to_owned()),
                Some(("replies", v)) => replies = Some(v.to_owned()),
                Some(("layout", v)) => layout = Some(v.to_owned()),
                Some((REPLY_KEY_WORD, v)) => reply_key = Some(v.parse().ok()?),
                Some((REPLY_KEY6_WORD, v)) => reply_key6 = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(Identity {
            front: front?,
            back: back?,
            replies: replies?,
            layout: layout?,
            reply_key,
            reply_key6,
        })
    }

    /// Why `new` cannot take over from `self`, if it cannot.
    pub fn refusal(&self, new: &Identity) -> Option<String> {
        if (&self.front, &self.back) != (&new.front, &new.back) {
            return Some(format!(
                "takeover refused: this dispatchd serves front {} and back {}, the new one's \
                 configuration names front {} and back {}",
                self.front, self.back, new.front, new.back
            ));
        }
        if self.replies != new.replies {
            return Some(format!(
                "takeover refused: this dispatchd runs reply_mode {}, the new one {}; restart instead",
                self.replies, new.replies
            ));
        }
        if self.layout != new.layout {
            return Some(format!(
                "takeover refused: the workers would serve other queues (running {}, new {}); \
                 records could not be handed to the worker that receives their frames",
                self.layout, new.layout
            ));
        }
        // An older process copies the tracked map with its own, smaller key
        // (no protocol): the kernel would write this map's keys past its
        // buffers. In stateless mode it does not read the map.
        if self.replies == "tracked" && self.reply_key.is_some() && new.reply_key.is_none() {
            return Some(format!(
                "takeover refused: the new process is of an older version, whose map of \
                 tracked connections has keys without the protocol; it cannot copy this one's \
                 ({} bytes); restart instead",
                self.reply_key.unwrap_or_default()
            ));
        }
        // A new process that asks for the IPv6 map copies it with its own
        // key size.
        if let (true, Some(mine), Some(theirs)) =
            (self.replies == "tracked", self.reply_key6, new.reply_key6)
        {
            if mine != theirs {
                return Some(format!(
                    "takeover refused: the new process's map of tracked IPv6 connections has \
                     keys of {theirs} bytes, this one's of {mine}; restart instead"
                ));
            }
        }
        None
    }
}

/// One record as it travels: its owner and its times as ages at `now_ns`.
pub fn encode(worker: u16, r: &FlowRecord, now_ns: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&worker.to_le_bytes());
    out.extend_from_slice(&r.key.client_ip.octets());
    out.extend_from_slice(&r.key.service_ip.octets());
    out.extend_from_slice(&r.key.client_port.to_le_bytes());
    out.extend_from_slice(&r.key.service_port.to_le_bytes());
    out.push(r.key.protocol);
    out.extend_from_slice(&r.daemon.ip().octets());
    out.extend_from_slice(&r.daemon.port().to_le_bytes());
    out.extend_from_slice(&now_ns.saturating_sub(r.created_ns).to_le_bytes());
    out.extend_from_slice(&now_ns.saturating_sub(r.last_seen_ns).to_le_bytes());
    out.extend_from_slice(&r.client_next.to_le_bytes());
    out.extend_from_slice(&r.client_ack.to_le_bytes());
    out.push(r.state.0);
}

/// A record from its wire form, its times on this process's clock at
/// `now_ns`. Times older than this process's start become its start (ages
/// are kept as far as the clock goes back; a record may look younger, never
/// older). Its backend is unknown until a worker adopts it.
pub fn decode(b: &[u8; RECORD_WIRE], now_ns: u64) -> (u16, FlowRecord) {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(v)
    };
    let ip_at = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
    let record = FlowRecord {
        key: FlowKey {
            client_ip: ip_at(2),
            service_ip: ip_at(6),
            client_port: u16_at(10),
            service_port: u16_at(12),
            protocol: b[14],
        },
        backend: BackendId(0),
        daemon: SocketAddrV4::new(ip_at(15), u16_at(19)),
        created_ns: now_ns.saturating_sub(u64_at(21)),
        last_seen_ns: now_ns.saturating_sub(u64_at(29)),
        client_next: u32_at(37),
        client_ack: u32_at(41),
        state: TcpState(b[45]),
        epoch: 0,
    };
    (u16_at(0), record)
}

/// [`encode`] for an IPv6 record.
pub fn encode6(worker: u16, r: &FlowRecord6, now_ns: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&worker.to_le_bytes());
    out.extend_from_slice(&r.key.client_ip.octets());
    out.extend_from_slice(&r.key.service_ip.octets());
    out.extend_from_slice(&r.key.client_port.to_le_bytes());
    out.extend_from_slice(&r.key.service_port.to_le_bytes());
    out.push(r.key.protocol);
    out.extend_from_slice(&r.daemon_ip.octets());
    out.extend_from_slice(&r.daemon_port.to_le_bytes());
    out.extend_from_slice(&now_ns.saturating_sub(r.created_ns).to_le_bytes());
    out.extend_from_slice(&now_ns.saturating_sub(r.last_seen_ns).to_le_bytes());
    out.extend_from_slice(&r.client_next.to_le_bytes());
    out.extend_from_slice(&r.client_ack.to_le_bytes());
    out.push(r.state.0);
}

/// [`decode`] for an IPv6 record.
pub fn decode6(b: &[u8; RECORD6_WIRE], now_ns: u64) -> (u16, FlowRecord6) {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(v)
    };
    let ip_at = |i: usize| {
        let mut v = [0u8; 16];
        v.copy_from_slice(&b[i..i + 16]);
        Ipv6Addr::from(v)
    };
    let record = FlowRecord6 {
        key: FlowKey6 {
            client_ip: ip_at(2),
            service_ip: ip_at(18),
            client_port: u16_at(34),
            service_port: u16_at(36),
            protocol: b[38],
        },
        backend: BackendId(0),
        daemon_ip: ip_at(39),
        daemon_port: u16_at(55),
        created_ns: now_ns.saturating_sub(u64_at(57)),
        last_seen_ns: now_ns.saturating_sub(u64_at(65)),
        client_next: u32_at(73),
        client_ack: u32_at(77),
        state: TcpState(b[81]),
        epoch: 0,
    };
    (u16_at(0), record)
}

/// One section of records as it arrives: its line (`<word> <count>`) and
/// `count` records of `wire` bytes. `None` if the stream ends before the
/// line (the peer had no such section to send); an error if the line is not
/// that section's or the records are cut short.
fn read_section(reader: &mut impl BufRead, word: &str, wire: usize) -> Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let count: u64 = line
        .trim()
        .strip_prefix(word)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected line {:?} instead of the {word}", line.trim()))?;
    let len = count
        .checked_mul(wire as u64)
        .with_context(|| format!("{count} {word} cannot be"))?;
    // Read as they come rather than allocated from the count up front: a
    // wrong count is a short read, not an allocation of its size.
    let mut bytes = Vec::new();
    reader.take(len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        bail!(
            "{word}: {} bytes of {len} came before the stream ended",
            bytes.len()
        );
    }
    Ok(Some(bytes))
}

/// Everything the old process handed over: (owner, record) pairs, times on
/// this process's clock.
#[derive(Debug, Default)]
pub struct Handed {
    pub records: Vec<(u16, FlowRecord)>,
    pub records6: Vec<(u16, FlowRecord6)>,
}

/// Reads both sections (see the module's note): the IPv4 one must be there;
/// the IPv6 one is empty if an older process ended the stream without it.
/// A broken IPv6 section is an error, as a broken IPv4 one is.
pub fn read_records(reader: &mut impl BufRead, now_ns: impl Fn() -> u64) -> Result<Handed> {
    let v4 = read_section(reader, "records", RECORD_WIRE)?
        .context("the stream ended before the records")?;
    let v6 = read_section(reader, RECORDS6, RECORD6_WIRE)?;
    let now = now_ns();
    let records = v4
        .chunks_exact(RECORD_WIRE)
        .filter_map(|c| c.try_into().ok())
        .map(|c| decode(c, now))
        .collect();
    let records6 = v6
        .unwrap_or_default()
        .chunks_exact(RECORD6_WIRE)
        .filter_map(|c| c.try_into().ok())
        .map(|c| decode6(c, now))
        .collect();
    Ok(Handed { records, records6 })
}

/// What each daemon ADDR:PORT serves in `services` (of one family): the
/// protocols of the services it is a daemon of.
pub fn daemon_protocols<A: Copy + Ord>(
    services: &[ServiceConfig<A>],
) -> BTreeMap<A, BTreeSet<Protocol>> {
    let mut map = BTreeMap::<A, BTreeSet<Protocol>>::new();
    for s in services {
        for b in &s.backends {
            map.entry(b.addr).or_default().insert(s.protocol);
        }
    }
    map
}

/// An older running process's tracked keys (no protocol) in this version's
/// layout.
#[derive(Debug, Default)]
pub struct ConvertedKeys {
    /// The keys of daemons that serve one protocol in this process's
    /// configuration: the old key's connection was of that protocol.
    pub certain: Vec<ReplyKey>,
    /// The keys of daemons that serve both: a key of each protocol, of which
    /// one is the connection's. Inserted after `certain` (the map may not have
    /// room for both); the ones no handed record backs are removed once the
    /// records came ([`Settled::unbacked`], as any copied key).
    pub guessed: Vec<ReplyKey>,
    /// Keys of daemons this process's configuration does not have: its
    /// program does not take their replies whatever the map holds.
    pub dropped: usize,
}

/// Converts old keys, the protocol taken from `protocols` (see
/// [`daemon_protocols`]): a TCP-only or UDP-only daemon's key gets that
/// protocol; a daemon that serves both gets a key of each, as the old key
/// stood for a connection of either.
pub fn convert_v0_keys(
    old: &[ReplyKeyV0],
    protocols: &BTreeMap<SocketAddrV4, BTreeSet<Protocol>>,
) -> ConvertedKeys {
    let mut out = ConvertedKeys::default();
    for key in old {
        let (client, daemon) = reply_key_v0_parts(key);
        let Some(served) = protocols.get(&daemon).filter(|p| !p.is_empty()) else {
            out.dropped += 1;
            continue;
        };
        let into = if served.len() > 1 {
            &mut out.guessed
        } else {
            &mut out.certain
        };
        into.extend(
            served
                .iter()
                .map(|protocol| reply_key(client, daemon, protocol.number())),
        );
    }
    out
}

/// The keys copied from the running process's map before the switch, each
/// found by its connection: set out before the switch, so that the switch
/// window, where service frames are dropped, has only the records to take
/// off (half the hashing of a pass that set out both in it).
pub struct CopiedKeys<K: TrackedKey> {
    keys: Vec<K>,
    /// Each key's connection, and where the key is in `keys`.
    by_connection: ahash::AHashMap<(K::Addr, K::Addr, u8), u32>,
}

impl<K: TrackedKey> CopiedKeys<K> {
    pub fn new(keys: Vec<K>) -> Self {
        let mut by_connection = ahash::AHashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            by_connection.insert(k.parts(), i as u32);
        }
        Self {
            keys,
            by_connection,
        }
    }

    /// Sets the copied keys against the handed records this process keeps
    /// (those of daemons its configuration has, `served`, see
    /// [`daemon_protocols`]; its workers refuse the others). Runs in the
    /// switch window, before the workers serve: one hashed look per record. Either
    /// family: `R` is its records, whose reply keys are the map's.
    pub fn settle<R: Tracked<ReplyKey = K>>(
        mut self,
        records: &[(u16, R)],
        served: &BTreeMap<K::Addr, BTreeSet<Protocol>>,
    ) -> Settled<K> {
        let mut unwritten = Vec::new();
        for (_, r) in records {
            let key = r.reply_key();
            let connection = key.parts();
            let (_, daemon, protocol) = connection;
            let kept = served
                .get(&daemon)
                .is_some_and(|p| p.iter().any(|p| p.number() == protocol));
            if kept && self.by_connection.remove(&connection).is_none() {
                unwritten.push(key);
            }
        }
        let mut left: Vec<u32> = self.by_connection.into_values().collect();
        left.sort_unstable();
        Settled {
            unbacked: left.into_iter().map(|i| self.keys[i as usize]).collect(),
            unwritten,
        }
    }
}

/// The copied keys set against the kept records ([`CopiedKeys::settle`]):
/// what the map needs before the workers serve, so that they write no key
/// of an inherited record (a million took their first 0.6 s).
#[derive(Debug, Default)]
pub struct Settled<K> {
    /// Copied keys no kept record is the connection of (in the order they
    /// were copied): a record of a daemon this configuration lacks; a
    /// connection the running process ended between the copy and the switch
    /// (its key left that map, not this one); a guess of the wrong protocol.
    /// Left in the map, nothing would ever remove them, and each takes the
    /// room of a connection.
    pub unbacked: Vec<K>,
    /// Kept records' keys that were not copied: connections the running
    /// process opened between the copy and the switch, guesses the map had
    /// no room for, every record of a map that was not handed (an older
    /// process's IPv6).
    pub unwritten: Vec<K>,
}

/// [`CopiedKeys::settle`] in one call, for the tests.
#[cfg(test)]
fn settle<R: Tracked>(
    copied: &[R::ReplyKey],
    records: &[(u16, R)],
    served: &BTreeMap<<R::ReplyKey as TrackedKey>::Addr, BTreeSet<Protocol>>,
) -> Settled<R::ReplyKey> {
    CopiedKeys::new(copied.to_vec()).settle(records, served)
}

/// The copied keys [`settle`] finds unbacked.
#[cfg(test)]
fn unbacked<R: Tracked>(
    copied: &[R::ReplyKey],
    records: &[(u16, R)],
    served: &BTreeMap<<R::ReplyKey as TrackedKey>::Addr, BTreeSet<Protocol>>,
) -> Vec<R::ReplyKey> {
    settle(copied, records, served).unbacked
}

/// B's side, up to the switch: the connection to A and the links A gave.
pub struct Request {
    stream: UnixStream,
    /// When the links came: the old process waits [`STEP_TIMEOUT`] from then
    /// for `switched`, then points them back at its own program.
    links_at: Instant,
    pub links: Vec<OwnedFd>,
    /// A's map of tracked connections.
    pub tracked: OwnedFd,
    /// A's map of tracked IPv6 connections; `None` from an older A.
    pub tracked6: Option<OwnedFd>,
    /// A's process id, as it said.
    pub pid: u32,
}

impl Request {
    /// Asks the dispatchd on `socket` to hand over; returns its links, its
    /// refusal as the error, or `None` if no process listens there (no file,
    /// or the file of one that is gone).
    pub fn send(socket: &Path, me: &Identity) -> Result<Option<Request>> {
        let mut asked = me.clone();
        loop {
            match Self::send_once(socket, &asked) {
                // An older running process refuses a word it does not know,
                // and goes on unchanged: ask it as the version before would.
                Err(e) if e.to_string().starts_with(MALFORMED) => {
                    let Some(older) = asked.in_older_words() else {
                        return Err(e);
                    };
                    tracing::info!(
                        "the running dispatchd is of an older version: asking it to hand over \
                         in the words of the version before"
                    );
                    asked = older;
                }
                other => return other,
            }
        }
    }

    fn send_once(socket: &Path, me: &Identity) -> Result<Option<Request>> {
        let mut stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("connecting to {} to take over", socket.display()))
            }
        };
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        stream.write_all(format!("{}\n", me.line()).as_bytes())?;
        let mut buf = [0u8; 1024];
        let (n, links) = loop {
            match sys::recv_fds(stream.as_fd(), &mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other.context("reading the takeover answer")?,
            }
        };
        let answer = String::from_utf8_lossy(&buf[..n]);
        let answer = answer.trim();
        if let Some(e) = answer.strip_prefix("error:") {
            bail!("{}", e.trim());
        }
        let pid = answer
            .strip_prefix("links ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected takeover answer {answer:?}"))?;
        // The IPv6 map comes to a request that asked for it.
        let expected = 3 + usize::from(me.reply_key6.is_some());
        if links.len() != expected {
            bail!(
                "the running dispatchd passed {} descriptors, not {expected}",
                links.len()
            );
        }
        let mut links = links.into_iter();
        let front_back = links.by_ref().take(2).collect();
        let tracked = links.next().context("a tracked map")?;
        Ok(Some(Request {
            stream,
            links_at: Instant::now(),
            links: front_back,
            tracked,
            tracked6: links.next(),
            pid,
        }))
    }

    /// Whether this process may still re-point the links: not once A may have
    /// stopped waiting for it (within [`SWITCH_MARGIN`] of [`STEP_TIMEOUT`]).
    /// A that gave up serves on through links it points back at its own
    /// program; re-pointing them then would take its traffic from a process
    /// that hands no records over, and leave A running with none.
    pub fn may_switch(&self) -> Result<()> {
        let waited = self.links_at.elapsed();
        if waited + SWITCH_MARGIN >= STEP_TIMEOUT {
            bail!(
                "{} ms since the running dispatchd (pid {}) handed its links over: it waits \
                 {} s for the switch, then serves on; not switching (copying its tracked \
                 connections took too long?)",
                waited.as_millis(),
                self.pid,
                STEP_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }

    /// Tells A that the links point at this process's program, and reads the
    /// records A sends once its workers stopped (see [`read_records`]).
    pub fn switched(mut self, now_ns: impl Fn() -> u64) -> Result<Handed> {
        self.stream.write_all(b"switched\n")?;
        read_records(&mut BufReader::new(self.stream), now_ns)
    }
}

/// The test hook that makes a new process slow between taking the links and
/// re-pointing them (milliseconds), as copying a very large map of tracked
/// connections would.
pub const SLOW_SWITCH_ENV: &str = "DISPATCHD_TEST_TAKEOVER_SLOW_SWITCH_MS";

/// Sleeps if the test hook asks for it (see [`SLOW_SWITCH_ENV`]).
pub fn test_slow_switch() {
    if let Some(ms) = std::env::var(SLOW_SWITCH_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tracing::warn!("test hook: {ms} ms before the switch");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Dies by SIGKILL if the test hook asks for it at `stage`.
pub fn test_die_at(stage: &str) {
    if std::env::var(DIE_AT_ENV).is_ok_and(|s| s == stage) {
        tracing::error!("test hook: killed at takeover stage {stage}");
        sys::kill_self();
    }
}

/// The test hook that holds a new process between reading the state file at
/// start and asking for the takeover: it makes the file this names and waits
/// until the test removes it (at most 10 s), so that a test can change the
/// old process's overrides in that window.
pub const PAUSE_ENV: &str = "DISPATCHD_TEST_TAKEOVER_PAUSE_FILE";

/// Pauses if the test hook asks for it (see [`PAUSE_ENV`]).
pub fn test_pause() {
    let Some(path) = std::env::var_os(PAUSE_ENV) else {
        return;
    };
    if std::fs::write(&path, b"paused\n").is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&path).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A's side, once it has the request: the links and the tracked map passed
/// (`fds`) and B's "switched" read back. Blocking, with timeouts: the
/// loop waits here for B (a few milliseconds), the workers forward meanwhile.
pub fn hand_links(stream: &mut UnixStream, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<()> {
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    sys::send_fds(
        stream.as_fd(),
        format!("links {}\n", std::process::id()).as_bytes(),
        fds,
    )
    .context("passing the links")?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') && got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => bail!("the new process went away before it switched"),
            Ok(n) => got += n,
            // The loop's io_uring interrupts its thread's blocking calls to
            // run completion work: not the peer's doing.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting for the new process to switch"),
        }
    }
    match std::str::from_utf8(&buf[..got]).map(str::trim) {
        Ok("switched") => Ok(()),
        other => bail!("the new process said {other:?} instead of switched"),
    }
}

/// A's last step: the records of every worker, with their owner, IPv4 then
/// IPv6 (`records`, `records6`: [`encode`]d and [`encode6`]d). An older new
/// process closes the stream after the IPv4 section: the IPv6 one's failure
/// is then its own error, told apart from the IPv4 one's.
pub fn send_records(stream: &mut UnixStream, records: &[u8], records6: &[u8]) -> Result<()> {
    let count = records.len() / RECORD_WIRE;
    stream.write_all(format!("records {count}\n").as_bytes())?;
    stream.write_all(records)?;
    stream.flush()?;
    let count6 = records6.len() / RECORD6_WIRE;
    let mut section6 = format!("{RECORDS6} {count6}\n").into_bytes();
    section6.extend_from_slice(records6);
    stream.write_all(&section6).with_context(|| {
        format!(
            "the IPv4 records went over, the {count6} IPv6 ones did not \
             (a new process of an older version takes none)"
        )
    })?;
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(front: &str, layout: &str) -> Identity {
        Identity {
            front: front.into(),
            back: "l1".into(),
            replies: "stateless".into(),
            layout: layout.into(),
            reply_key: Some(crate::config::REPLY_KEY_SIZE),
            reply_key6: Some(crate::config::REPLY_KEY6_SIZE),
        }
    }

    #[test]
    fn the_request_line_survives() {
        let me = identity("l0", "0:f0/b0;1:f1/b1");
        assert_eq!(Identity::parse(&me.line()), Ok(me.clone()));
        assert!(Identity::parse("takeover protocol=1 front=l0")
            .unwrap_err()
            .starts_with("malformed"));
        assert!(Identity::parse("stats").is_err());
        let other = Identity::parse(
            "takeover protocol=0 front=l0 back=l1 replies=stateless layout=0:f0/b0",
        );
        assert!(other.unwrap_err().contains("another takeover protocol"));
        assert_eq!(me.refusal(&me), None);
        let e = me.refusal(&identity("l2", "0:f0/b0;1:f1/b1")).unwrap();
        assert!(e.contains("front l0") && e.contains("front l2"), "{e}");
        let e = me.refusal(&identity("l0", "0:f0,1/b0,1")).unwrap();
        assert!(e.contains("other queues"), "{e}");
        let tracked = Identity {
            replies: "tracked".into(),
            ..me.clone()
        };
        let e = me.refusal(&tracked).unwrap();
        assert!(e.contains("reply_mode stateless"), "{e}");
    }

    #[test]
    fn a_record_survives_the_wire_with_its_ages() {
        let r = FlowRecord {
            key: FlowKey {
                client_ip: Ipv4Addr::new(198, 18, 0, 2),
                service_ip: Ipv4Addr::new(198, 18, 0, 100),
                client_port: 40000,
                service_port: 80,
                protocol: 6,
            },
            backend: BackendId(3),
            daemon: "198.19.0.12:8080".parse().unwrap(),
            created_ns: 1_000,
            last_seen_ns: 9_000,
            client_next: 0xdead_beef,
            client_ack: 7,
            state: TcpState::ESTABLISHED,
            epoch: 4,
        };
        let mut wire = Vec::new();
        encode(2, &r, 10_000, &mut wire);
        assert_eq!(wire.len(), RECORD_WIRE);
        let (worker, back) = decode(wire.as_slice().try_into().unwrap(), 50_000);
        assert_eq!(worker, 2);
        assert_eq!(
            back,
            FlowRecord {
                created_ns: 41_000,
                last_seen_ns: 49_000,
                backend: BackendId(0),
                epoch: 0,
                ..r
            }
        );
        // A clock that started after the record: its start, not a wrap.
        let (_, young) = decode(wire.as_slice().try_into().unwrap(), 5_000);
        assert_eq!((young.created_ns, young.last_seen_ns), (0, 4_000));
    }

    #[test]
    fn links_and_records_cross_a_socket() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let peer = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, fds) = sys::recv_fds(b.as_fd(), &mut buf).unwrap();
            assert_eq!(
                &buf[..n],
                format!("links {}\n", std::process::id()).as_bytes()
            );
            assert_eq!(fds.len(), 3);
            let mut b = b;
            b.write_all(b"switched\n").unwrap();
            let mut said = String::new();
            b.read_to_string(&mut said).unwrap();
            said
        });
        hand_links(&mut a, &[file.as_fd(), file.as_fd(), file.as_fd()]).unwrap();
        send_records(&mut a, &[], &[]).unwrap();
        drop(a);
        assert_eq!(peer.join().unwrap(), "records 0\nrecords6 0\n");
    }

    fn record6(client_port: u16) -> FlowRecord6 {
        FlowRecord6 {
            key: FlowKey6 {
                client_ip: "fd00:18::2".parse().unwrap(),
                service_ip: "fd00:18::100".parse().unwrap(),
                client_port,
                service_port: 80,
                protocol: 6,
            },
            backend: BackendId(5),
            daemon_ip: "fd00:19::12".parse().unwrap(),
            daemon_port: 8080,
            created_ns: 1_000,
            last_seen_ns: 9_000,
            client_next: 0xdead_beef,
            client_ack: 0x0102_0304,
            state: TcpState(TcpState::ESTABLISHED.0 | TcpState::FIN_CLIENT.0),
            epoch: 4,
        }
    }

    #[test]
    fn an_ipv6_record_survives_the_wire_with_its_ages() {
        let r = record6(40000);
        let mut wire = Vec::new();
        encode6(3, &r, 10_000, &mut wire);
        assert_eq!(wire.len(), RECORD6_WIRE);
        let (worker, back) = decode6(wire.as_slice().try_into().unwrap(), 50_000);
        assert_eq!(worker, 3);
        assert_eq!(
            back,
            FlowRecord6 {
                created_ns: 41_000,
                last_seen_ns: 49_000,
                backend: BackendId(0),
                epoch: 0,
                ..r
            }
        );
        let (_, young) = decode6(wire.as_slice().try_into().unwrap(), 5_000);
        assert_eq!((young.created_ns, young.last_seen_ns), (0, 4_000));
    }

    fn both_sections(v4: usize, v6: usize) -> Vec<u8> {
        let (mut records, mut records6) = (Vec::new(), Vec::new());
        let r4 = FlowRecord {
            key: FlowKey {
                client_ip: Ipv4Addr::new(198, 18, 0, 2),
                service_ip: Ipv4Addr::new(198, 18, 0, 100),
                client_port: 0,
                service_port: 80,
                protocol: 6,
            },
            backend: BackendId(0),
            daemon: "198.19.0.12:8080".parse().unwrap(),
            created_ns: 0,
            last_seen_ns: 0,
            client_next: 1,
            client_ack: 2,
            state: TcpState::ESTABLISHED,
            epoch: 0,
        };
        for i in 0..v4 {
            let mut r = r4;
            r.key.client_port = 1000 + i as u16;
            encode(0, &r, 0, &mut records);
        }
        for i in 0..v6 {
            encode6(1, &record6(2000 + i as u16), 10_000, &mut records6);
        }
        let mut out = format!("records {v4}\n").into_bytes();
        out.extend_from_slice(&records);
        out.extend_from_slice(format!("records6 {v6}\n").as_bytes());
        out.extend_from_slice(&records6);
        out
    }

    #[test]
    fn both_sections_are_read_and_an_older_peers_stream_has_no_ipv6_one() {
        let wire = both_sections(2, 3);
        let handed = read_records(&mut wire.as_slice(), || 20_000).unwrap();
        assert_eq!(handed.records.len(), 2);
        let ports: Vec<u16> = handed
            .records6
            .iter()
            .map(|(_, r)| r.key.client_port)
            .collect();
        assert_eq!(ports, [2000, 2001, 2002]);
        assert!(handed.records6.iter().all(|(w, r)| *w == 1
            && r.daemon() == "[fd00:19::12]:8080".parse().unwrap()
            && r.created_ns == 11_000));
        // An older process: the IPv4 section, then the end of the stream.
        let old = both_sections(2, 0);
        let cut = old.len() - "records6 0\n".len();
        let handed = read_records(&mut &old[..cut], || 0).unwrap();
        assert_eq!((handed.records.len(), handed.records6.len()), (2, 0));
        // Sent over a socket as A sends them.
        let (mut a, b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || read_records(&mut BufReader::new(b), || 0));
        let mut r6 = Vec::new();
        encode6(0, &record6(7), 0, &mut r6);
        send_records(&mut a, &[], &r6).unwrap();
        drop(a);
        let handed = reader.join().unwrap().unwrap();
        assert_eq!((handed.records.len(), handed.records6.len()), (0, 1));
    }

    #[test]
    fn a_malformed_stream_is_an_error_not_a_panic() {
        let whole = both_sections(1, 2);
        let v4_end = "records 1\n".len() + RECORD_WIRE;
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("ipv4 records cut short", whole[..v4_end - 1].to_vec()),
            ("ipv6 records cut short", whole[..whole.len() - 1].to_vec()),
            ("ipv6 line cut short", whole[..v4_end + 3].to_vec()),
            ("no count", b"records\n".to_vec()),
            ("a count that is not a number", b"records -1\n".to_vec()),
            (
                "a count past any memory",
                format!("records {}\n", u64::MAX).into_bytes(),
            ),
            (
                "an ipv6 count past any memory",
                [
                    &whole[..v4_end],
                    format!("records6 {}\n", u64::MAX / 2).as_bytes(),
                ]
                .concat(),
            ),
            ("sections swapped", b"records6 0\nrecords 0\n".to_vec()),
            (
                "another line after the ipv4 section",
                [&whole[..v4_end], b"links 3\n".as_slice()].concat(),
            ),
            ("not utf-8", vec![0xff, 0xfe, b'\n']),
        ];
        for (what, wire) in bad {
            assert!(
                read_records(&mut wire.as_slice(), || 0).is_err(),
                "{what}: read as records"
            );
        }
    }

    /// An older process's request has no `reply_key=`: still read, and
    /// refused only where it would copy this one's tracked map.
    #[test]
    fn an_older_new_process_is_refused_only_with_tracked_replies() {
        let me = identity("l0", "0:f0/b0");
        assert!(
            me.line().ends_with(" reply_key=16 reply_key6=40"),
            "{}",
            me.line()
        );
        let old_line = "takeover protocol=1 front=l0 back=l1 replies=stateless layout=0:f0/b0";
        let old = Identity::parse(old_line).unwrap();
        let previous = me.in_older_words().unwrap();
        assert_eq!(previous.line(), format!("{old_line} reply_key=16"));
        assert_eq!(Some(old.clone()), previous.in_older_words());
        assert_eq!(old.in_older_words(), None, "no older words than these");
        assert_eq!(old.line(), old_line, "an older process's words exactly");
        assert_eq!(me.refusal(&old), None, "stateless: the map is not read");
        let tracked = Identity {
            replies: "tracked".into(),
            ..me.clone()
        };
        let e = tracked
            .refusal(&Identity {
                replies: "tracked".into(),
                ..old
            })
            .unwrap();
        assert!(e.contains("older version") && e.contains("restart"), "{e}");
        assert_eq!(tracked.refusal(&tracked), None);
        let bad = format!("{old_line} reply_key=many");
        assert!(Identity::parse(&bad).unwrap_err().starts_with(MALFORMED));
        // A new process of the version before (no `reply_key6=`) takes no
        // IPv6 map: not refused, it writes its own from the records.
        assert_eq!(tracked.refusal(&tracked.in_older_words().unwrap()), None);
    }

    /// A new process that asks for the IPv6 tracked map with another key
    /// size would copy it wrongly: refused in tracked mode, where it copies.
    #[test]
    fn another_ipv6_key_size_is_refused_with_tracked_replies() {
        let me = identity("l0", "0:f0/b0");
        let other = Identity {
            reply_key6: Some(36),
            ..me.clone()
        };
        assert_eq!(Identity::parse(&other.line()), Ok(other.clone()));
        assert_eq!(me.refusal(&other), None, "stateless: the map is not read");
        let tracked = |id: &Identity| Identity {
            replies: "tracked".into(),
            ..id.clone()
        };
        let e = tracked(&me).refusal(&tracked(&other)).unwrap();
        assert!(e.contains("36 bytes") && e.contains("restart"), "{e}");
        let bad = format!("{} reply_key6=", me.in_older_words().unwrap().line());
        assert!(Identity::parse(&bad).unwrap_err().starts_with(MALFORMED));
    }

    /// A running process of an older version answers words it does not know
    /// as a malformed request and goes on; the new process asks again in the
    /// words of the version before, and once more in those of the one before
    /// that. An A that takes `reply_key=` but not `reply_key6=` hands three
    /// descriptors (no IPv6 map), as does the oldest.
    #[test]
    fn an_older_running_process_is_asked_again_in_older_words() {
        let me = identity("l0", "0:f0/b0");
        let previous = me.in_older_words().unwrap();
        let oldest = previous.in_older_words().unwrap();
        // The A of each version: the words it takes, the descriptors it
        // passes, and how many requests the new process makes until then.
        type Takes = fn(&Identity) -> bool;
        let versions: [(&str, Takes, usize, usize); 3] = [
            ("current", |_| true, 4, 1),
            ("previous", |id| id.reply_key6.is_none(), 3, 2),
            ("oldest", |id| id.reply_key.is_none(), 3, 3),
        ];
        for (version, understands, passes, asks) in versions {
            let dir = std::env::temp_dir().join(format!(
                "dispatchd-takeover-{}-{version}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("ctl.sock");
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let a = std::thread::spawn(move || {
                let mut lines = Vec::new();
                loop {
                    let (stream, _) = listener.accept().unwrap();
                    let mut line = String::new();
                    BufReader::new(stream.try_clone().unwrap())
                        .read_line(&mut line)
                        .unwrap();
                    lines.push(line.trim().to_owned());
                    if !Identity::parse(&line).is_ok_and(|id| understands(&id)) {
                        let mut s = stream;
                        s.write_all(format!("error: {MALFORMED} {:?}\n", line.trim()).as_bytes())
                            .unwrap();
                        continue;
                    }
                    let file = std::fs::File::open("/proc/self/exe").unwrap();
                    let fds = vec![file.as_fd(); passes];
                    sys::send_fds(stream.as_fd(), b"links 4242\n", &fds).unwrap();
                    return lines;
                }
            });
            let request = Request::send(&path, &me)
                .unwrap()
                .expect("a running process");
            assert_eq!(request.pid, 4242, "{version}");
            assert_eq!(request.tracked6.is_some(), passes == 4, "{version}");
            let asked = [&me, &previous, &oldest].map(Identity::line);
            assert_eq!(a.join().unwrap(), asked[..asks], "{version}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn old_key(client: SocketAddrV4, daemon: SocketAddrV4) -> ReplyKeyV0 {
        let mut k = [0u8; 12];
        k[..4].copy_from_slice(&client.ip().octets());
        k[4..8].copy_from_slice(&daemon.ip().octets());
        k[8..10].copy_from_slice(&client.port().to_be_bytes());
        k[10..].copy_from_slice(&daemon.port().to_be_bytes());
        k
    }

    fn key_bytes(k: &ReplyKey) -> Vec<u8> {
        [
            &k.client_addr.to_ne_bytes()[..],
            &k.daemon_addr.to_ne_bytes(),
            &k.client_port.to_ne_bytes(),
            &k.daemon_port.to_ne_bytes(),
            &[k.protocol],
            &k.pad,
        ]
        .concat()
    }

    /// An older process's keys (no protocol) become keys of this layout: the
    /// protocol from the daemon's services here; both for a daemon with a
    /// TCP and a UDP service (guesses until the records say which), none for
    /// a daemon this configuration lacks.
    #[test]
    fn old_tracked_keys_are_converted_by_the_daemons_services() {
        use crate::balance::{BackendSpec, PolicyKind};
        let tcp_only: SocketAddrV4 = "198.19.0.11:8080".parse().unwrap();
        let udp_only: SocketAddrV4 = "198.19.0.12:5353".parse().unwrap();
        let both: SocketAddrV4 = "198.19.0.13:53".parse().unwrap();
        let gone: SocketAddrV4 = "198.19.0.99:8080".parse().unwrap();
        let service = |address: &str, protocol, daemons: &[SocketAddrV4]| ServiceConfig {
            address: address.parse().unwrap(),
            protocol,
            policy: PolicyKind::default(),
            backends: daemons
                .iter()
                .map(|&addr| BackendSpec { addr, weight: 1 })
                .collect(),
            health: Default::default(),
        };
        let services = [
            service("198.18.0.100:80", Protocol::Tcp, &[tcp_only]),
            service("198.18.0.100:53", Protocol::Udp, &[udp_only, both]),
            service("198.18.0.101:53", Protocol::Tcp, &[both]),
        ];
        let protocols = daemon_protocols(&services);
        let client: SocketAddrV4 = "198.18.0.2:40000".parse().unwrap();
        let old = [
            old_key(client, tcp_only),
            old_key(client, udp_only),
            old_key(client, both),
            old_key(client, gone),
        ];
        let converted = convert_v0_keys(&old, &protocols);
        let (tcp, udp) = (Protocol::Tcp.number(), Protocol::Udp.number());
        let want = [
            (client, tcp_only, tcp),
            (client, udp_only, udp),
            (client, both, tcp),
            (client, both, udp),
        ];
        let all = || converted.certain.iter().chain(&converted.guessed);
        let got: Vec<_> = all().map(TrackedKey::parts).collect();
        assert_eq!(got, want);
        // The new layout is the old one, then the protocol and zeroed padding.
        for (new, i) in all().zip([0, 1, 2, 2]) {
            let bytes = key_bytes(new);
            assert_eq!(bytes.len(), crate::config::REPLY_KEY_SIZE as usize);
            assert_eq!(&bytes[..12], &old[i][..]);
            assert_eq!(&bytes[13..], &[0, 0, 0]);
        }
        let guessed: Vec<_> = converted.guessed.iter().map(TrackedKey::parts).collect();
        assert_eq!(guessed, [(client, both, tcp), (client, both, udp)]);
        assert_eq!(converted.dropped, 1);

        // The records say the connection to `both` was UDP: the TCP guess
        // is the one to remove.
        let record = established(
            FlowKey::new(client, "198.18.0.100:53".parse().unwrap(), udp),
            both,
        );
        let left = unbacked(&converted.guessed, &[(0, record)], &protocols);
        let left: Vec<_> = left.iter().map(TrackedKey::parts).collect();
        assert_eq!(left, [(client, both, tcp)]);
        assert_eq!(
            unbacked::<FlowRecord>(&converted.guessed, &[], &protocols).len(),
            2
        );
    }

    /// An established connection's record of `key` on `daemon`.
    fn established(key: FlowKey, daemon: SocketAddrV4) -> FlowRecord {
        FlowRecord {
            key,
            backend: BackendId(0),
            daemon,
            created_ns: 0,
            last_seen_ns: 0,
            client_next: 0,
            client_ack: 0,
            state: TcpState::ESTABLISHED,
            epoch: 0,
        }
    }

    /// A connection the running process ended after B copied its tracked
    /// map is in no handed record, and one of a daemon B's configuration
    /// lacks is refused: their copied keys are removed, the kept
    /// connections' keys stay.
    #[test]
    fn copied_keys_no_kept_record_backs_are_unbacked() {
        let vip: SocketAddrV4 = "198.18.0.100:80".parse().unwrap();
        let daemon: SocketAddrV4 = "198.19.0.11:8080".parse().unwrap();
        let gone: SocketAddrV4 = "198.19.0.12:8080".parse().unwrap();
        let client = |port| SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port);
        let mut copied: Vec<ReplyKey> = (40000..40004)
            .map(|port| reply_key(client(port), daemon, 6))
            .collect();
        copied.push(reply_key(client(40010), gone, 6));
        let services = [ServiceConfig {
            address: vip,
            protocol: Protocol::Tcp,
            policy: crate::balance::PolicyKind::default(),
            backends: vec![crate::balance::BackendSpec {
                addr: daemon,
                weight: 1,
            }],
            health: Default::default(),
        }];
        let served = daemon_protocols(&services);
        let record = |port| established(FlowKey::new(client(port), vip, 6), daemon);
        // 40001 ended; 40004 opened after the copy (its key comes from its
        // record when the workers start); 40010's daemon is not configured.
        let mut records: Vec<(u16, FlowRecord)> = [40000, 40002, 40003, 40004]
            .map(|p| (0, record(p)))
            .to_vec();
        let mut refused = record(40010);
        refused.daemon = gone;
        records.push((0, refused));
        let left = |records: &[(u16, FlowRecord)]| -> Vec<_> {
            (unbacked(&copied, records, &served).iter())
                .map(TrackedKey::parts)
                .collect()
        };
        assert_eq!(
            left(&records),
            [(client(40001), daemon, 6), (client(40010), gone, 6)]
        );
        let unwritten = |copied: &[ReplyKey], records: &[(u16, FlowRecord)]| -> Vec<_> {
            (settle(copied, records, &served).unwritten.iter())
                .map(TrackedKey::parts)
                .collect()
        };
        // Only the kept record whose key was not copied; not the refused one.
        assert_eq!(unwritten(&copied, &records), [(client(40004), daemon, 6)]);
        // A UDP record on 40002 backs no TCP key (nor is it served, so it
        // needs none written).
        records[1].1.key = FlowKey::new(client(40002), vip, 17);
        assert_eq!(
            left(&records),
            [
                (client(40001), daemon, 6),
                (client(40002), daemon, 6),
                (client(40010), gone, 6)
            ]
        );
        assert_eq!(unwritten(&copied, &records), [(client(40004), daemon, 6)]);
        // Nothing copied (a map not handed): nothing to remove, every kept
        // record's key to write.
        assert!(unbacked(&[], &records, &served).is_empty());
        assert_eq!(
            unwritten(&[], &records),
            [40000, 40003, 40004].map(|p| (client(p), daemon, 6))
        );
    }

    /// The same for the IPv6 map: the copied keys of ended connections and
    /// of daemons this process lacks go, the kept ones stay.
    #[test]
    fn copied_ipv6_keys_no_kept_record_backs_are_unbacked() {
        let kept = record6(40000);
        let vip = std::net::SocketAddrV6::new(kept.key.service_ip, kept.key.service_port, 0, 0);
        let mut gone = record6(40002);
        gone.daemon_ip = "fd00:19::13".parse().unwrap();
        let ended = record6(40001);
        let copied: Vec<_> = [&kept, &ended, &gone].map(|r| r.reply_key()).to_vec();
        let services = [ServiceConfig {
            address: vip,
            protocol: Protocol::Tcp,
            policy: crate::balance::PolicyKind::default(),
            backends: vec![crate::balance::BackendSpec {
                addr: kept.daemon(),
                weight: 1,
            }],
            health: Default::default(),
        }];
        let records = [(0, kept), (0, gone)];
        let left = unbacked(&copied, &records, &daemon_protocols(&services));
        let left: Vec<_> = left.iter().map(TrackedKey::parts).collect();
        assert_eq!(left, [ended.reply_key().parts(), gone.reply_key().parts()]);
    }
}
