//! UDP datagrams out of capture files: pcap, pcapng, and raw datagram dumps.
//!
//! This is what `flowplane decode` and `flowplane replay` read, and what the test crate uses to
//! feed recorded exports to the decoders. It is a tool path, not the data plane: every datagram is
//! copied into its own `Vec`.
//!
//! # Containers
//!
//! The container is recognised by its first four bytes, never by the file name:
//!
//! * pcap (`a1b2c3d4` / `a1b23c4d`, either byte order, micro- or nanosecond timestamps);
//! * pcapng (`0a0d0d0a`), every section and interface, with each interface's `if_tsresol` and
//!   `if_tsoffset` applied to its timestamps;
//! * anything else whose first bytes are a flow export header is a *raw dump*: one or more UDP
//!   payloads written back to back with no framing. NetFlow v5 messages are split by their fixed
//!   length `24 + 48 * count`, IPFIX messages by the header's length field (the RFC 5655 file
//!   format is exactly this); NetFlow v9 and sFlow carry no total length, so the whole file is one
//!   datagram.
//!
//! # Frames
//!
//! Link types: Ethernet (with any number of 802.1Q / 802.1ad / QinQ tags), Linux cooked capture
//! (SLL and SLL2), raw IP (and the IPv4 / IPv6 specific link types), BSD null / loopback. Inside:
//! IPv4 (options skipped) and IPv6 (extension headers walked), then UDP. Everything else is
//! skipped and counted in [`Skipped`], never an error: a capture of a collector port routinely
//! holds ARP, ICMP port-unreachable and TCP noise.
//!
//! # Guarantee
//!
//! No function here panics on any file content. A file that is not a capture, or whose container
//! is corrupt before the first packet, is a [`CaptureError`]; a file cut short in the middle of a
//! packet (a capture still being written, or a killed `tcpdump`) ends the packets there and sets
//! [`Capture::truncated_file`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{PcapError, TsResolution};

/// One UDP datagram found in a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Capture time, milliseconds since the Unix epoch. For raw dumps, which carry no capture
    /// time, the export time from the flow header (0 for sFlow, which has none).
    pub ts_ms: u64,
    /// Sender (the exporter). For raw dumps: [`RAW_DUMP_SOURCE`].
    pub src: SocketAddr,
    /// Receiver (the collector). For raw dumps: [`RAW_DUMP_DESTINATION`] with the format's
    /// usual port.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// The kind of file a capture was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// libpcap format.
    Pcap,
    /// pcapng format.
    PcapNg,
    /// UDP payloads written back to back, without framing.
    RawDump,
}

impl Container {
    /// Short lowercase name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pcap => "pcap",
            Self::PcapNg => "pcapng",
            Self::RawDump => "raw dump",
        }
    }
}

/// Packets of a capture that yielded no datagram, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Fragments of UDP datagrams that could not be reassembled: pieces missing at the end of
    /// the capture, fragments that disagree, or more datagrams in reassembly at once than
    /// [`MAX_REASSEMBLIES`].
    pub fragments: u64,
    /// Frames that are not IPv4 or IPv6 (ARP, LLDP, 802.3 LLC, ...).
    pub non_ip: u64,
    /// IP packets that are not UDP (TCP, ICMP, ESP, ...).
    pub non_udp: u64,
    /// Headers that contradict themselves (IPv4 header length below 20, UDP length below 8, ...).
    pub malformed: u64,
    /// Frames cut short by the capture's snap length before the end of the UDP payload.
    pub truncated: u64,
    /// Packets of a link type this reader does not know.
    pub unsupported_link: u64,
}

impl Skipped {
    /// All skipped packets.
    pub fn total(&self) -> u64 {
        self.fragments
            + self.non_ip
            + self.non_udp
            + self.malformed
            + self.truncated
            + self.unsupported_link
    }

    fn count(&mut self, skip: Skip) {
        let counter = match skip {
            Skip::Fragment => &mut self.fragments,
            Skip::Malformed => &mut self.malformed,
            Skip::NonIp => &mut self.non_ip,
            Skip::NonUdp => &mut self.non_udp,
            Skip::Truncated => &mut self.truncated,
            Skip::UnsupportedLink => &mut self.unsupported_link,
        };
        *counter += 1;
    }
}

/// A whole capture, read into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// The container the file turned out to be.
    pub container: Container,
    /// Every UDP datagram, in file order.
    pub datagrams: Vec<Datagram>,
    /// Packets that were not UDP datagrams, by reason.
    pub skipped: Skipped,
    /// UDP datagrams put back together from IPv4 / IPv6 fragments (each is one datagram in
    /// `datagrams`, with the capture time of its last fragment).
    pub reassembled: u64,
    /// The file ends in the middle of a packet; the datagrams before it are all returned.
    pub truncated_file: bool,
}

/// Why a capture file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The pcap or pcapng container is corrupt (bad header, block lengths that disagree, ...).
    #[error("{path}: not a valid {container} file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The container it claimed to be.
        container: &'static str,
        /// What was wrong, from the container parser.
        reason: String,
    },
    /// The file has no bytes.
    #[error("{path}: the file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A raw dump larger than [`MAX_RAW_DUMP_BYTES`].
    #[error("{path}: {len} bytes is too large for a raw datagram dump (at most {max})")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The first bytes are neither a pcap / pcapng magic number nor a flow export header.
    #[error(
        "{path}: unknown file format (first bytes {magic}): expected pcap, pcapng, or a raw dump \
         of NetFlow v5 / v9, IPFIX or sFlow v5 datagrams"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The first bytes, in hex.
        magic: String,
    },
}

/// Reads every UDP datagram of a capture into memory, with what was skipped.
///
/// # Errors
///
/// See [`CaptureReader::open`]; errors in the container after the first packet are returned too.
/// A file that ends in the middle of a packet is not an error (see [`Capture::truncated_file`]).
pub fn read_capture(path: impl AsRef<Path>) -> Result<Capture, CaptureError> {
    let mut reader = CaptureReader::open(path)?;
    let mut datagrams = Vec::new();
    for datagram in reader.by_ref() {
        datagrams.push(datagram?);
    }
    Ok(Capture {
        container: reader.container(),
        datagrams,
        skipped: reader.skipped(),
        reassembled: reader.reassembled(),
        truncated_file: reader.truncated_file(),
    })
}

/// Reads every UDP datagram of a capture into memory. Use [`read_capture`] to learn what was
/// skipped.
///
/// # Errors
///
/// As [`read_capture`].
pub fn read_datagrams(path: impl AsRef<Path>) -> Result<Vec<Datagram>, CaptureError> {
    read_capture(path).map(|c| c.datagrams)
}

/// Streams the UDP datagrams of a capture, one at a time; memory stays bounded (the container
/// parser's fixed 8 MB buffer) whatever the file size, except for raw dumps, which are read
/// whole (at most [`MAX_RAW_DUMP_BYTES`]).
pub struct CaptureReader {
    path: PathBuf,
    source: Source,
    skipped: Skipped,
    reassembly: Reassembly,
    reassembled: u64,
    truncated_file: bool,
    done: bool,
}

enum Source {
    Pcap {
        reader: PcapReader<BufReader<File>>,
        link: u32,
        nanos: bool,
    },
    PcapNg {
        reader: PcapNgReader<BufReader<File>>,
        interfaces: Vec<Interface>,
    },
    Raw {
        datagrams: std::vec::IntoIter<Datagram>,
    },
}

