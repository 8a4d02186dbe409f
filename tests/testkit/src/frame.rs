//! One encoder for every frame the tests, the testkit and the packet generator
//! make: Ethernet (optionally VLAN-tagged), IPv4 and TCP or UDP, lengths and
//! checksums written by etherparse. It shares nothing with dispatchd's own
//! `packet` module, so what dispatchd parses and rewrites is checked against an
//! independent encoding.
//!
//! A [`FrameSpec`] describes a well-formed frame and builds a [`Frame`]; the
//! frame's setters then turn it into the malformed variants dispatchd must
//! drop. A setter changes one field and leaves every checksum as it was, so a
//! frame can be broken in exactly one way; `reseal_*` recomputes a checksum
//! over whatever the bytes say afterwards.
use std::net::SocketAddrV4;

use std::net::Ipv4Addr;

use etherparse::{
    checksum::Sum16BitWords, icmpv4, EtherType, Ethernet2Header, Icmpv4Type, IpHeaders, IpNumber,
    Ipv4Header, Ipv4Options, PacketBuilder, SingleVlanHeader, TcpHeader, VlanId,
};

/// TCP flag bits, as they sit in the header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

const ETHERNET_LEN: usize = Ethernet2Header::LEN;
const IPV4_PROTOCOL_TCP: u8 = 6;
const IPV4_PROTOCOL_UDP: u8 = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// A well-formed frame. The TCP fields are ignored for UDP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// An 802.1Q tag with this VLAN id between the MACs and the IPv4 header.
    pub vlan: Option<u16>,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub ip_id: u16,
    pub dont_fragment: bool,
    /// Raw IPv4 options: a multiple of 4 bytes, at most 40.
    pub ip_options: Vec<u8>,
    pub transport: Transport,
    /// The flags byte, see [`tcp_flags`].
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub payload: Vec<u8>,
    /// Bytes after the IPv4 packet that belong to no header (Ethernet padding).
    pub padding: Vec<u8>,
}

impl FrameSpec {
    /// A TCP segment with no flags and no payload, TTL 64, DF set, between
    /// locally administered MACs.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4) -> FrameSpec {
        FrameSpec {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src,
            dst,
            ttl: 64,
            ip_id: 0,
            dont_fragment: true,
            ip_options: Vec::new(),
            transport: Transport::Tcp,
            tcp_flags: 0,
            seq: 0,
            ack: 0,
            window: u16::MAX,
            payload: Vec::new(),
            padding: Vec::new(),
        }
    }

    /// A UDP datagram with the same defaults as [`FrameSpec::tcp`].
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> FrameSpec {
        FrameSpec {
            transport: Transport::Udp,
            ..FrameSpec::tcp(src, dst)
        }
    }

    /// Panics on a spec etherparse cannot encode (options of a bad length, a
    /// VLAN id beyond 12 bits, a payload beyond 64 KiB): a bug in the caller.
    pub fn build(&self) -> Frame {
        let options = Ipv4Options::try_from(&self.ip_options[..])
            .unwrap_or_else(|e| panic!("IPv4 options {:?}: {e}", self.ip_options));
        let ip = Ipv4Header {
            source: self.src.ip().octets(),
            destination: self.dst.ip().octets(),
            time_to_live: self.ttl,
            identification: self.ip_id,
            dont_fragment: self.dont_fragment,
            options,
            ..Default::default()
        };
        let ip_header_len = ip.header_len();
        let mut bytes = Vec::new();
        let outer_type = match self.vlan {
            Some(_) => EtherType::VLAN_TAGGED_FRAME,
            None => EtherType::IPV4,
        };
        let ethernet = Ethernet2Header {
            source: self.src_mac,
            destination: self.dst_mac,
            ether_type: outer_type,
        };
        bytes.extend_from_slice(&ethernet.to_bytes());
        if let Some(id) = self.vlan {
            let tag = SingleVlanHeader {
                pcp: Default::default(),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(id).unwrap_or_else(|e| panic!("VLAN id {id}: {e}")),
                ether_type: EtherType::IPV4,
            };
            bytes.extend_from_slice(&tag.to_bytes());
        }
        let l3 = bytes.len();
        let packet = PacketBuilder::ip(IpHeaders::Ipv4(ip, Default::default()));
        let written = match self.transport {
            Transport::Tcp => {
                let mut tcp =
                    TcpHeader::new(self.src.port(), self.dst.port(), self.seq, self.window);
                let flag = |bit: u8| self.tcp_flags & bit != 0;
                tcp.fin = flag(tcp_flags::FIN);
                tcp.syn = flag(tcp_flags::SYN);
                tcp.rst = flag(tcp_flags::RST);
                tcp.psh = flag(tcp_flags::PSH);
                tcp.ack = flag(tcp_flags::ACK);
                tcp.urg = flag(tcp_flags::URG);
                tcp.ece = flag(tcp_flags::ECE);
                tcp.cwr = flag(tcp_flags::CWR);
                tcp.acknowledgment_number = self.ack;
                packet.tcp_header(tcp).write(&mut bytes, &self.payload)
            }
            Transport::Udp => packet
                .udp(self.src.port(), self.dst.port())
                .write(&mut bytes, &self.payload),
        };
        written.unwrap_or_else(|e| panic!("encoding {self:?}: {e}"));
        bytes.extend_from_slice(&self.padding);
        Frame {
            bytes,
            l3,
            ip_header_len,
        }
    }
}