/// What this reader needs to know about one pcapng interface.
#[derive(Clone, Copy)]
struct Interface {
    link: u32,
    /// `if_tsresol` as in the file: bit 7 clear = 10^-n s, set = 2^-n s. Default 6 (µs).
    tsresol: u8,
    /// `if_tsoffset`, seconds added to every timestamp.
    tsoffset: u64,
}

impl CaptureReader {
    /// Opens a capture file and reads its header.
    ///
    /// # Errors
    ///
    /// [`CaptureError::Io`] when the file cannot be read, [`CaptureError::Empty`],
    /// [`CaptureError::UnknownFormat`] when the first bytes are neither a capture magic number
    /// nor a flow export header, [`CaptureError::Corrupt`] when the pcap / pcapng header is
    /// invalid, [`CaptureError::TooLarge`] for a raw dump over [`MAX_RAW_DUMP_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| CaptureError::Io {
            path: path.clone(),
            source,
        };

        let mut file = File::open(&path).map_err(io_err)?;
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut file, &mut magic).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        if got == 0 {
            return Err(CaptureError::Empty { path });
        }

        let source = match (got, u32::from_be_bytes(magic)) {
            (4, PCAP_US_BE | PCAP_US_LE | PCAP_NS_BE | PCAP_NS_LE) => {
                let reader = PcapReader::new(BufReader::new(file))
                    .map_err(|e| corrupt(&path, "pcap", &e))?;
                let header = reader.header();
                Source::Pcap {
                    link: u32::from(header.datalink),
                    nanos: header.ts_resolution == TsResolution::NanoSecond,
                    reader,
                }
            }
            (4, PCAPNG_SHB) => {
                let reader = PcapNgReader::new(BufReader::new(file))
                    .map_err(|e| corrupt(&path, "pcapng", &e))?;
                Source::PcapNg {
                    reader,
                    interfaces: Vec::new(),
                }
            }
            _ => {
                let meta = file.metadata().map_err(io_err)?;
                if !meta.is_file() {
                    // A device or pipe reports no length: reading it whole could take every
                    // byte of memory (`/dev/zero`).
                    return Err(io_err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file: a raw datagram dump must be a file (pcap and \
                         pcapng are read as streams)",
                    )));
                }
                let len = meta.len();
                if len > MAX_RAW_DUMP_BYTES {
                    return Err(CaptureError::TooLarge {
                        path,
                        len,
                        max: MAX_RAW_DUMP_BYTES,
                    });
                }
                let mut bytes = Vec::new();
                // Bounded even if the file grows while it is read.
                (&mut file)
                    .take(MAX_RAW_DUMP_BYTES)
                    .read_to_end(&mut bytes)
                    .map_err(io_err)?;
                let Some(datagrams) = split_raw_dump(&bytes) else {
                    let magic = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
                    return Err(CaptureError::UnknownFormat { path, magic });
                };
                Source::Raw {
                    datagrams: datagrams.into_iter(),
                }
            }
        };

        Ok(Self {
            path,
            source,
            skipped: Skipped::default(),
            reassembly: Reassembly::default(),
            reassembled: 0,
            truncated_file: false,
            done: false,
        })
    }

    /// The container the file turned out to be.
    pub fn container(&self) -> Container {
        match self.source {
            Source::Pcap { .. } => Container::Pcap,
            Source::PcapNg { .. } => Container::PcapNg,
            Source::Raw { .. } => Container::RawDump,
        }
    }

    /// Packets skipped so far.
    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Datagrams reassembled from fragments so far (see [`Capture::reassembled`]).
    pub fn reassembled(&self) -> u64 {
        self.reassembled
    }

    /// Whether the file ended in the middle of a packet (known once iteration has ended).
    pub fn truncated_file(&self) -> bool {
        self.truncated_file
    }

    /// The next UDP datagram, `None` at the end of the file (or after an error).
    ///
    /// # Errors
    ///
    /// [`CaptureError::Corrupt`] when the container is corrupt past its header, and
    /// [`CaptureError::Io`] when reading fails. Iteration ends after an error.
    pub fn next_datagram(&mut self) -> Option<Result<Datagram, CaptureError>> {
        while !self.done {
            let frame = match self.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.done = true;
                    self.skipped.fragments += self.reassembly.finish();
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            match frame {
                Frame::Ready(d) => return Some(Ok(d)),
                Frame::Link { link, ts_ms, bytes } => match parse_packet(link, &bytes) {
                    Ok(Packet::Udp(udp)) => return Some(Ok(datagram(ts_ms, &udp))),
                    Ok(Packet::Fragment(f)) => {
                        let (whole, dropped) = self.reassembly.add(&f);
                        self.skipped.fragments += dropped;
                        let Some(whole) = whole else { continue };
                        match parse_udp(f.key.src, f.key.dst, &whole, false) {
                            Ok(udp) => {
                                self.reassembled += 1;
                                return Some(Ok(datagram(ts_ms, &udp)));
                            }
                            Err(skip) => self.skipped.count(skip),
                        }
                    }
                    Err(skip) => self.skipped.count(skip),
                },
            }
        }
        None
    }

    /// The next packet of the container, or `None` at its end. A cut-short last packet ends the
    /// file and sets `truncated_file`.
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        match &mut self.source {
            Source::Raw { datagrams } => Ok(datagrams.next().map(Frame::Ready)),

            Source::Pcap {
                reader,
                link,
                nanos,
            } => {
                let packet = match reader.next_raw_packet() {
                    None => return Ok(None),
                    Some(Err(e)) if is_eof(&e) => {
                        self.truncated_file = true;
                        return Ok(None);
                    }
                    Some(Err(e)) => return Err(corrupt(&self.path, "pcap", &e)),
                    Some(Ok(p)) => p,
                };
                let frac_ms = if *nanos {
                    packet.ts_frac / 1_000_000
                } else {
                    packet.ts_frac / 1_000
                };
                Ok(Some(Frame::Link {
                    link: *link,
                    ts_ms: u64::from(packet.ts_sec) * 1_000 + u64::from(frac_ms),
                    bytes: packet.data.into_owned(),
                }))
            }

            Source::PcapNg { reader, interfaces } => loop {
                let block = match reader.next_block() {
                    None => return Ok(None),
                    Some(Err(e)) if is_eof(&e) => {
                        self.truncated_file = true;
                        return Ok(None);
                    }
                    Some(Err(e)) => return Err(corrupt(&self.path, "pcapng", &e)),
                    Some(Ok(b)) => b,
                };
                let (interface_id, units, bytes) = match block {
                    Block::SectionHeader(_) => {
                        // Interface ids restart in every section.
                        interfaces.clear();
                        continue;
                    }
                    Block::InterfaceDescription(idb) => {
                        let mut iface = Interface {
                            link: u32::from(idb.linktype),
                            tsresol: 6,
                            tsoffset: 0,
                        };
                        for option in &idb.options {
                            match option {
                                InterfaceDescriptionOption::IfTsResol(r) => iface.tsresol = *r,
                                InterfaceDescriptionOption::IfTsOffset(o) => iface.tsoffset = *o,
                                _ => {}
                            }
                        }
                        interfaces.push(iface);
                        continue;
                    }
                    // pcap-file hands the raw 64-bit timestamp over as nanoseconds; the unit is
                    // really the interface's `if_tsresol`, applied below.
                    Block::EnhancedPacket(epb) => (
                        epb.interface_id,
                        u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX),
                        epb.data.into_owned(),
                    ),
                    // Simple packet blocks belong to the first interface and carry no time.
                    Block::SimplePacket(spb) => (0, 0, spb.data.into_owned()),
                    Block::Packet(pb) => (
                        u32::from(pb.interface_id),
                        pb.timestamp,
                        pb.data.into_owned(),
                    ),
                    _ => continue,
                };
                let Some(iface) = interfaces.get(interface_id as usize) else {
                    return Err(CaptureError::Corrupt {
                        path: self.path.clone(),
                        container: "pcapng",
                        reason: format!(
                            "packet for interface {interface_id}, which is not described"
                        ),
                    });
                };
                return Ok(Some(Frame::Link {
                    link: iface.link,
                    ts_ms: pcapng_ts_ms(units, iface.tsresol, iface.tsoffset),
                    bytes,
                }));
            },
        }
    }
}

impl Iterator for CaptureReader {
    type Item = Result<Datagram, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_datagram()
    }
}

fn datagram(ts_ms: u64, udp: &UdpFrame<'_>) -> Datagram {
    Datagram {
        ts_ms,
        src: udp.src,
        dst: udp.dst,
        payload: udp.payload.to_vec(),
    }
}

/// The UDP part of one captured frame, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The UDP payload (shorter than the UDP length says when `partial`).
    pub payload: &'a [u8],
    /// This is the first fragment of a fragmented datagram: the payload is only its first part.
    pub partial: bool,
}

/// Why a frame yielded no UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A fragment other than the first.
    Fragment,
    /// A header contradicts itself.
    Malformed,
    /// Not IPv4 / IPv6.
    NonIp,
    /// IP, but not UDP.
    NonUdp,
    /// Cut short by the snap length.
    Truncated,
    /// The link type is not supported.
    UnsupportedLink,
}

/// Finds the UDP datagram in one captured frame of link type `link` (a `LINKTYPE_*` number).
///
/// A frame is looked at alone: the first fragment of a fragmented datagram gives the part of the
/// payload it carries, with [`UdpFrame::partial`] set, and later fragments are
/// [`Skip::Fragment`]. [`CaptureReader`] reassembles fragments instead.
///
/// # Errors
///
/// The [`Skip`] reason when the frame holds no complete UDP header.
pub fn parse_frame(link: u32, frame: &[u8]) -> Result<UdpFrame<'_>, Skip> {
    match parse_packet(link, frame)? {
        Packet::Udp(udp) => Ok(udp),
        Packet::Fragment(f) if f.offset == 0 => parse_udp(f.key.src, f.key.dst, f.data, true),
        Packet::Fragment(_) => Err(Skip::Fragment),
    }
}

/// What one frame holds: a whole UDP datagram, or one fragment of one.
fn parse_packet(link: u32, frame: &[u8]) -> Result<Packet<'_>, Skip> {
    let (ethertype, ip) = match link {
        LINKTYPE_ETHERNET => {
            let ethertype = be16(frame, 12).ok_or(Skip::Truncated)?;
            skip_vlan_tags(ethertype, frame.get(14..).ok_or(Skip::Truncated)?)?
        }
        LINKTYPE_LINUX_SLL => {
            let ethertype = be16(frame, 14).ok_or(Skip::Truncated)?;
            skip_vlan_tags(ethertype, frame.get(16..).ok_or(Skip::Truncated)?)?
        }
        LINKTYPE_LINUX_SLL2 => {
            let ethertype = be16(frame, 0).ok_or(Skip::Truncated)?;
            skip_vlan_tags(ethertype, frame.get(20..).ok_or(Skip::Truncated)?)?
        }
        LINKTYPE_RAW | LINKTYPE_RAW_OPENBSD | LINKTYPE_RAW_BSDOS => {
            let version = frame.first().ok_or(Skip::Truncated)? >> 4;
            let ethertype = match version {
                4 => ETHERTYPE_IPV4,
                6 => ETHERTYPE_IPV6,
                _ => return Err(Skip::NonIp),
            };
            (ethertype, frame)
        }
        LINKTYPE_IPV4 => (ETHERTYPE_IPV4, frame),
        LINKTYPE_IPV6 => (ETHERTYPE_IPV6, frame),
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            let family: [u8; 4] = frame
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(Skip::Truncated)?;
            // DLT_NULL stores the address family in the capturing host's byte order, DLT_LOOP
            // in network order; families are small, so whichever reading is below 256 is right.
            let le = u32::from_le_bytes(family);
            let family = if le < 256 {
                le
            } else {
                u32::from_be_bytes(family)
            };
            let ethertype = match family {
                2 => ETHERTYPE_IPV4,
                // AF_INET6 differs by OS: Linux 10, BSDs 24, FreeBSD 28, macOS 30.
                10 | 24 | 28 | 30 => ETHERTYPE_IPV6,
                _ => return Err(Skip::NonIp),
            };
            (ethertype, &frame[4..])
        }
        _ => return Err(Skip::UnsupportedLink),
    };

    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(ip),
        ETHERTYPE_IPV6 => parse_ipv6(ip),
        _ => Err(Skip::NonIp),
    }
}

/// Splits a raw dump into datagrams, or `None` when the first bytes are no flow export header.
///
/// NetFlow v5 is split by `24 + 48 * count` and IPFIX by the message length field; a header that
/// does not fit (count or length past the end, IPFIX length below its 16-byte header) makes the
/// rest of the file one last datagram, for the decoder to refuse and count. NetFlow v9 and sFlow
/// give no total length, so the file is one datagram. A file mixing formats is split while each
/// next message is v5 or IPFIX, then the rest is one datagram.
pub fn split_raw_dump(bytes: &[u8]) -> Option<Vec<Datagram>> {
    // Every datagram of the dump goes to the first message's usual port.
    let (_, port) = sniff_raw(bytes)?;
    let mut out = Vec::new();
    let mut rest = bytes;

    while !rest.is_empty() {
        let len = match sniff_raw(rest).map(|(v, _)| v) {
            Some(RawFormat::NetflowV5) => be16(rest, 2)
                .map(|count| V5_HEADER_LEN + V5_RECORD_LEN * usize::from(count))
                .filter(|&l| l <= rest.len()),
            Some(RawFormat::Ipfix) => be16(rest, 2)
                .map(usize::from)
                .filter(|&l| l >= IPFIX_HEADER_LEN && l <= rest.len()),
            _ => None,
        }
        .unwrap_or(rest.len());

        let (message, tail) = rest.split_at(len);
        out.push(Datagram {
            ts_ms: export_time_ms(message),
            src: RAW_DUMP_SOURCE,
            dst: SocketAddr::new(RAW_DUMP_DESTINATION, port),
            payload: message.to_vec(),
        });
        rest = tail;
    }
    Some(out)
}

/// Where the datagrams of a raw dump are said to come from (a TEST-NET-1 address, RFC 5737).
pub const RAW_DUMP_SOURCE: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40_000);

/// Where the datagrams of a raw dump are said to go; the port is the format's usual one (2055
/// NetFlow, 4739 IPFIX, 6343 sFlow).
pub const RAW_DUMP_DESTINATION: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

/// Datagrams reassembled at once by a [`CaptureReader`] (at most 64 KiB each).
pub const MAX_REASSEMBLIES: usize = 64;

/// Largest raw dump read (raw dumps are read whole).
pub const MAX_RAW_DUMP_BYTES: u64 = 256 * 1024 * 1024;