/// What an ICMPv4 message says, for [`IcmpSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// Destination unreachable, fragmentation needed (code 4), with the
    /// next hop's MTU.
    FragNeeded { mtu: u16 },
    /// Destination unreachable, port unreachable (code 3).
    PortUnreachable,
    /// Time exceeded in transit (type 11, code 0).
    TimeExceeded,
    /// Parameter problem, the pointer at the offending byte (type 12, code 0).
    ParameterProblem { pointer: u8 },
    /// Source quench (type 4), deprecated.
    SourceQuench,
    /// Echo request (type 8): not an error.
    EchoRequest,
}

/// An ICMPv4 message in an Ethernet frame: the outer IPv4 header as the
/// defaults of [`FrameSpec::tcp`] (TTL as given, id 0, DF clear, as Linux's
/// icmp_send leaves it), the ICMP header and `quote` after it (for an error,
/// the start of the offending IPv4 packet, see [`Frame::ip_packet`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// The outer header's type of service (Linux sends errors with 0xc0).
    pub tos: u8,
    pub kind: IcmpKind,
    pub quote: Vec<u8>,
}

impl IcmpSpec {
    pub fn build(&self) -> Frame {
        let icmp_type = match self.kind {
            IcmpKind::FragNeeded { mtu } => Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
            ),
            IcmpKind::PortUnreachable => {
                Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port)
            }
            IcmpKind::TimeExceeded => {
                Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit)
            }
            IcmpKind::ParameterProblem { pointer } => Icmpv4Type::ParameterProblem(
                icmpv4::ParameterProblemHeader::PointerIndicatesError(pointer),
            ),
            IcmpKind::SourceQuench => Icmpv4Type::Unknown {
                type_u8: 4,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
            IcmpKind::EchoRequest => {
                Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 })
            }
        };
        let ip = Ipv4Header {
            source: self.src.octets(),
            destination: self.dst.octets(),
            time_to_live: self.ttl,
            dscp: etherparse::Ipv4Dscp::try_new(self.tos >> 2)
                .unwrap_or_else(|e| panic!("TOS {:#x}: {e}", self.tos)),
            ecn: etherparse::Ipv4Ecn::try_new(self.tos & 3)
                .unwrap_or_else(|e| panic!("TOS {:#x}: {e}", self.tos)),
            protocol: IpNumber::ICMP,
            dont_fragment: false,
            ..Default::default()
        };
        let ethernet = Ethernet2Header {
            source: self.src_mac,
            destination: self.dst_mac,
            ether_type: EtherType::IPV4,
        };
        let mut bytes = ethernet.to_bytes().to_vec();
        PacketBuilder::ip(IpHeaders::Ipv4(ip, Default::default()))
            .icmpv4(icmp_type)
            .write(&mut bytes, &self.quote)
            .unwrap_or_else(|e| panic!("encoding {self:?}: {e}"));
        Frame {
            bytes,
            l3: ETHERNET_LEN,
            ip_header_len: Ipv4Header::MIN_LEN,
        }
    }
}

/// A frame's bytes and where its IPv4 header starts and ends as built, which the
/// setters keep using however they change the header's own length fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Vec<u8>,
    l3: usize,
    ip_header_len: usize,
}