/// What one frame holds: a whole UDP datagram, or one fragment of one.
enum Packet<'a> {
    Udp(UdpFrame<'a>),
    Fragment(Fragment<'a>),
}

/// One IPv4 or IPv6 fragment of a UDP datagram.
struct Fragment<'a> {
    key: FragKey,
    /// Where `data` goes in the reassembled datagram (UDP header included), in bytes.
    offset: usize,
    /// More fragments follow (this is not the last one).
    more: bool,
    /// The bytes after the IP header(s).
    data: &'a [u8],
}

/// Fragments of one datagram share source, destination and identification (RFC 791, RFC 8200
/// § 4.5; the protocol is UDP for every fragment kept here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
}

/// Bounded reassembly of fragmented UDP datagrams, in capture order.
///
/// At most [`MAX_REASSEMBLIES`] datagrams are in progress; when another one starts, the one
/// started longest ago is given up. A datagram is given up too when its fragments disagree (two
/// different last fragments) or reach past 65535 bytes. The fragments of a datagram given up, or
/// still incomplete at the end of the capture, are counted in [`Skipped::fragments`].
/// Overlapping fragments are accepted, the later bytes winning.
#[derive(Default)]
struct Reassembly {
    pending: HashMap<FragKey, Pending>,
    started: u64,
}

struct Pending {
    /// Order in which reassemblies started, for eviction.
    seq: u64,
    pieces: Vec<(usize, Vec<u8>)>,
    /// Length of the whole datagram, known once the last fragment arrived.
    total: Option<usize>,
}

impl Reassembly {
    /// Adds a fragment. Returns the whole datagram (UDP header first) once complete, and the
    /// number of fragments given up on the way.
    fn add(&mut self, f: &Fragment<'_>) -> (Option<Vec<u8>>, u64) {
        let mut dropped = 0;
        if !self.pending.contains_key(&f.key) && self.pending.len() >= MAX_REASSEMBLIES {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.seq)
                .map(|(k, _)| *k);
            if let Some(p) = oldest.and_then(|k| self.pending.remove(&k)) {
                dropped += p.pieces.len() as u64;
            }
        }
        let started = &mut self.started;
        let entry = self.pending.entry(f.key).or_insert_with(|| {
            *started += 1;
            Pending {
                seq: *started,
                pieces: Vec::new(),
                total: None,
            }
        });

        let end = f.offset + f.data.len();
        let consistent = end <= MAX_UDP_DATAGRAM
            && match (f.more, entry.total) {
                (false, Some(total)) => total == end,
                (true, Some(total)) => end <= total,
                (_, None) => true,
            };
        if !consistent {
            let given_up = self.pending.remove(&f.key).map_or(0, |p| p.pieces.len());
            return (None, dropped + given_up as u64 + 1);
        }
        if !f.more {
            entry.total = Some(end);
        }
        entry.pieces.push((f.offset, f.data.to_vec()));

        let Some(total) = entry.total else {
            return (None, dropped);
        };
        // Complete when the pieces, in offset order, leave no hole before `total`.
        entry.pieces.sort_by_key(|(offset, _)| *offset);
        let mut covered = 0;
        for (offset, data) in &entry.pieces {
            if *offset > covered {
                return (None, dropped);
            }
            covered = covered.max(offset + data.len());
        }
        if covered < total {
            return (None, dropped);
        }

        let mut whole = vec![0u8; total];
        for (offset, data) in &entry.pieces {
            let end = (offset + data.len()).min(total);
            if let (Some(dst), Some(src)) = (whole.get_mut(*offset..end), data.get(..end - offset))
            {
                dst.copy_from_slice(src);
            }
        }
        self.pending.remove(&f.key);
        (Some(whole), dropped)
    }

    /// Gives up every datagram still in progress; returns how many fragments that drops.
    fn finish(&mut self) -> u64 {
        self.pending
            .drain()
            .map(|(_, p)| p.pieces.len() as u64)
            .sum()
    }
}

enum Frame {
    /// A datagram ready as is (raw dumps).
    Ready(Datagram),
    /// A link-layer frame still to parse.
    Link {
        link: u32,
        ts_ms: u64,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RawFormat {
    NetflowV5,
    NetflowV9,
    Ipfix,
    Sflow,
}

/// Recognises a flow export header at the start of `b`, with the format's usual port.
fn sniff_raw(b: &[u8]) -> Option<(RawFormat, u16)> {
    // sFlow v5 starts with a 32-bit version 5 and a 32-bit agent address type of 1 or 2.
    if b.get(..4) == Some(&[0, 0, 0, 5]) && matches!(be32(b, 4), Some(1 | 2)) {
        return Some((RawFormat::Sflow, 6343));
    }
    match be16(b, 0)? {
        0x0005 => Some((RawFormat::NetflowV5, 2055)),
        0x0009 => Some((RawFormat::NetflowV9, 2055)),
        0x000a => Some((RawFormat::Ipfix, 4739)),
        _ => None,
    }
}

/// The export time in a NetFlow / IPFIX header, as milliseconds (0 when there is none).
fn export_time_ms(message: &[u8]) -> u64 {
    let secs = match sniff_raw(message).map(|(v, _)| v) {
        // v5 and v9: sysUptime(4) then unix_secs at offset 8; IPFIX: export time at offset 4.
        Some(RawFormat::NetflowV5 | RawFormat::NetflowV9) => be32(message, 8),
        Some(RawFormat::Ipfix) => be32(message, 4),
        Some(RawFormat::Sflow) | None => None,
    };
    secs.map_or(0, |s| u64::from(s) * 1_000)
}

/// Steps over 802.1Q / 802.1ad / QinQ tags (4 bytes each: TCI, then the next ethertype).
fn skip_vlan_tags(mut ethertype: u16, mut rest: &[u8]) -> Result<(u16, &[u8]), Skip> {
    for _ in 0..MAX_VLAN_TAGS {
        if !matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            return Ok((ethertype, rest));
        }
        ethertype = be16(rest, 2).ok_or(Skip::Truncated)?;
        rest = rest.get(4..).ok_or(Skip::Truncated)?;
    }
    Err(Skip::Malformed)
}

fn parse_ipv4(ip: &[u8]) -> Result<Packet<'_>, Skip> {
    let first = *ip.first().ok_or(Skip::Truncated)?;
    if first >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return Err(Skip::Malformed);
    }
    if ip.len() < header_len {
        return Err(Skip::Truncated);
    }
    let total_len = usize::from(be16(ip, 2).ok_or(Skip::Truncated)?);
    if total_len < header_len {
        return Err(Skip::Malformed);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(Skip::NonUdp);
    }

    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    // Ethernet pads short frames to 60 bytes: the IP total length, not the frame, ends the packet.
    let end = total_len.min(ip.len());
    let l4 = &ip[header_len..end];

    // Flags and fragment offset: MF is 0x2000, the offset the low 13 bits (in 8-byte units).
    let frag = be16(ip, 6).ok_or(Skip::Truncated)?;
    let more = frag & 0x2000 != 0;
    let offset = usize::from(frag & 0x1fff) * 8;
    if more || offset != 0 {
        if end < total_len {
            // A fragment cut by the snap length cannot complete its datagram.
            return Err(Skip::Truncated);
        }
        let id = u32::from(be16(ip, 4).ok_or(Skip::Truncated)?);
        let key = FragKey { src, dst, id };
        return Ok(Packet::Fragment(Fragment {
            key,
            offset,
            more,
            data: l4,
        }));
    }
    parse_udp(src, dst, l4, false).map(Packet::Udp)
}