impl Frame {
    /// Any bytes, read as an untagged Ethernet frame holding an IPv4 header
    /// without options. The setters panic on bytes too short for their field.
    pub fn from_bytes(bytes: Vec<u8>) -> Frame {
        Frame {
            bytes,
            l3: ETHERNET_LEN,
            ip_header_len: Ipv4Header::MIN_LEN,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// For code under test that rewrites the frame in place.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The IPv4 packet: from its header to its total length (or the frame's
    /// end, if that comes first). The first bytes of it are what an ICMP error
    /// about the frame quotes.
    pub fn ip_packet(&self) -> &[u8] {
        let end = (self.l3 + usize::from(self.total_len())).min(self.bytes.len());
        &self.bytes[self.l3..end]
    }

    fn read16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    fn write16(&mut self, at: usize, value: u16) -> &mut Frame {
        self.bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
        self
    }

    fn l4(&self) -> usize {
        self.l3 + self.ip_header_len
    }

    /// Where the TCP or UDP checksum sits, by the header's protocol number.
    fn l4_checksum_at(&self) -> usize {
        match self.bytes[self.l3 + 9] {
            IPV4_PROTOCOL_UDP => self.l4() + 6,
            _ => self.l4() + 16,
        }
    }

    pub fn total_len(&self) -> u16 {
        self.read16(self.l3 + 2)
    }

    pub fn ip_checksum(&self) -> u16 {
        self.read16(self.l3 + 10)
    }

    pub fn l4_checksum(&self) -> u16 {
        self.read16(self.l4_checksum_at())
    }

    pub fn truncate(&mut self, len: usize) -> &mut Frame {
        self.bytes.truncate(len);
        self
    }

    /// The outermost EtherType (the one after the MACs).
    pub fn set_ether_type(&mut self, ether_type: u16) -> &mut Frame {
        self.write16(12, ether_type)
    }

    pub fn set_ip_version(&mut self, version: u8) -> &mut Frame {
        let b = &mut self.bytes[self.l3];
        *b = (version << 4) | (*b & 0x0f);
        self
    }

    /// The header length field in 32-bit words; the bytes stay where they are.
    pub fn set_ihl(&mut self, words: u8) -> &mut Frame {
        let b = &mut self.bytes[self.l3];
        *b = (*b & 0xf0) | (words & 0x0f);
        self
    }

    /// Makes the packet a fragment: MF and the offset (in 8-byte units) as
    /// given, DF cleared (a fragment cannot carry it).
    pub fn set_fragment(&mut self, more_fragments: bool, offset: u16) -> &mut Frame {
        let mf = if more_fragments { 0x2000 } else { 0 };
        self.write16(self.l3 + 6, mf | (offset & 0x1fff))
    }

    pub fn set_total_len(&mut self, len: u16) -> &mut Frame {
        self.write16(self.l3 + 2, len)
    }

    pub fn set_ttl(&mut self, ttl: u8) -> &mut Frame {
        self.bytes[self.l3 + 8] = ttl;
        self
    }

    pub fn set_protocol(&mut self, protocol: u8) -> &mut Frame {
        self.bytes[self.l3 + 9] = protocol;
        self
    }

    pub fn set_ip_checksum(&mut self, checksum: u16) -> &mut Frame {
        self.write16(self.l3 + 10, checksum)
    }

    /// The TCP data offset in 32-bit words (the reserved bits cleared).
    pub fn set_tcp_data_offset(&mut self, words: u8) -> &mut Frame {
        let at = self.l4() + 12;
        self.bytes[at] = words << 4;
        self
    }

    pub fn set_udp_len(&mut self, len: u16) -> &mut Frame {
        self.write16(self.l4() + 4, len)
    }

    pub fn set_l4_checksum(&mut self, checksum: u16) -> &mut Frame {
        self.write16(self.l4_checksum_at(), checksum)
    }

    /// Recomputes the IPv4 header checksum over the header as built (whatever
    /// its IHL field now says).
    pub fn reseal_ip_checksum(&mut self) -> &mut Frame {
        self.set_ip_checksum(0);
        let header = &self.bytes[self.l3..self.l4()];
        let sum = checksum(Sum16BitWords::new().add_slice(header));
        self.set_ip_checksum(sum)
    }

    /// Recomputes the TCP checksum over the segment from the header as built to
    /// the end of the IPv4 packet (or of the frame, if that comes first).
    pub fn reseal_tcp_checksum(&mut self) -> &mut Frame {
        let at = self.l4() + 16;
        self.write16(at, 0);
        let end = (self.l3 + usize::from(self.total_len())).min(self.bytes.len());
        let segment = &self.bytes[self.l4()..end];
        let src: [u8; 4] = self.bytes[self.l3 + 12..self.l3 + 16]
            .try_into()
            .expect("4 bytes");
        let dst: [u8; 4] = self.bytes[self.l3 + 16..self.l3 + 20]
            .try_into()
            .expect("4 bytes");
        let mut pseudo = Sum16BitWords::new();
        let sum = pseudo
            .add_4bytes(src)
            .add_4bytes(dst)
            .add_2bytes([0, IPV4_PROTOCOL_TCP])
            .add_2bytes((segment.len() as u16).to_be_bytes())
            .add_slice(segment);
        self.write16(at, checksum(sum))
    }
}

/// etherparse sums native-endian words; the complement swapped to big-endian
/// is the number the header carries.
fn checksum(sum: Sum16BitWords) -> u16 {
    sum.ones_complement().to_be()
}

/// `aa:bb:cc:dd:ee:ff` (as in /sys/class/net/IFACE/address, trailing newline
/// allowed) as bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};

    use super::{tcp_flags::*, *};

    fn spec() -> FrameSpec {
        FrameSpec {
            tcp_flags: SYN | ACK,
            seq: 7,
            ack: 9,
            window: 1234,
            ttl: 17,
            ip_id: 0x1234,
            payload: b"odd payload".to_vec(),
            ..FrameSpec::tcp(
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000),
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
            )
        }
    }

    /// Decodes with etherparse and checks both checksums by full recomputation.
    fn assert_valid(frame: &Frame) -> SlicedPacket<'_> {
        let p = SlicedPacket::from_ethernet(frame.as_bytes()).expect("etherparse decodes it");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("no IPv4 in {frame:?}")
        };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        match &p.transport {
            Some(TransportSlice::Tcp(t)) => {
                let calc = t.to_header().calc_checksum_ipv4(&header, t.payload());
                assert_eq!(Ok(t.checksum()), calc);
            }
            Some(TransportSlice::Udp(u)) => {
                let calc = u.to_header().calc_checksum_ipv4(&header, u.payload());
                assert_eq!(Ok(u.checksum()), calc);
            }
            other => panic!("unexpected transport {other:?}"),
        }
        p
    }

    #[test]
    fn every_field_of_the_spec_is_encoded() {
        let s = FrameSpec {
            ip_options: vec![1, 1, 1, 0],
            padding: vec![0xee; 6],
            ..spec()
        };
        let f = s.build();
        let p = assert_valid(&f);
        let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("no Ethernet")
        };
        assert_eq!((eth.source(), eth.destination()), (s.src_mac, s.dst_mac));
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("no IPv4")
        };
        let h = ip.header();
        assert_eq!(h.ttl(), 17);
        assert_eq!(h.identification(), 0x1234);
        assert!(h.dont_fragment());
        assert_eq!(h.options(), &[1, 1, 1, 0]);
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("no TCP")
        };
        assert_eq!((t.source_port(), t.destination_port()), (40000, 80));
        assert_eq!((t.sequence_number(), t.acknowledgment_number()), (7, 9));
        assert_eq!(t.window_size(), 1234);
        assert!(t.syn() && t.ack() && !t.fin() && !t.rst());
        assert_eq!(t.payload(), b"odd payload");
        assert_eq!(&f.as_bytes()[f.as_bytes().len() - 6..], &[0xee; 6]);
    }

    #[test]
    fn udp_and_vlan_frames_are_valid() {
        let udp = FrameSpec {
            transport: Transport::Udp,
            ..spec()
        }
        .build();
        assert!(matches!(
            assert_valid(&udp).transport,
            Some(TransportSlice::Udp(_))
        ));
        let tagged = FrameSpec {
            vlan: Some(7),
            ..spec()
        }
        .build();
        assert_eq!(
            &tagged.as_bytes()[12..18],
            &[0x81, 0x00, 0x00, 0x07, 0x08, 0x00]
        );
        assert_valid(&tagged);
    }

    #[test]
    fn setters_leave_checksums_alone_until_resealed() {
        let ok = spec().build();
        let mut f = ok.clone();
        f.set_ttl(1);
        assert_eq!(f.ip_checksum(), ok.ip_checksum());
        f.reseal_ip_checksum();
        assert_valid(&f);

        let mut f = ok.clone();
        f.set_fragment(true, 0);
        assert_eq!(&f.as_bytes()[20..22], &[0x20, 0x00]);
        f.set_fragment(false, 16).reseal_ip_checksum();
        assert_eq!(&f.as_bytes()[20..22], &[0x00, 0x10]);

        let mut f = ok.clone();
        f.set_l4_checksum(0).reseal_tcp_checksum();
        assert_eq!(f, ok);
        f.set_ip_checksum(0).reseal_ip_checksum();
        assert_eq!(f, ok);
    }

    #[test]
    fn parse_mac_reads_sysfs_text() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01\n"),
            Some([2, 0, 0x0a, 0xff, 0x10, 1])
        );
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:zz"), None);
    }
}