fn parse_ipv6(ip: &[u8]) -> Result<Packet<'_>, Skip> {
    if ip.len() < IPV6_HEADER_LEN {
        return Err(Skip::Truncated);
    }
    if ip[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload_len = usize::from(be16(ip, 4).ok_or(Skip::Truncated)?);
    let src_octets: [u8; 16] = ip[8..24].try_into().map_err(|_| Skip::Truncated)?;
    let dst_octets: [u8; 16] = ip[24..40].try_into().map_err(|_| Skip::Truncated)?;
    let src = IpAddr::V6(Ipv6Addr::from(src_octets));
    let dst = IpAddr::V6(Ipv6Addr::from(dst_octets));

    // A payload length of 0 means a jumbogram (RFC 2675); then the frame ends the packet.
    let declared_end = if payload_len == 0 {
        ip.len()
    } else {
        IPV6_HEADER_LEN + payload_len
    };
    let end = declared_end.min(ip.len());
    let packet = &ip[..end];

    let mut next = ip[6];
    let mut offset = IPV6_HEADER_LEN;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPPROTO_UDP => {
                let rest = packet.get(offset..).ok_or(Skip::Truncated)?;
                return parse_udp(src, dst, rest, false).map(Packet::Udp);
            }
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: (len + 1) * 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let len = usize::from(*packet.get(offset + 1).ok_or(Skip::Truncated)?);
                next = packet[offset];
                offset += (len + 1) * 8;
            }
            // Authentication header (RFC 4302): its length is in 4-byte units, minus 2.
            51 => {
                let len = usize::from(*packet.get(offset + 1).ok_or(Skip::Truncated)?);
                next = packet[offset];
                offset += (len + 2) * 4;
            }
            // Fragment header (RFC 8200 § 4.5): next header, reserved, then the offset in the
            // top 13 bits of bytes 2-3 (8-byte units, so masking gives bytes), M in bit 0, and
            // a 32-bit identification.
            44 => {
                let frag = be16(packet, offset + 2).ok_or(Skip::Truncated)?;
                let id = be32(packet, offset + 4).ok_or(Skip::Truncated)?;
                next = packet[offset];
                offset += 8;
                let frag_offset = usize::from(frag & 0xfff8);
                let more = frag & 0x0001 != 0;
                // An "atomic fragment" (offset 0, no more) is a whole packet (RFC 6946).
                if frag_offset == 0 && !more {
                    continue;
                }
                // Every fragment repeats the first header of the fragmentable part here.
                if next != IPPROTO_UDP {
                    return Err(Skip::NonUdp);
                }
                if end < declared_end {
                    return Err(Skip::Truncated);
                }
                let data = packet.get(offset..).ok_or(Skip::Truncated)?;
                let key = FragKey { src, dst, id };
                return Ok(Packet::Fragment(Fragment {
                    key,
                    offset: frag_offset,
                    more,
                    data,
                }));
            }
            _ => return Err(Skip::NonUdp),
        }
    }
    Err(Skip::Malformed)
}

/// Reads the UDP header at the start of `l4` (which ends where the IP packet ends).
fn parse_udp(src: IpAddr, dst: IpAddr, l4: &[u8], partial: bool) -> Result<UdpFrame<'_>, Skip> {
    let src_port = be16(l4, 0).ok_or(Skip::Truncated)?;
    let dst_port = be16(l4, 2).ok_or(Skip::Truncated)?;
    let udp_len = usize::from(be16(l4, 4).ok_or(Skip::Truncated)?);
    if l4.len() < UDP_HEADER_LEN {
        return Err(Skip::Truncated);
    }

    // The UDP length covers header and payload. Below 8 is impossible, except that a UDP length
    // of 0 over IPv6 jumbograms means "the IP length decides" (RFC 2675 § 4).
    let end = if udp_len == 0 {
        l4.len()
    } else if udp_len < UDP_HEADER_LEN {
        return Err(Skip::Malformed);
    } else if udp_len > l4.len() {
        // The first fragment of a fragmented datagram legitimately carries only its start.
        if !partial {
            return Err(Skip::Truncated);
        }
        l4.len()
    } else {
        udp_len
    };

    Ok(UdpFrame {
        src: SocketAddr::new(src, src_port),
        dst: SocketAddr::new(dst, dst_port),
        payload: &l4[UDP_HEADER_LEN..end],
        partial,
    })
}

/// pcapng timestamp units to milliseconds (RFC draft-ietf-opsawg-pcapng § 4.2, `if_tsresol`).
fn pcapng_ts_ms(units: u64, tsresol: u8, tsoffset: u64) -> u64 {
    let units = u128::from(units);
    let exp = u32::from(tsresol & 0x7f);
    let ms = if tsresol & 0x80 != 0 {
        // 2^-exp seconds per unit.
        if exp >= 64 { 0 } else { (units * 1_000) >> exp }
    } else if exp >= 3 {
        units / 10u128.checked_pow(exp - 3).unwrap_or(u128::MAX)
    } else {
        units * 10u128.pow(3 - exp)
    };
    let offset_ms = u128::from(tsoffset) * 1_000;
    u64::try_from(ms.saturating_add(offset_ms)).unwrap_or(u64::MAX)
}

fn corrupt(path: &Path, container: &'static str, e: &PcapError) -> CaptureError {
    let reason = match e {
        PcapError::IncompleteBuffer => "the header is cut short".to_owned(),
        PcapError::IoError(io) => io.to_string(),
        other => other.to_string(),
    };
    CaptureError::Corrupt {
        path: path.to_path_buf(),
        container,
        reason,
    }
}

/// pcap-file reports a file that ends inside a packet or block as an unexpected EOF.
fn is_eof(e: &PcapError) -> bool {
    matches!(e, PcapError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof)
        || matches!(e, PcapError::IncompleteBuffer)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

// Magic numbers as read big-endian from the first four bytes.
const PCAP_US_BE: u32 = 0xa1b2_c3d4;
const PCAP_US_LE: u32 = 0xd4c3_b2a1;
const PCAP_NS_BE: u32 = 0xa1b2_3c4d;
const PCAP_NS_LE: u32 = 0x4d3c_b2a1;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;

// LINKTYPE_* numbers (tcpdump.org link-layer header types).
const LINKTYPE_NULL: u32 = 0;
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW_OPENBSD: u32 = 12;
const LINKTYPE_RAW_BSDOS: u32 = 14;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LOOP: u32 = 108;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const IPV6_HEADER_LEN: usize = 40;
const UDP_HEADER_LEN: usize = 8;
/// A UDP datagram's length field is 16 bits.
const MAX_UDP_DATAGRAM: usize = 65_535;
const V5_HEADER_LEN: usize = 24;
const V5_RECORD_LEN: usize = 48;
const IPFIX_HEADER_LEN: usize = 16;

/// More tags than any real frame carries means a corrupt frame; stop there.
const MAX_VLAN_TAGS: usize = 8;
/// Bound on the extension header walk, so a crafted chain cannot loop long.
const MAX_IPV6_EXTENSIONS: usize = 16;

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use pcap_file::DataLink;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;

    use super::*;

    /// A file in the system temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            let unique = format!("flowplane-capture-{}-{name}", std::process::id());
            Self(std::env::temp_dir().join(unique))
        }

        fn write(name: &str, bytes: &[u8]) -> Self {
            let f = Self::new(name);
            std::fs::write(&f.0, bytes).unwrap();
            f
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src_port.to_be_bytes());
        b.extend_from_slice(&dst_port.to_be_bytes());
        b.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(payload);
        b
    }

    /// IPv4 header (with `options` bytes of options) around `l4`.
    fn ipv4(
        proto: u8,
        frag: u16,
        options: usize,
        src: [u8; 4],
        dst: [u8; 4],
        l4: &[u8],
    ) -> Vec<u8> {
        let header_len = 20 + options;
        let mut b = vec![0x40 | (header_len / 4) as u8, 0];
        b.extend_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
        b.extend_from_slice(&[0x12, 0x34]);
        b.extend_from_slice(&frag.to_be_bytes());
        b.extend_from_slice(&[64, proto, 0, 0]);
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend(std::iter::repeat_n(1u8, options)); // NOP options
        b.extend_from_slice(l4);
        b
    }

    /// IPv6 header with one hop-by-hop options header before `l4`.
    fn ipv6_hbh(src: Ipv6Addr, dst: Ipv6Addr, l4: &[u8]) -> Vec<u8> {
        let hbh = [IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]; // next = UDP, len 0 (8 bytes), PadN
        let mut b = vec![0x60, 0, 0, 0];
        b.extend_from_slice(&((hbh.len() + l4.len()) as u16).to_be_bytes());
        b.extend_from_slice(&[0, 64]); // next header: hop-by-hop
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&hbh);
        b.extend_from_slice(l4);
        b
    }

    fn ethernet(tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut b = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        for (i, vid) in tags.iter().enumerate() {
            let tpid: u16 = if i == 0 && tags.len() > 1 {
                0x88a8
            } else {
                0x8100
            };
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&vid.to_be_bytes());
        }
        b.extend_from_slice(&ethertype.to_be_bytes());
        b.extend_from_slice(l3);
        b
    }

    fn sll(ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        b.extend_from_slice(&ethertype.to_be_bytes());
        b.extend_from_slice(l3);
        b
    }

    fn write_pcap(name: &str, link: DataLink, frames: &[(u64, Vec<u8>, u32)]) -> TempFile {
        let f = TempFile::new(name);
        let header = PcapHeader {
            datalink: link,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(File::create(&f.0).unwrap(), header).unwrap();
        for (ts_ms, data, orig_len) in frames {
            let ts = Duration::from_millis(*ts_ms);
            w.write_packet(&PcapPacket::new(ts, *orig_len, data))
                .unwrap();
        }
        f
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    #[test]
    fn reads_ethernet_vlan_ipv4_udp_from_pcap() {
        let payload = b"\x00\x05hello";
        let plain = ethernet(
            &[],
            0x0800,
            &ipv4(17, 0, 0, A, B, &udp(4000, 2055, payload)),
        );
        let vlan = ethernet(
            &[42],
            0x0800,
            &ipv4(17, 0, 8, A, B, &udp(4001, 2055, payload)),
        );
        let qinq = ethernet(
            &[7, 42],
            0x0800,
            &ipv4(17, 0, 0, B, A, &udp(4002, 4739, payload)),
        );
        let frames: Vec<_> = [plain, vlan, qinq]
            .into_iter()
            .enumerate()
            .map(|(i, f)| (1_700_000_000_123 + i as u64, f.clone(), f.len() as u32))
            .collect();
        let f = write_pcap("eth.pcap", DataLink::ETHERNET, &frames);

        let c = read_capture(&f.0).unwrap();
        assert_eq!(c.container, Container::Pcap);
        assert_eq!(c.skipped, Skipped::default());
        assert_eq!(c.datagrams.len(), 3);
        let d = &c.datagrams[0];
        assert_eq!(d.ts_ms, 1_700_000_000_123);
        assert_eq!(d.src, "10.0.0.1:4000".parse().unwrap());
        assert_eq!(d.dst, "10.0.0.2:2055".parse().unwrap());
        assert_eq!(d.payload, payload);
        assert_eq!(
            c.datagrams[1].src.port(),
            4001,
            "VLAN tag and IPv4 options skipped"
        );
        assert_eq!(c.datagrams[1].payload, payload);
        assert_eq!(c.datagrams[2].src, "10.0.0.2:4002".parse().unwrap(), "QinQ");
        assert_eq!(c.datagrams[2].ts_ms, 1_700_000_000_125);
    }

    #[test]
    fn reads_ipv6_with_extension_header_from_pcapng() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let frame = ethernet(&[], 0x86dd, &ipv6_hbh(src, dst, &udp(5000, 4739, b"ipfix")));

        let f = TempFile::new("v6.pcapng");
        let mut w = PcapNgWriter::new(File::create(&f.0).unwrap()).unwrap();
        // Nanosecond timestamps, and a one-hour offset, both of which the reader must apply.
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 65_535,
            options: vec![
                InterfaceDescriptionOption::IfTsResol(9),
                InterfaceDescriptionOption::IfTsOffset(3_600),
            ],
        };
        w.write_pcapng_block(idb).unwrap();
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(1_700_000_000_456_000_000),
            original_len: frame.len() as u32,
            data: Cow::Borrowed(&frame),
            options: vec![],
        };
        w.write_pcapng_block(epb).unwrap();
        drop(w);

        let c = read_capture(&f.0).unwrap();
        assert_eq!(c.container, Container::PcapNg);
        assert_eq!(c.datagrams.len(), 1);
        let d = &c.datagrams[0];
        assert_eq!(d.src, SocketAddr::new(src.into(), 5000));
        assert_eq!(d.dst, SocketAddr::new(dst.into(), 4739));
        assert_eq!(d.payload, b"ipfix");
        assert_eq!(d.ts_ms, 1_700_000_000_456 + 3_600_000);
    }

    #[test]
    fn pcapng_default_resolution_is_microseconds() {
        assert_eq!(pcapng_ts_ms(1_700_000_000_456_789, 6, 0), 1_700_000_000_456);
        assert_eq!(pcapng_ts_ms(5, 0, 0), 5_000);
        // 2^-10 s units: 1024 units are one second.
        assert_eq!(pcapng_ts_ms(2_048, 0x80 | 10, 0), 2_000);
        assert_eq!(pcapng_ts_ms(u64::MAX, 0, u64::MAX), u64::MAX, "saturates");
        assert_eq!(
            pcapng_ts_ms(7, 0x7f, 0),
            0,
            "absurd resolution does not panic"
        );
    }

    #[test]
    fn reads_linux_cooked_captures() {
        let frame = sll(0x0800, &ipv4(17, 0, 0, A, B, &udp(6000, 9991, b"sll")));
        let f = write_pcap(
            "sll.pcap",
            DataLink::LINUX_SLL,
            &[(1, frame.clone(), frame.len() as u32)],
        );
        let c = read_capture(&f.0).unwrap();
        assert_eq!(c.datagrams.len(), 1);
        assert_eq!(c.datagrams[0].payload, b"sll");
        assert_eq!(c.datagrams[0].dst.port(), 9991);

        // SLL2: protocol first, 20-byte header.
        let mut sll2 = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
        ];
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        sll2.extend_from_slice(&ipv6_hbh(src, src, &udp(1, 2, b"two")));
        let u = parse_frame(LINKTYPE_LINUX_SLL2, &sll2).unwrap();
        assert_eq!(u.payload, b"two");
    }

    #[test]
    fn reads_raw_ip_and_loopback_links() {
        let packet = ipv4(17, 0, 0, A, B, &udp(1, 2, b"raw"));
        assert_eq!(parse_frame(LINKTYPE_RAW, &packet).unwrap().payload, b"raw");
        assert_eq!(parse_frame(LINKTYPE_IPV4, &packet).unwrap().payload, b"raw");

        let mut null_le = 2u32.to_le_bytes().to_vec();
        null_le.extend_from_slice(&packet);
        assert_eq!(
            parse_frame(LINKTYPE_NULL, &null_le).unwrap().payload,
            b"raw"
        );
        let mut loop_be = 2u32.to_be_bytes().to_vec();
        loop_be.extend_from_slice(&packet);
        assert_eq!(
            parse_frame(LINKTYPE_LOOP, &loop_be).unwrap().payload,
            b"raw"
        );
        let mut null_v6 = 30u32.to_le_bytes().to_vec(); // macOS AF_INET6
        let v6: Ipv6Addr = "::1".parse().unwrap();
        null_v6.extend_from_slice(&ipv6_hbh(v6, v6, &udp(1, 2, b"six")));
        assert_eq!(
            parse_frame(LINKTYPE_NULL, &null_v6).unwrap().payload,
            b"six"
        );

        assert_eq!(parse_frame(147, &packet), Err(Skip::UnsupportedLink));
    }

    #[test]
    fn counts_what_is_not_a_udp_datagram() {
        let tcp = ethernet(&[], 0x0800, &ipv4(6, 0, 0, A, B, &[0u8; 20]));
        let arp = ethernet(&[], 0x0806, &[0u8; 28]);
        let later_fragment = ethernet(&[], 0x0800, &ipv4(17, 185, 0, A, B, &[0u8; 40]));
        let good = ethernet(
            &[],
            0x0800,
            &ipv4(17, 0, 0, A, B, &udp(1, 2055, &[9u8; 100])),
        );
        // Cut by a 60-byte snap length inside the UDP payload: incl_len 60, orig_len full.
        let snapped = good[..60].to_vec();
        let bad_udp_len = {
            let mut l4 = udp(1, 2, b"x");
            l4[4..6].copy_from_slice(&3u16.to_be_bytes());
            ethernet(&[], 0x0800, &ipv4(17, 0, 0, A, B, &l4))
        };
        let frames = vec![
            (1, tcp.clone(), tcp.len() as u32),
            (2, arp.clone(), arp.len() as u32),
            (3, later_fragment.clone(), later_fragment.len() as u32),
            (4, snapped, good.len() as u32),
            (5, bad_udp_len.clone(), bad_udp_len.len() as u32),
            (6, good.clone(), good.len() as u32),
        ];
        let f = write_pcap("mixed.pcap", DataLink::ETHERNET, &frames);

        let c = read_capture(&f.0).unwrap();
        assert_eq!(c.datagrams.len(), 1);
        assert_eq!(c.datagrams[0].ts_ms, 6);
        let expected = Skipped {
            fragments: 1,
            non_ip: 1,
            non_udp: 1,
            malformed: 1,
            truncated: 1,
            unsupported_link: 0,
        };
        assert_eq!(c.skipped, expected);
        assert_eq!(c.skipped.total(), 5);
    }

    #[test]
    fn first_fragment_is_returned_as_partial() {
        let mut l4 = udp(1, 2, &[7u8; 16]);
        l4[4..6].copy_from_slice(&1_400u16.to_be_bytes()); // the whole datagram is longer
        let mf = 0x2000;
        let first = ipv4(17, mf, 0, A, B, &l4);
        let u = parse_frame(LINKTYPE_IPV4, &first).unwrap();
        assert!(u.partial);
        assert_eq!(u.payload, [7u8; 16]);
        // Without MF the same bytes are a datagram cut short.
        assert_eq!(
            parse_frame(LINKTYPE_IPV4, &ipv4(17, 0, 0, A, B, &l4)),
            Err(Skip::Truncated)
        );
    }

    /// IPv4 fragments of one UDP datagram: `cuts` are the byte offsets (multiples of 8) where
    /// the UDP datagram is split.
    fn ipv4_fragments(id: u16, l4: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(l4.len());
        bounds
            .windows(2)
            .map(|w| {
                let more = if w[1] < l4.len() { 0x2000 } else { 0 };
                let mut p = ipv4(17, more | (w[0] / 8) as u16, 0, A, B, &l4[w[0]..w[1]]);
                p[4..6].copy_from_slice(&id.to_be_bytes());
                ethernet(&[], 0x0800, &p)
            })
            .collect()
    }

    /// IPv6 fragments (fragment header after a hop-by-hop header) of one UDP datagram.
    fn ipv6_fragments(id: u32, l4: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(l4.len());
        bounds
            .windows(2)
            .map(|w| {
                let more = u16::from(w[1] < l4.len());
                let mut frag = vec![IPPROTO_UDP, 0];
                frag.extend_from_slice(&((w[0] as u16) | more).to_be_bytes());
                frag.extend_from_slice(&id.to_be_bytes());
                frag.extend_from_slice(&l4[w[0]..w[1]]);
                // Reuse the hop-by-hop builder, then point its next header at the fragment header.
                let mut p = ipv6_hbh(v6, v6, &frag);
                p[40] = 44;
                ethernet(&[], 0x86dd, &p)
            })
            .collect()
    }

    fn frames(packets: &[Vec<u8>]) -> Vec<(u64, Vec<u8>, u32)> {
        packets
            .iter()
            .enumerate()
            .map(|(i, p)| (10 + i as u64, p.clone(), p.len() as u32))
            .collect()
    }

    #[test]
    fn reassembles_fragmented_datagrams() {
        let payload: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
        let l4 = udp(4739, 4739, &payload);
        let v4 = ipv4_fragments(7, &l4, &[1_480, 2_960]);
        let v6 = ipv6_fragments(0x0102_0304, &l4, &[1_448]);
        let other = ethernet(&[], 0x0800, &ipv4(17, 0, 0, A, B, &udp(1, 2, b"between")));
        // Out of order, interleaved with another datagram and with the IPv6 fragments.
        let packets = [
            v4[2].clone(),
            v6[1].clone(),
            other,
            v4[0].clone(),
            v6[0].clone(),
            v4[1].clone(),
        ];
        let f = write_pcap("frag.pcap", DataLink::ETHERNET, &frames(&packets));

        let c = read_capture(&f.0).unwrap();
        assert_eq!(c.skipped, Skipped::default());
        assert_eq!(c.reassembled, 2);
        let payloads: Vec<&[u8]> = c.datagrams.iter().map(|d| d.payload.as_slice()).collect();
        assert_eq!(payloads, [b"between".as_slice(), &payload, &payload]);
        assert_eq!(
            c.datagrams[1].src,
            "[2001:db8::7]:4739".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            c.datagrams[2].ts_ms, 15,
            "time of the fragment that completed it"
        );
        assert_eq!(c.datagrams[2].dst, "10.0.0.2:4739".parse().unwrap());
    }

    #[test]
    fn counts_fragments_that_never_complete() {
        let l4 = udp(1, 2, &[0u8; 2_000]);
        let mut packets = ipv4_fragments(1, &l4, &[800, 1_600]);
        packets.remove(1);
        // Two different last fragments for one datagram: given up, both counted.
        let mut bad = ipv4_fragments(2, &l4, &[1_000]);
        let mut short_last = ipv4_fragments(2, &l4[..1_500], &[1_000]).pop().unwrap();
        bad.push(std::mem::take(&mut short_last));
        packets.extend(bad.into_iter().skip(1));
        let f = write_pcap("lost.pcap", DataLink::ETHERNET, &frames(&packets));

        let c = read_capture(&f.0).unwrap();
        assert!(c.datagrams.is_empty());
        assert_eq!(c.reassembled, 0);
        assert_eq!(c.skipped.fragments, 4);
    }

    #[test]
    fn reassembly_memory_is_bounded() {
        let l4 = udp(1, 2, &[0u8; 100]);
        let mut packets: Vec<Vec<u8>> = (0..MAX_REASSEMBLIES as u16 + 10)
            .map(|id| ipv4_fragments(id, &l4, &[56]).remove(0))
            .collect();
        // The last datagram started can still complete.
        packets.push(ipv4_fragments(MAX_REASSEMBLIES as u16 + 9, &l4, &[56]).remove(1));
        let f = write_pcap("many.pcap", DataLink::ETHERNET, &frames(&packets));

        let c = read_capture(&f.0).unwrap();
        assert_eq!(c.reassembled, 1);
        assert_eq!(c.skipped.fragments, MAX_REASSEMBLIES as u64 + 9);
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut frame = ethernet(&[], 0x0800, &ipv4(17, 0, 0, A, B, &udp(1, 2, b"ab")));
        frame.resize(60, 0);
        assert_eq!(
            parse_frame(LINKTYPE_ETHERNET, &frame).unwrap().payload,
            b"ab"
        );
    }

    #[test]
    fn no_panic_on_any_prefix_of_a_frame() {
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let frames = [
            ethernet(&[1, 2], 0x0800, &ipv4(17, 0, 12, A, B, &udp(1, 2, b"abc"))),
            ethernet(&[], 0x86dd, &ipv6_hbh(v6, v6, &udp(1, 2, b"abc"))),
            sll(0x8100, &[0, 1, 0x08, 0x00]),
        ];
        for frame in frames {
            for len in 0..frame.len() {
                for link in [
                    LINKTYPE_ETHERNET,
                    LINKTYPE_LINUX_SLL,
                    LINKTYPE_RAW,
                    LINKTYPE_NULL,
                ] {
                    let _ = parse_frame(link, &frame[..len]);
                }
            }
        }
    }

    #[test]
    fn truncated_file_keeps_the_packets_before() {
        let good = ethernet(&[], 0x0800, &ipv4(17, 0, 0, A, B, &udp(1, 2, b"first")));
        let f = write_pcap(
            "cut.pcap",
            DataLink::ETHERNET,
            &[
                (1, good.clone(), good.len() as u32),
                (2, good.clone(), good.len() as u32),
            ],
        );
        let bytes = std::fs::read(&f.0).unwrap();
        let cut = TempFile::write("cut2.pcap", &bytes[..bytes.len() - 5]);

        let c = read_capture(&cut.0).unwrap();
        assert_eq!(c.datagrams.len(), 1);
        assert!(c.truncated_file);
    }

    #[test]
    fn splits_raw_dumps() {
        // Two NetFlow v5 messages (1 and 0 records), then an IPFIX message of 20 bytes and a
        // second one whose length runs past the end.
        let mut dump = Vec::new();
        let mut v5 = vec![0u8; 24 + 48];
        v5[..4].copy_from_slice(&[0, 5, 0, 1]);
        v5[8..12].copy_from_slice(&1_700_000_000u32.to_be_bytes());
        dump.extend_from_slice(&v5);
        dump.extend_from_slice(&[0, 5, 0, 0]);
        dump.extend_from_slice(&[0u8; 20]);
        let f = TempFile::write("v5.dat", &dump);
        let c = read_capture(&f.0).unwrap();
        assert_eq!(c.container, Container::RawDump);
        let lens: Vec<usize> = c.datagrams.iter().map(|d| d.payload.len()).collect();
        assert_eq!(lens, [72, 24]);
        assert_eq!(
            c.datagrams[0].ts_ms, 1_700_000_000_000,
            "export time from the header"
        );
        assert_eq!(c.datagrams[0].src, RAW_DUMP_SOURCE);
        assert_eq!(c.datagrams[0].dst.port(), 2055);

        let mut ipfix = vec![0, 10, 0, 20];
        ipfix.extend_from_slice(&[0u8; 16]);
        ipfix.extend_from_slice(&[0, 10, 0, 200, 0, 0, 0, 0]);
        let parts = split_raw_dump(&ipfix).unwrap();
        let lens: Vec<usize> = parts.iter().map(|d| d.payload.len()).collect();
        assert_eq!(
            lens,
            [20, 8],
            "the message running past the end is kept whole"
        );
        assert_eq!(parts[0].dst.port(), 4739);

        // v9 and sFlow: the whole file.
        let v9 = [
            0, 9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 5,
        ];
        assert_eq!(split_raw_dump(&v9).unwrap().len(), 1);
        let sflow = [0, 0, 0, 5, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 5, 0, 5];
        let parts = split_raw_dump(&sflow).unwrap();
        assert_eq!(
            (parts.len(), parts[0].dst.port(), parts[0].ts_ms),
            (1, 6343, 0)
        );
    }

    #[test]
    fn refuses_what_is_not_a_capture() {
        let f = TempFile::write("text.txt", b"hello world");
        let e = read_capture(&f.0).unwrap_err();
        assert!(matches!(e, CaptureError::UnknownFormat { .. }), "{e}");
        assert!(e.to_string().contains("68656c6c"), "{e}");

        let f = TempFile::write("empty", b"");
        assert!(matches!(
            read_capture(&f.0),
            Err(CaptureError::Empty { .. })
        ));

        let missing = read_capture("/nonexistent/flowplane.pcap").unwrap_err();
        assert!(matches!(missing, CaptureError::Io { .. }));
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/flowplane.pcap: ")
        );

        // A pcap magic number with the rest of the header missing.
        let f = TempFile::write("short.pcap", &[0xd4, 0xc3, 0xb2, 0xa1, 2, 0]);
        let e = read_capture(&f.0).unwrap_err();
        assert!(
            matches!(
                e,
                CaptureError::Corrupt {
                    container: "pcap",
                    ..
                }
            ),
            "{e}"
        );

        // A pcapng block whose trailing length disagrees with its leading one.
        let mut ng = vec![
            0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0,
        ];
        ng.extend_from_slice(&[0xff; 8]);
        ng.extend_from_slice(&[29, 0, 0, 0]);
        let f = TempFile::write("bad2.pcapng", &ng);
        let e = read_capture(&f.0).unwrap_err();
        assert!(
            matches!(
                e,
                CaptureError::Corrupt {
                    container: "pcapng",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn reads_the_corpus_linux_cooked_capture() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../shared/corpus/pmacct/112-IPFIXv10-CISCO-options-map-reassignment_traffic-00.pcap",
        );
        if !path.exists() {
            eprintln!("skipped: {} not present", path.display());
            return;
        }
        // MANIFEST.md: 21 packets, all IPFIX from 2001:db8:90::1 to port 9991.
        let c = read_capture(&path).unwrap();
        assert_eq!(c.datagrams.len(), 21);
        assert_eq!(c.skipped.total(), 0);
        for d in &c.datagrams {
            assert_eq!(d.src.ip(), "2001:db8:90::1".parse::<IpAddr>().unwrap());
            assert_eq!(d.dst.port(), 9991);
            assert_eq!(d.payload[..2], [0, 10]);
        }
    }
}
