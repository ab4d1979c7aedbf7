//! The entry point: one [`Decoder`] per worker, holding the template state of every exporter
//! that worker has seen, and the sequence state of every sFlow agent.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use crate::template::{Accum, SamplerRef, Template, TemplateError, TemplateKind, TimeBase};
use crate::{
    CounterRecord, DecodeError, FlowFormat, FlowRecord, addr_to_bytes, ipfix, netflow_v5,
    netflow_v9, sflow,
};

/// Bounds on decoder memory. Every bound, when hit, is counted in [`DecodeStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Exporters (address, port) tracked at once; datagrams from further exporters that need
    /// template state are refused and counted.
    pub max_exporters: usize,
    /// Templates kept per exporter (all domains together).
    pub max_templates_per_exporter: usize,
    /// Templates kept in total.
    pub max_templates_total: usize,
    /// Bytes of data sets held per exporter while their template is missing.
    pub pending_bytes_per_exporter: usize,
    /// Bytes of data sets held in total while their template is missing.
    pub pending_bytes_total: usize,
    /// How long a data set waits for its template before it is dropped and counted.
    pub pending_ttl_ms: u64,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_exporters: 4_096,
            max_templates_per_exporter: 1_024,
            max_templates_total: 65_536,
            pending_bytes_per_exporter: 256 * 1024,
            pending_bytes_total: 16 * 1024 * 1024,
            pending_ttl_ms: 10_000,
        }
    }
}

/// What one call to [`Decoder::decode`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramResult {
    /// Format recognised from the header; `None` when the datagram is too short to carry a
    /// version or the version is not one this decoder handles.
    pub format: Option<FlowFormat>,
    /// Records emitted by this call (including held data decoded because its template arrived).
    pub records: u32,
    /// Data sets held because their template has not been seen yet.
    pub sets_held: u32,
    /// Data sets dropped because their template is missing and they could not be held.
    pub sets_without_template: u32,
    /// sFlow counter records decoded by this call (given to the counter callback of
    /// [`Decoder::decode_with_counters`]; [`Decoder::decode`] drops them). Flow records are in
    /// `records`.
    pub counter_records: u32,
    /// The error that ended decoding of this datagram, if any. Records before it were emitted.
    pub error: Option<DecodeError>,
}

/// Running totals of one decoder. Monotonic; the engine publishes deltas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Datagrams passed to `decode`.
    pub datagrams: u64,
    /// Records emitted.
    pub records: u64,
    /// Errors by [`DecodeError::index`].
    pub errors: [u64; DecodeError::ALL.len()],
    /// Data sets dropped because their template was missing and could not be held.
    pub sets_without_template: u64,
    /// Data sets held waiting for a template.
    pub sets_held: u64,
    /// Held data sets decoded later, when their template arrived.
    pub held_sets_decoded: u64,
    /// Held data sets dropped because they waited longer than the TTL.
    pub held_sets_expired: u64,
    /// Held data sets dropped because a memory bound was hit.
    pub held_sets_evicted: u64,
    /// Template definitions accepted (new or replacing).
    pub templates_learned: u64,
    /// Templates withdrawn by the exporter.
    pub templates_withdrawn: u64,
    /// Template definitions refused because a bound was hit.
    pub templates_refused: u64,
    /// Templates forgotten with their exporter (silent too long, or evicted for a new one).
    pub templates_dropped: u64,
    /// Exporters forgotten after [`EXPORTER_IDLE_MS`] of silence.
    pub exporters_expired: u64,
    /// Exporters that gave their slot up to a new one (every `max_exporters` slot taken).
    pub exporters_evicted: u64,
    /// Option records announcing a sampling rate or system-init time that were not kept
    /// because the per-exporter bound (`max_templates_per_exporter` entries) was hit.
    pub options_refused: u64,
}

/// Running totals of the sFlow part of one decoder. Monotonic, like [`DecodeStats`].
///
/// Kept apart from [`DecodeStats`] so that code building a `DecodeStats` field by field keeps
/// compiling; the engine reads both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SflowStats {
    /// sFlow datagrams whose header was valid.
    pub datagrams: u64,
    /// Flow samples decoded into a flow record.
    pub flow_samples: u64,
    /// Counter samples decoded into a counter record.
    pub counter_samples: u64,
    /// Samples of a format flowplane does not read (any enterprise), skipped by length.
    pub unknown_samples: u64,
    /// Flow or counter records of a format flowplane does not read, skipped by length.
    pub unknown_records: u64,
    /// Raw packet headers of a header protocol flowplane does not decode (the sample is still
    /// a record, with its frame length and interfaces but no addresses).
    pub unknown_header_protocols: u64,
    /// Datagrams missing according to the sequence numbers of (exporter, agent, sub-agent):
    /// the sum of every forward jump minus one.
    pub sequence_gaps: u64,
    /// Datagrams that arrived after a later one, or twice: a step back of at most
    /// [`SFLOW_REORDER_WINDOW`] datagrams with an uptime at most [`SFLOW_REORDER_MS`] older.
    /// Each was first counted in `sequence_gaps` (a duplicate was not), so
    /// `sequence_gaps - sequence_late` is a lower bound of the loss.
    pub sequence_late: u64,
    /// Sequence numbers that went back further than that: the agent restarted (its uptime
    /// went back too) or two agents share an identity. Tracking starts again from there, and
    /// the agent's drop totals are forgotten.
    pub sequence_resets: u64,
    /// Datagrams of agents not tracked because `max_exporters` agents already are.
    pub agents_untracked: u64,
    /// Samples the agents themselves report lost for lack of resources: the increase of each
    /// flow sample source's `drops` total.
    pub samples_dropped: u64,
    /// Flow samples whose source was not tracked for drops because [`SFLOW_MAX_SOURCES`]
    /// sources already are.
    pub sources_untracked: u64,
}

/// A small step back in an agent's datagram sequence is a late datagram, not a restart...
pub const SFLOW_REORDER_WINDOW: u32 = 64;
/// ... when its uptime is also at most this much older than the newest datagram's. A restarted
/// agent starts again from sequence 1 and uptime 0, so a step back with a much older uptime is
/// a restart even when the agent had sent fewer than [`SFLOW_REORDER_WINDOW`] datagrams.
pub const SFLOW_REORDER_MS: u32 = 10_000;
/// Flow sample sources tracked for drops, all agents together.
///
/// A fixed bound, not a setting: at 65 536 sources of about 40 bytes each it costs under 3 MiB
/// per worker, and sources past it are counted (`sources_untracked`), not lost.
pub const SFLOW_MAX_SOURCES: usize = 65_536;
/// An sFlow agent silent this long is forgotten by [`Decoder::expire`] (its sequence restarts
/// from whatever it sends next, without counting a gap).
pub const SFLOW_AGENT_IDLE_MS: u64 = 15 * 60 * 1_000;

/// Decoder state for many exporters: templates, option-announced sampling rates, held data.
///
/// All state is keyed first by the exporter's socket address (address and UDP port), then by
/// format, observation domain / source id and template id, so two exporters (or two domains of
/// one exporter) never see each other's templates.
#[derive(Debug)]
pub struct Decoder {
    limits: DecoderLimits,
    stats: DecodeStats,
    exporters: HashMap<SocketAddr, ExporterState>,
    templates_total: usize,
    pending_bytes_total: usize,
    /// Field specifiers of the template being read; reused so that learning a template
    /// allocates only the template itself.
    scratch: Vec<crate::template::FieldSpec>,
    sflow_stats: SflowStats,
    /// Sequence and drop state per sFlow agent; at most `limits.max_exporters` entries.
    sflow_agents: HashMap<SflowAgentKey, SflowAgentState>,
    /// Flow sample sources tracked, all agents together; at most [`SFLOW_MAX_SOURCES`].
    sflow_sources: usize,
    /// [`Decoder::make_room`] does not scan before this time (see there).
    no_room_until_ms: u64,
}

impl Decoder {
    /// A decoder with the given bounds.
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            limits,
            stats: DecodeStats::default(),
            exporters: HashMap::new(),
            templates_total: 0,
            pending_bytes_total: 0,
            scratch: Vec::new(),
            sflow_stats: SflowStats::default(),
            sflow_agents: HashMap::new(),
            sflow_sources: 0,
            no_room_until_ms: 0,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &DecoderLimits {
        &self.limits
    }

    /// Decodes one datagram received from `exporter` at `now_ms` (Unix milliseconds) and calls
    /// `emit` once per decoded record. Auto-detects NetFlow v5, v9, IPFIX and sFlow v5 from the
    /// header; sFlow counter samples are decoded and dropped (see
    /// [`Decoder::decode_with_counters`]).
    ///
    /// Errors are returned in [`DatagramResult::error`] and counted in [`DecodeStats::errors`];
    /// records decoded before the error have been emitted.
    pub fn decode<F: FnMut(&FlowRecord)>(
        &mut self,
        exporter: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        emit: F,
    ) -> DatagramResult {
        self.decode_with_counters(exporter, now_ms, datagram, emit, |_| {})
    }

    /// [`Decoder::decode`], and `on_counter` once per sFlow counter sample that carries generic
    /// or Ethernet interface counters.
    pub fn decode_with_counters<F: FnMut(&FlowRecord), C: FnMut(&CounterRecord)>(
        &mut self,
        exporter: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        mut emit: F,
        mut on_counter: C,
    ) -> DatagramResult {
        self.stats.datagrams += 1;
        let mut result = DatagramResult::default();
        let base = FlowRecord {
            exporter: addr_to_bytes(exporter.ip()),
            exporter_port: exporter.port(),
            sampling_rate: 1,
            ..FlowRecord::default()
        };

        let outcome = match sniff_version(datagram) {
            Err(e) => Err(e),
            Ok(Version::Sflow) => {
                result.format = Some(FlowFormat::Sflow);
                sflow::Packet::new_checked(datagram).and_then(|p| {
                    self.sflow(
                        &p,
                        exporter,
                        now_ms,
                        &base,
                        &mut result,
                        &mut emit,
                        &mut on_counter,
                    )
                })
            }
            Ok(Version::Netflow(VERSION_V5)) => {
                result.format = Some(FlowFormat::NetflowV5);
                netflow_v5::Packet::new_checked(datagram).map(|p| {
                    result.records += netflow_v5::parse(&p, &base, &mut emit);
                })
            }
            Ok(Version::Netflow(VERSION_V9)) => {
                result.format = Some(FlowFormat::NetflowV9);
                netflow_v9::Packet::new_checked(datagram).and_then(|p| {
                    let mut cx = Cx::new(self, exporter, now_ms, &mut result, &mut emit);
                    netflow_v9::parse(&p, &base, &mut cx)
                })
            }
            Ok(Version::Netflow(VERSION_IPFIX)) => {
                result.format = Some(FlowFormat::Ipfix);
                ipfix::Packet::new_checked(datagram).and_then(|p| {
                    let mut cx = Cx::new(self, exporter, now_ms, &mut result, &mut emit);
                    ipfix::parse(&p, &base, &mut cx)
                })
            }
            Ok(Version::Netflow(_)) => Err(DecodeError::BadVersion),
        };

        self.stats.records += u64::from(result.records);
        if let Err(e) = outcome {
            self.stats.errors[e.index()] += 1;
            result.error = Some(e);
        }
        result
    }

    /// Drops held data older than the TTL, and forgets exporters that hold no state at all.
    /// Call at least once per second.
    pub fn expire(&mut self, now_ms: u64) {
        let ttl = self.limits.pending_ttl_ms;
        for state in self.exporters.values_mut() {
            while let Some(p) = state.pending.front() {
                if now_ms.saturating_sub(p.arrived_ms) <= ttl {
                    break;
                }
                let len = p.bytes.len();
                state.pending.pop_front();
                state.pending_bytes -= len;
                self.pending_bytes_total -= len;
                self.stats.held_sets_expired += 1;
            }
        }
        // Exporters silent for EXPORTER_IDLE_MS are forgotten, templates and all; so are those
        // with nothing left to remember.
        let idle: Vec<SocketAddr> = self
            .exporters
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) >= EXPORTER_IDLE_MS)
            .map(|(a, _)| *a)
            .collect();
        for addr in idle {
            if let Some(gone) = self.forget(addr) {
                self.stats.exporters_expired += 1;
                self.stats.held_sets_expired += gone;
            }
        }
        self.exporters.retain(|_, s| !s.is_empty());

        let sources = &mut self.sflow_sources;
        self.sflow_agents.retain(|_, a| {
            let keep = now_ms.saturating_sub(a.last_seen_ms) <= SFLOW_AGENT_IDLE_MS;
            if !keep {
                *sources -= a.drops.len();
            }
            keep
        });
    }

    /// Running totals of the sFlow part.
    pub fn sflow_stats(&self) -> &SflowStats {
        &self.sflow_stats
    }

    /// sFlow agents (exporter, agent address, sub-agent) whose sequence is tracked.
    pub fn sflow_agents(&self) -> usize {
        self.sflow_agents.len()
    }

    /// Decodes a checked sFlow datagram: sequence accounting, then the samples.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    fn sflow<F: FnMut(&FlowRecord), C: FnMut(&CounterRecord)>(
        &mut self,
        p: &sflow::Packet<&[u8]>,
        exporter: SocketAddr,
        now_ms: u64,
        base: &FlowRecord,
        result: &mut DatagramResult,
        emit: &mut F,
        on_counter: &mut C,
    ) -> Result<(), DecodeError> {
        self.sflow_stats.datagrams += 1;
        // The UDP source and the agent address differ behind NAT and on multi-homed agents;
        // both are part of the key so that two agents behind one address, or one agent seen
        // through two addresses, never mix their sequences. The port is left out: an agent
        // that restarts may send from another port, and its sequence restarts with it.
        let key = SflowAgentKey {
            exporter: exporter.ip(),
            agent: addr_to_bytes(p.agent_address()),
            sub_agent: p.sub_agent_id(),
        };
        let tracked = self.sflow_sequence(key, p.sequence_number(), p.uptime(), now_ms);

        let mut sink = SflowSink {
            agent: if tracked {
                self.sflow_agents.get_mut(&key)
            } else {
                None
            },
            sources: &mut self.sflow_sources,
            stats: &mut self.sflow_stats,
            result,
            emit,
            on_counter,
        };
        let mut tally = sflow::Tally::default();
        let out = sflow::parse(p, base, now_ms, &mut tally, &mut sink);

        let s = &mut self.sflow_stats;
        s.flow_samples += u64::from(tally.flow_samples);
        s.counter_samples += u64::from(tally.counter_samples);
        s.unknown_samples += u64::from(tally.unknown_samples);
        s.unknown_records += u64::from(tally.unknown_records);
        s.unknown_header_protocols += u64::from(tally.unknown_header_protocols);
        out
    }

    /// Accounts one datagram sequence number; returns whether the agent is tracked.
    fn sflow_sequence(&mut self, key: SflowAgentKey, seq: u32, uptime: u32, now_ms: u64) -> bool {
        let full = self.sflow_agents.len() >= self.limits.max_exporters;
        let s = &mut self.sflow_stats;
        let Some(agent) = self.sflow_agents.get_mut(&key) else {
            if full {
                s.agents_untracked += 1;
                return false;
            }
            self.sflow_agents.insert(
                key,
                SflowAgentState {
                    last_seq: seq,
                    last_uptime: uptime,
                    last_seen_ms: now_ms,
                    drops: HashMap::new(),
                },
            );
            return true;
        };
        agent.last_seen_ms = now_ms;

        // Serial-number arithmetic on the 32-bit sequence: a step forward of less than half
        // the space is progress, anything else is a step back.
        let ahead = seq.wrapping_sub(agent.last_seq);
        let behind = agent.last_seq.wrapping_sub(seq);
        // The uptime wraps every ~49.7 days like NetFlow's; the wrapping difference is the age.
        let older_ms = agent.last_uptime.wrapping_sub(uptime);
        if ahead != 0 && ahead < 0x8000_0000 {
            s.sequence_gaps += u64::from(ahead - 1);
            agent.last_seq = seq;
            agent.last_uptime = uptime;
        } else if behind <= SFLOW_REORDER_WINDOW && older_ms <= SFLOW_REORDER_MS {
            s.sequence_late += 1;
        } else {
            s.sequence_resets += 1;
            agent.last_seq = seq;
            agent.last_uptime = uptime;
            // A restarted agent restarts its drop totals too.
            self.sflow_sources -= agent.drops.len();
            agent.drops.clear();
        }
        true
    }

    /// Removes `addr`'s state with its templates and held data, keeping the totals right.
    /// Returns how many held sets went with it (`None` when it had no state).
    fn forget(&mut self, addr: SocketAddr) -> Option<u64> {
        let gone = self.exporters.remove(&addr)?;
        self.templates_total -= gone.templates.len();
        self.pending_bytes_total -= gone.pending_bytes;
        self.stats.templates_dropped += gone.templates.len() as u64;
        Some(gone.pending.len() as u64)
    }

    /// Makes room for `addr` when every exporter slot is taken and it has none: the exporter
    /// heard from longest ago gives its slot up if it has been silent for at least
    /// [`EXPORTER_EVICT_IDLE_MS`] (its templates and held data go with it, counted). A scan is
    /// O(slots), only when a new exporter meets a full table, and at most once until an
    /// exporter can have become evictable.
    fn make_room(&mut self, addr: SocketAddr, now_ms: u64) {
        if self.exporters.len() < self.limits.max_exporters || self.exporters.contains_key(&addr) {
            return;
        }
        // No exporter can be evictable before the stalest one found by the last scan turns
        // `EXPORTER_EVICT_IDLE_MS` old (last-seen times only grow): until then a stream of
        // newcomers costs no scan each.
        if now_ms < self.no_room_until_ms {
            return;
        }
        let Some((&stalest, last_seen)) = self
            .exporters
            .iter()
            .min_by_key(|(_, s)| s.last_seen_ms)
            .map(|(a, s)| (a, s.last_seen_ms))
        else {
            return;
        };
        if now_ms.saturating_sub(last_seen) < EXPORTER_EVICT_IDLE_MS {
            self.no_room_until_ms = last_seen.saturating_add(EXPORTER_EVICT_IDLE_MS);
            return;
        }
        if let Some(held) = self.forget(stalest) {
            self.stats.exporters_evicted += 1;
            self.stats.held_sets_evicted += held;
        }
    }

    /// Running totals.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Templates currently learned, all exporters together.
    pub fn templates(&self) -> usize {
        self.templates_total
    }

    /// Bytes of data sets currently held waiting for their template.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes_total
    }

    /// Data sets currently held waiting for their template.
    pub fn pending_sets(&self) -> usize {
        self.exporters.values().map(|s| s.pending.len()).sum()
    }
}

/// Identifies an sFlow agent for sequence accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SflowAgentKey {
    exporter: IpAddr,
    agent: [u8; 16],
    sub_agent: u32,
}

/// Sequence and drop state of one sFlow agent.
#[derive(Debug)]
struct SflowAgentState {
    last_seq: u32,
    /// Uptime of the datagram that set `last_seq`.
    last_uptime: u32,
    last_seen_ms: u64,
    /// Last `drops` total per flow sample source (`type << 32 | index`).
    drops: HashMap<u64, u32>,
}

/// Where the sFlow parser's results go: the caller's callbacks and the agent's drop state.
struct SflowSink<'a, F, C> {
    agent: Option<&'a mut SflowAgentState>,
    sources: &'a mut usize,
    stats: &'a mut SflowStats,
    result: &'a mut DatagramResult,
    emit: &'a mut F,
    on_counter: &'a mut C,
}

impl<F: FnMut(&FlowRecord), C: FnMut(&CounterRecord)> sflow::Sink for SflowSink<'_, F, C> {
    fn flow(&mut self, rec: &FlowRecord) {
        (self.emit)(rec);
        self.result.records += 1;
    }

    fn counter(&mut self, rec: &CounterRecord) {
        (self.on_counter)(rec);
        self.result.counter_records += 1;
    }

    fn drops(&mut self, source: u64, drops: u32) {
        let Some(agent) = self.agent.as_deref_mut() else {
            return;
        };
        match agent.drops.get_mut(&source) {
            // `drops` is a running total per source: the increase is what was lost since the
            // last sample. A decrease means the source restarted its count.
            Some(last) => {
                let up = drops.wrapping_sub(*last);
                if up < 0x8000_0000 {
                    self.stats.samples_dropped += u64::from(up);
                }
                *last = drops;
            }
            None if *self.sources < SFLOW_MAX_SOURCES => {
                // The first total seen is a baseline: what it counts happened before.
                agent.drops.insert(source, drops);
                *self.sources += 1;
            }
            None => self.stats.sources_untracked += 1,
        }
    }
}

/// Identifies a template: exporter-local part of the scope (the exporter is the outer key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TemplateKey {
    format: u8,
    domain: u32,
    id: u16,
}

/// Identifies an option-announced sampling rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SamplerKey {
    format: u8,
    domain: u32,
    sampler: SamplerRef,
}

/// A data set that arrived before its template.
#[derive(Debug)]
struct Pending {
    key: TemplateKey,
    base: FlowRecord,
    time: TimeBase,
    arrived_ms: u64,
    bytes: Box<[u8]>,
}

/// Everything known about one exporter (address and port).
#[derive(Debug, Default)]
struct ExporterState {
    templates: HashMap<TemplateKey, Template>,
    samplers: HashMap<SamplerKey, u32>,
    /// systemInitTimeMilliseconds per (format, domain), from IPFIX options data.
    init_times: HashMap<(u8, u32), u64>,
    /// Held data sets, oldest first.
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// Arrival time of this exporter's last template or data set.
    last_seen_ms: u64,
}

impl ExporterState {
    fn is_empty(&self) -> bool {
        self.templates.is_empty()
            && self.samplers.is_empty()
            && self.init_times.is_empty()
            && self.pending.is_empty()
    }
}

/// The scope of one message: which exporter, format and domain its sets belong to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scope {
    pub(crate) format: FlowFormat,
    pub(crate) domain: u32,
}

/// What a format parser sees of the decoder while it walks one datagram.
pub(crate) struct Cx<'a, F> {
    dec: &'a mut Decoder,
    exporter: SocketAddr,
    now_ms: u64,
    result: &'a mut DatagramResult,
    emit: &'a mut F,
}

impl<'a, F: FnMut(&FlowRecord)> Cx<'a, F> {
    fn new(
        dec: &'a mut Decoder,
        exporter: SocketAddr,
        now_ms: u64,
        result: &'a mut DatagramResult,
        emit: &'a mut F,
    ) -> Self {
        Self {
            dec,
            exporter,
            now_ms,
            result,
            emit,
        }
    }

    /// The reusable field-specifier buffer, cleared.
    pub(crate) fn take_scratch(&mut self) -> Vec<crate::template::FieldSpec> {
        let mut v = std::mem::take(&mut self.dec.scratch);
        v.clear();
        v
    }

    /// Gives the field-specifier buffer back for the next template.
    pub(crate) fn put_scratch(&mut self, v: Vec<crate::template::FieldSpec>) {
        self.dec.scratch = v;
    }

    /// Learns (or replaces) a template, then decodes any held data waiting for it.
    ///
    /// # Errors
    ///
    /// [`DecodeError::BadTemplate`] for an invalid definition. A valid definition that does not
    /// fit the bounds is refused and counted, not an error.
    pub(crate) fn learn(
        &mut self,
        scope: Scope,
        id: u16,
        template: Result<Template, TemplateError>,
    ) -> Result<(), DecodeError> {
        let template = match template {
            Ok(t) => t,
            Err(TemplateError::Invalid) => return Err(DecodeError::BadTemplate),
            Err(TemplateError::TooLarge) => {
                self.dec.stats.templates_refused += 1;
                return Ok(());
            }
        };
        let key = TemplateKey {
            format: scope.format as u8,
            domain: scope.domain,
            id,
        };
        let limits = self.dec.limits;
        self.dec.make_room(self.exporter, self.now_ms);
        let Some(state) =
            exporter_state(&mut self.dec.exporters, &limits, self.exporter, self.now_ms)
        else {
            self.dec.stats.templates_refused += 1;
            return Ok(());
        };

        // A new definition replaces the old one (RFC 7011 § 8, RFC 3954 § 5.2); only a new key
        // takes a slot under the bounds.
        let replacing = state.templates.contains_key(&key);
        if !replacing
            && (state.templates.len() >= limits.max_templates_per_exporter
                || self.dec.templates_total >= limits.max_templates_total)
        {
            self.dec.stats.templates_refused += 1;
            return Ok(());
        }
        // Templates live until withdrawn or replaced, or until their exporter falls silent for
        // EXPORTER_IDLE_MS (see `expire`) or gives its slot up to a new one.
        state.templates.insert(key, template);
        if !replacing {
            self.dec.templates_total += 1;
        }
        self.dec.stats.templates_learned += 1;

        self.drain_pending(key);
        Ok(())
    }

    /// Decodes the held data sets of `key`, oldest first, now that its template is known.
    fn drain_pending(&mut self, key: TemplateKey) {
        let limits = self.dec.limits;
        let Some(state) = self.dec.exporters.get_mut(&self.exporter) else {
            return;
        };
        let mut i = 0;
        while i < state.pending.len() {
            if state.pending[i].key != key {
                i += 1;
                continue;
            }
            let Some(p) = state.pending.remove(i) else {
                break;
            };
            state.pending_bytes -= p.bytes.len();
            self.dec.pending_bytes_total -= p.bytes.len();
            if self.now_ms.saturating_sub(p.arrived_ms) > limits.pending_ttl_ms {
                self.dec.stats.held_sets_expired += 1;
                continue;
            }

            let Some(template) = state.templates.get(&key) else {
                break;
            };
            self.dec.stats.held_sets_decoded += 1;
            let out = decode_set(
                template,
                &mut SetState {
                    samplers: &mut state.samplers,
                    init_times: &mut state.init_times,
                    limit: limits.max_templates_per_exporter,
                    options_refused: &mut self.dec.stats.options_refused,
                },
                key,
                &p.bytes,
                &p.base,
                &p.time,
                self.emit,
            );
            match out {
                Ok(n) => self.result.records += n,
                // The error belongs to an earlier datagram: counted, but it does not end this
                // one.
                Err((n, e)) => {
                    self.result.records += n;
                    self.dec.stats.errors[e.index()] += 1;
                }
            }
        }
    }

    /// Withdraws one template (`Some(id)`) or every template of `kind` in the scope (`None`).
    pub(crate) fn withdraw(&mut self, scope: Scope, id: Option<u16>, kind: TemplateKind) {
        let Some(state) = self.dec.exporters.get_mut(&self.exporter) else {
            return;
        };
        let format = scope.format as u8;
        let before = state.templates.len();
        match id {
            Some(id) => {
                state.templates.remove(&TemplateKey {
                    format,
                    domain: scope.domain,
                    id,
                });
            }
            None => state.templates.retain(|k, t| {
                !(k.format == format && k.domain == scope.domain && t.kind() == kind)
            }),
        }
        let removed = before - state.templates.len();
        self.dec.templates_total -= removed;
        self.dec.stats.templates_withdrawn += removed as u64;
    }

    /// Decodes one data set, or holds it if its template is not known yet.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TruncatedRecord`] from the records; records before it were emitted.
    pub(crate) fn data(
        &mut self,
        scope: Scope,
        id: u16,
        body: &[u8],
        base: &FlowRecord,
        time: &TimeBase,
    ) -> Result<(), DecodeError> {
        let key = TemplateKey {
            format: scope.format as u8,
            domain: scope.domain,
            id,
        };
        let limits = self.dec.limits;
        self.dec.make_room(self.exporter, self.now_ms);
        let Some(state) =
            exporter_state(&mut self.dec.exporters, &limits, self.exporter, self.now_ms)
        else {
            self.result.sets_without_template += 1;
            self.dec.stats.sets_without_template += 1;
            return Ok(());
        };

        let mut time = *time;
        if scope.format == FlowFormat::Ipfix {
            time.sys_init_ms = state.init_times.get(&(key.format, key.domain)).copied();
        }
        let Some(template) = state.templates.get(&key) else {
            self.hold(key, body, base, &time);
            return Ok(());
        };

        let out = decode_set(
            template,
            &mut SetState {
                samplers: &mut state.samplers,
                init_times: &mut state.init_times,
                limit: limits.max_templates_per_exporter,
                options_refused: &mut self.dec.stats.options_refused,
            },
            key,
            body,
            base,
            &time,
            self.emit,
        );
        match out {
            Ok(n) => {
                self.result.records += n;
                Ok(())
            }
            Err((n, e)) => {
                self.result.records += n;
                Err(e)
            }
        }
    }

    /// Keeps a copy of a data set until its template arrives, within the bounds.
    fn hold(&mut self, key: TemplateKey, body: &[u8], base: &FlowRecord, time: &TimeBase) {
        let limits = self.dec.limits;
        let len = body.len();
        let refuse = |dec: &mut Decoder, result: &mut DatagramResult| {
            result.sets_without_template += 1;
            dec.stats.sets_without_template += 1;
        };
        if len > limits.pending_bytes_per_exporter || len > limits.pending_bytes_total {
            return refuse(self.dec, self.result);
        }
        let Some(state) = self.dec.exporters.get_mut(&self.exporter) else {
            return refuse(self.dec, self.result);
        };

        // Per exporter: the oldest held sets make room for the newest (the newest is the most
        // likely to see its template soon).
        while state.pending_bytes + len > limits.pending_bytes_per_exporter {
            let Some(old) = state.pending.pop_front() else {
                break;
            };
            state.pending_bytes -= old.bytes.len();
            self.dec.pending_bytes_total -= old.bytes.len();
            self.dec.stats.held_sets_evicted += 1;
        }
        // In total: one exporter must not evict another's data, so the new set is refused.
        if self.dec.pending_bytes_total + len > limits.pending_bytes_total {
            return refuse(self.dec, self.result);
        }

        state.pending.push_back(Pending {
            key,
            base: *base,
            time: *time,
            arrived_ms: self.now_ms,
            bytes: body.into(),
        });
        state.pending_bytes += len;
        self.dec.pending_bytes_total += len;
        self.result.sets_held += 1;
        self.dec.stats.sets_held += 1;
    }
}

/// The per-exporter maps a data set may read (flow records) or write (option records).
struct SetState<'a> {
    samplers: &'a mut HashMap<SamplerKey, u32>,
    init_times: &'a mut HashMap<(u8, u32), u64>,
    limit: usize,
    options_refused: &'a mut u64,
}

/// Decodes the records of one set with its template. Flow records are emitted; option records
/// update the sampling rates and system-init times of the scope.
///
/// Returns the number of flow records emitted, with the error if one ended the set.
fn decode_set<F: FnMut(&FlowRecord)>(
    template: &Template,
    st: &mut SetState<'_>,
    key: TemplateKey,
    body: &[u8],
    base: &FlowRecord,
    time: &TimeBase,
    emit: &mut F,
) -> Result<u32, (u32, DecodeError)> {
    let sampler_key = |sampler| SamplerKey {
        format: key.format,
        domain: key.domain,
        sampler,
    };

    if template.kind() == TemplateKind::Options {
        // Known gap: an options record scoped to one interface (v9 scope type 2, IPFIX
        // ingressInterface) announces a rate for that interface only; flowplane applies it to
        // the whole (exporter, domain) scope unless the record names a sampler or selector.
        let out = template.for_each_record(body, |acc: &Accum| {
            if let Some(rate) = acc.sampling_rate() {
                let k = sampler_key(acc.sampler_ref());
                if st.samplers.len() < st.limit || st.samplers.contains_key(&k) {
                    st.samplers.insert(k, rate);
                } else {
                    *st.options_refused += 1;
                }
            }
            if let Some(init) = acc.sys_init_ms() {
                let k = (key.format, key.domain);
                if st.init_times.len() < st.limit || st.init_times.contains_key(&k) {
                    st.init_times.insert(k, init);
                } else {
                    *st.options_refused += 1;
                }
            }
        });
        return out.map(|_| 0).map_err(|e| (0, e));
    }

    let mut emitted = 0u32;
    let scope_rate = st.samplers.get(&sampler_key(SamplerRef::Scope)).copied();
    // A sampler named in the record wins over the scope-wide announcement.
    let rate = |named| match named {
        SamplerRef::Scope => scope_rate,
        named => st.samplers.get(&sampler_key(named)).copied().or(scope_rate),
    };
    let out = template.decode_flows(body, base, time, rate, |rec: &FlowRecord| {
        emit(rec);
        emitted += 1;
    });
    match out {
        Ok(_) => Ok(emitted),
        Err(e) => Err((emitted, e)),
    }
}

/// The state of `addr`, created if there is room for one more exporter (see
/// [`Decoder::make_room`]); `None` refuses the newcomer, and the caller counts what it refused.
fn exporter_state<'m>(
    exporters: &'m mut HashMap<SocketAddr, ExporterState>,
    limits: &DecoderLimits,
    addr: SocketAddr,
    now_ms: u64,
) -> Option<&'m mut ExporterState> {
    if !exporters.contains_key(&addr) && exporters.len() >= limits.max_exporters {
        return None;
    }
    let state = exporters.entry(addr).or_default();
    state.last_seen_ms = now_ms;
    Some(state)
}

/// An exporter silent this long may lose its slot to a new exporter when every slot is taken.
pub const EXPORTER_EVICT_IDLE_MS: u64 = 60 * 1_000;
/// An exporter silent this long is forgotten by [`Decoder::expire`], templates and all
/// (RFC 7011 § 8.4: a collector may expire UDP templates that are not refreshed; exporters
/// resend them every few minutes at most, RFC 3954 § 5.2 and RFC 7011 § 8.4).
pub const EXPORTER_IDLE_MS: u64 = 30 * 60 * 1_000;

/// What the first bytes of a datagram say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// The 16-bit version of NetFlow v5, v9 and IPFIX (or an unknown one).
    Netflow(u16),
    /// sFlow v5: the 32-bit version `00 00 00 05`.
    Sflow,
}

/// NetFlow v5: the 16-bit version field at offset 0.
const VERSION_V5: u16 = 0x0005;
/// NetFlow v9 (RFC 3954 § 5.1).
const VERSION_V9: u16 = 0x0009;
/// IPFIX (RFC 7011 § 3.1).
const VERSION_IPFIX: u16 = 0x000a;

/// Reads the 16-bit version that NetFlow v5, v9 and IPFIX all put at offset 0, or recognises
/// sFlow v5's 32-bit version there (`00 00 00 05`).
///
/// sFlow's 16-bit reading is 0, so it can never be taken for NetFlow v5 (`00 05`). sFlow
/// versions 2 and 4 (`00 00 00 02`, `00 00 00 04`) are refused as
/// [`DecodeError::BadVersion`], as is any other version.
fn sniff_version(datagram: &[u8]) -> Result<Version, DecodeError> {
    match datagram {
        [0, 0, 0, 5, ..] => Ok(Version::Sflow),
        [a, b, ..] => Ok(Version::Netflow(u16::from_be_bytes([*a, *b]))),
        _ => Err(DecodeError::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter() -> SocketAddr {
        "192.0.2.7:40000".parse().unwrap()
    }

    #[test]
    fn sflow_is_not_taken_for_netflow_v5() {
        let mut d = Decoder::new(DecoderLimits::default());
        // sFlow v5: 32-bit version 5, then an IPv4 agent address, and a header cut short.
        let sflow = [0, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let r = d.decode(exporter(), 0, &sflow, |_| panic!("no record expected"));
        assert_eq!(r.error, Some(DecodeError::Truncated));
        assert_eq!(r.format, Some(FlowFormat::Sflow));
        assert_eq!(d.stats().errors[DecodeError::Truncated.index()], 1);
        // The whole header, no samples: a valid, empty datagram.
        let mut whole = sflow.to_vec();
        whole.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0]);
        let r = d.decode(exporter(), 0, &whole, |_| panic!("no record expected"));
        assert_eq!((r.format, r.error), (Some(FlowFormat::Sflow), None));
        // sFlow v4 and a 16-bit version 0 are not sFlow v5.
        let mut v4 = whole.clone();
        v4[3] = 4;
        let r = d.decode(exporter(), 0, &v4, |_| {});
        assert_eq!((r.format, r.error), (None, Some(DecodeError::BadVersion)));
    }

    #[test]
    fn counts_short_datagrams() {
        let mut d = Decoder::new(DecoderLimits::default());
        let r = d.decode(exporter(), 0, &[0], |_| {});
        assert_eq!(r.error, Some(DecodeError::Truncated));
        let r = d.decode(exporter(), 0, &[0, 5, 0, 1], |_| {});
        assert_eq!(r.format, Some(FlowFormat::NetflowV5));
        assert_eq!(r.error, Some(DecodeError::Truncated));
        assert_eq!(d.stats().datagrams, 2);
        assert_eq!(d.stats().errors[DecodeError::Truncated.index()], 2);
    }

    #[test]
    fn v5_records_carry_the_exporter() {
        let mut dg = vec![0u8; 24 + 48];
        dg[1] = 5;
        dg[3] = 1;
        let mut d = Decoder::new(DecoderLimits::default());
        let mut seen = Vec::new();
        let r = d.decode(exporter(), 0, &dg, |rec| seen.push(*rec));
        assert_eq!((r.records, r.error), (1, None));
        assert_eq!(seen[0].exporter_ip().to_string(), "192.0.2.7");
        assert_eq!(seen[0].exporter_port, 40000);
        assert_eq!(seen[0].sampling_rate, 1);
        assert_eq!(d.stats().records, 1);
    }

    use crate::testutil::{cat, ipfix, run, set, tpl, v9};

    fn from(port: u16) -> SocketAddr {
        SocketAddr::new("192.0.2.7".parse().unwrap(), port)
    }

    #[test]
    fn scopes_templates_by_exporter_port_and_domain() {
        let mut d = Decoder::new(DecoderLimits::default());
        let t = set(2, &tpl(256, &[(1, 4)]));
        let data = set(256, &[0, 0, 0, 9]);
        run(&mut d, from(1000), 0, &ipfix(1, 0, &[t]));

        assert_eq!(
            run(
                &mut d,
                from(1000),
                0,
                &ipfix(1, 0, std::slice::from_ref(&data))
            )
            .0
            .records,
            1
        );
        // Same address, other port: another exporter.
        assert_eq!(
            run(
                &mut d,
                from(1001),
                0,
                &ipfix(1, 0, std::slice::from_ref(&data))
            )
            .0
            .sets_held,
            1
        );
        // Same exporter, other domain.
        assert_eq!(
            run(
                &mut d,
                from(1000),
                0,
                &ipfix(2, 0, std::slice::from_ref(&data))
            )
            .0
            .sets_held,
            1
        );
        // Same exporter and domain, NetFlow v9: templates of one format do not serve the other.
        let v9_data = set(256, &[0, 0, 0, 9]);
        assert_eq!(
            run(&mut d, from(1000), 0, &v9(1, 0, 0, 1, &[v9_data]))
                .0
                .sets_held,
            1
        );
    }

    #[test]
    fn a_new_definition_replaces_the_old() {
        let mut d = Decoder::new(DecoderLimits::default());
        let t1 = set(2, &tpl(256, &[(1, 4)]));
        let t2 = set(2, &tpl(256, &[(2, 2), (1, 2)]));
        let data = set(256, &[0, 3, 0, 9]);
        let (_, a) = run(
            &mut d,
            from(1),
            0,
            &ipfix(1, 0, &[t1, data.clone(), t2, data]),
        );
        assert_eq!((a[0].bytes, a[0].packets), (0x0003_0009, 0));
        assert_eq!((a[1].bytes, a[1].packets), (9, 3));
        assert_eq!(d.templates(), 1);
        assert_eq!(d.stats().templates_learned, 2);
    }

    #[test]
    fn refuses_zero_length_templates_and_counts_them() {
        let mut d = Decoder::new(DecoderLimits::default());
        let t = set(2, &tpl(256, &[(1, 0)]));
        let (r, _) = run(&mut d, from(1), 0, &ipfix(1, 0, &[t]));
        assert_eq!(r.error, Some(DecodeError::BadTemplate));
        assert_eq!(d.stats().errors[DecodeError::BadTemplate.index()], 1);
        assert_eq!(d.templates(), 0);
    }

    #[test]
    fn expires_held_data_after_the_ttl() {
        let limits = DecoderLimits {
            pending_ttl_ms: 1_000,
            ..DecoderLimits::default()
        };
        let mut d = Decoder::new(limits);
        let data = set(256, &[0, 0, 0, 9]);
        run(
            &mut d,
            from(1),
            10_000,
            &ipfix(1, 0, std::slice::from_ref(&data)),
        );
        assert!(d.pending_bytes() > 0);
        d.expire(10_500);
        assert_eq!(d.stats().held_sets_expired, 0);
        d.expire(11_001);
        assert_eq!(d.stats().held_sets_expired, 1);
        assert_eq!(d.pending_bytes(), 0);

        // Expired while waiting, without a call to expire: counted when the template comes.
        run(&mut d, from(1), 20_000, &ipfix(1, 0, &[data]));
        let (r, _) = run(
            &mut d,
            from(1),
            22_000,
            &ipfix(1, 0, &[set(2, &tpl(256, &[(1, 4)]))]),
        );
        assert_eq!(r.records, 0);
        assert_eq!(d.stats().held_sets_expired, 2);
        assert_eq!(d.stats().held_sets_decoded, 0);
    }

    #[test]
    fn bounds_held_data_per_exporter_and_in_total() {
        let limits = DecoderLimits {
            pending_bytes_per_exporter: 20,
            pending_bytes_total: 30,
            ..DecoderLimits::default()
        };
        let mut d = Decoder::new(limits);
        let eight = |id: u16| set(id, &[0, 0, 0, 1, 0, 0, 0, 2]);
        for id in 256..259 {
            run(&mut d, from(1), 0, &ipfix(1, 0, &[eight(id)]));
        }
        // Two 8-byte bodies fit in 20; the third evicted the oldest.
        assert_eq!((d.stats().sets_held, d.stats().held_sets_evicted), (3, 1));
        assert_eq!(d.pending_bytes(), 16);
        // Another exporter: 16 + 8 fits in 30, then 16 + 16 does not.
        run(&mut d, from(2), 0, &ipfix(1, 0, &[eight(256)]));
        let (r, _) = run(&mut d, from(2), 0, &ipfix(1, 0, &[eight(257)]));
        assert_eq!(r.sets_without_template, 1);
        assert_eq!(d.stats().sets_without_template, 1);
        // A body larger than the per-exporter bound is never held.
        let (r, _) = run(&mut d, from(3), 0, &ipfix(1, 0, &[set(256, &[0; 24])]));
        assert_eq!(r.sets_without_template, 1);
        // The evicted set does not come back; the two kept ones decode.
        let t = set(2, &cat(&[&tpl(257, &[(1, 4)]), &tpl(258, &[(1, 4)])]));
        let (r, _) = run(&mut d, from(1), 0, &ipfix(1, 0, &[t]));
        assert_eq!(r.records, 4);
    }

    #[test]
    fn bounds_templates_and_exporters() {
        let limits = DecoderLimits {
            max_exporters: 2,
            max_templates_per_exporter: 2,
            max_templates_total: 3,
            ..DecoderLimits::default()
        };
        let mut d = Decoder::new(limits);
        let three = set(
            2,
            &cat(&[
                &tpl(256, &[(1, 4)]),
                &tpl(257, &[(1, 4)]),
                &tpl(258, &[(1, 4)]),
            ]),
        );
        run(
            &mut d,
            from(1),
            0,
            &ipfix(1, 0, std::slice::from_ref(&three)),
        );
        assert_eq!((d.templates(), d.stats().templates_refused), (2, 1));
        // Redefining a kept template is always allowed.
        run(
            &mut d,
            from(1),
            0,
            &ipfix(1, 0, &[set(2, &tpl(256, &[(2, 4)]))]),
        );
        assert_eq!((d.templates(), d.stats().templates_refused), (2, 1));
        run(
            &mut d,
            from(2),
            0,
            &ipfix(1, 0, std::slice::from_ref(&three)),
        );
        assert_eq!((d.templates(), d.stats().templates_refused), (3, 3));
        // A third exporter has no room at all: templates refused, data dropped and counted.
        let (r, _) = run(
            &mut d,
            from(3),
            0,
            &ipfix(1, 0, &[three, set(256, &[0, 0, 0, 1])]),
        );
        assert_eq!(
            (r.sets_without_template, d.stats().templates_refused),
            (1, 6)
        );
        // v5 needs no state and is not refused.
        let mut v5 = vec![0u8; 24 + 48];
        v5[1] = 5;
        v5[3] = 1;
        assert_eq!(run(&mut d, from(4), 0, &v5).0.records, 1);
    }

    #[test]
    fn expire_forgets_exporters_without_state() {
        let mut d = Decoder::new(DecoderLimits {
            max_exporters: 1,
            pending_ttl_ms: 10,
            ..DecoderLimits::default()
        });
        run(&mut d, from(1), 0, &ipfix(1, 0, &[set(256, &[0, 0, 0, 1])]));
        let (r, _) = run(&mut d, from(2), 0, &ipfix(1, 0, &[set(256, &[0, 0, 0, 1])]));
        assert_eq!(r.sets_without_template, 1);
        d.expire(100);
        let (r, _) = run(
            &mut d,
            from(2),
            100,
            &ipfix(1, 0, &[set(256, &[0, 0, 0, 1])]),
        );
        assert_eq!(r.sets_held, 1);
    }

    #[test]
    fn silent_exporters_are_forgotten_and_a_full_table_evicts_the_stalest() {
        let mut d = Decoder::new(DecoderLimits {
            max_exporters: 1,
            ..DecoderLimits::default()
        });
        let template = || ipfix(1, 0, &[set(2, &tpl(256, &[(1, 4)]))]);
        let data = || ipfix(1, 0, &[set(256, &[0, 0, 0, 9])]);
        run(&mut d, from(1), 0, &template());
        assert_eq!(run(&mut d, from(1), 1_000, &data()).0.records, 1);

        // A second exporter while the first was heard from 30 s ago: refused and counted.
        let (r, _) = run(
            &mut d,
            from(2),
            31_000,
            &ipfix(
                1,
                0,
                &[set(2, &tpl(256, &[(1, 4)])), set(256, &[0, 0, 0, 1])],
            ),
        );
        assert_eq!((r.records, r.sets_without_template), (0, 1));
        assert_eq!(d.stats().templates_refused, 1);
        // 61 s after the first one's last set, the newcomer takes its slot.
        let (r, _) = run(
            &mut d,
            from(2),
            62_000,
            &ipfix(
                1,
                0,
                &[set(2, &tpl(256, &[(1, 4)])), set(256, &[0, 0, 0, 1])],
            ),
        );
        assert_eq!(r.records, 1);
        assert_eq!(
            (d.stats().exporters_evicted, d.stats().templates_dropped),
            (1, 1)
        );
        assert_eq!(d.templates(), 1);
        // The evicted exporter's data now waits for a template again.
        assert_eq!(
            run(&mut d, from(1), 62_500, &data())
                .0
                .sets_without_template,
            1
        );

        // Thirty silent minutes later, `expire` forgets exporter 2 and its template.
        d.expire(62_000 + EXPORTER_IDLE_MS);
        assert_eq!((d.templates(), d.stats().exporters_expired), (0, 1));
        assert_eq!(d.stats().templates_dropped, 2);
        let (r, _) = run(&mut d, from(2), 62_000 + EXPORTER_IDLE_MS, &data());
        assert_eq!((r.records, r.sets_held), (0, 1));
    }

    mod sflow_state {
        use super::*;
        use crate::testutil::sflow::{
            counter_sample, datagram, eth, ethernet_counters, flow_sample, generic_counters,
            ipv4_pkt, raw_header, udp,
        };

        const AGENT: [u8; 4] = [10, 9, 9, 9];

        fn sample(drops: u32) -> Vec<u8> {
            let frame = eth(
                &[],
                0x0800,
                &ipv4_pkt(17, [1; 4], [2; 4], 0, 0, 0, &udp(1, 2)),
            );
            flow_sample(1, 5, 100, 0, drops, 1, 2, &[raw_header(1, 64, &frame)])
        }

        fn dg(sub: u32, seq: u32) -> Vec<u8> {
            datagram(&AGENT, sub, seq, &[sample(0)])
        }

        /// The datagram as sent by an agent that has just restarted (uptime 1 s).
        fn restarted(mut dg: Vec<u8>) -> Vec<u8> {
            dg[20..24].copy_from_slice(&1_000u32.to_be_bytes());
            dg
        }

        #[test]
        fn decode_and_decode_with_counters_agree_on_flows() {
            let cs = counter_sample(true, 1, (0, 5), &[generic_counters(5), ethernet_counters()]);
            let both = datagram(&AGENT, 0, 1, &[sample(0), cs]);
            let mut d = Decoder::new(DecoderLimits::default());
            let (r, flows) = run(&mut d, from(6343), 5, &both);
            assert_eq!(
                (r.format, r.records, r.counter_records, r.error),
                (Some(FlowFormat::Sflow), 1, 1, None)
            );
            assert_eq!(flows[0].sampling_rate, 100);

            let mut d = Decoder::new(DecoderLimits::default());
            let (mut f, mut c) = (Vec::new(), Vec::new());
            let r = d.decode_with_counters(from(6343), 5, &both, |x| f.push(*x), |x| c.push(*x));
            assert_eq!((r.records, r.counter_records), (1, 1));
            assert_eq!((f, c[0].if_index, c[0].time_ms), (flows, 5, 5));
            let st = d.sflow_stats();
            assert_eq!(
                (st.datagrams, st.flow_samples, st.counter_samples),
                (1, 1, 1)
            );
            assert_eq!(d.stats().records, 1);
        }

        #[test]
        fn counts_sequence_gaps_late_datagrams_and_resets() {
            let mut d = Decoder::new(DecoderLimits::default());
            for seq in [10, 11, 14, 13, 15] {
                run(&mut d, from(1), 0, &dg(0, seq));
            }
            let s = *d.sflow_stats();
            // 12 and 13 missing after 11; 13 then arrives late.
            assert_eq!(
                (s.sequence_gaps, s.sequence_late, s.sequence_resets),
                (2, 1, 0)
            );
            // A duplicate is late, not a gap.
            run(&mut d, from(1), 0, &dg(0, 15));
            // The agent restarts at 1, its uptime back to 1 s.
            run(&mut d, from(1), 0, &restarted(dg(0, 1)));
            run(&mut d, from(1), 0, &restarted(dg(0, 2)));
            let s = *d.sflow_stats();
            assert_eq!(
                (s.sequence_gaps, s.sequence_late, s.sequence_resets),
                (2, 2, 1)
            );
            // A big step back is a reset whatever the uptime says.
            run(&mut d, from(1), 0, &dg(0, 5_000));
            run(&mut d, from(1), 0, &dg(0, 5_000 - SFLOW_REORDER_WINDOW - 1));
            assert_eq!(d.sflow_stats().sequence_resets, 2);
            // Wrapping from 2^32 - 1 to 0 is progress.
            let mut d = Decoder::new(DecoderLimits::default());
            run(&mut d, from(1), 0, &dg(0, u32::MAX));
            run(&mut d, from(1), 0, &dg(0, 1));
            assert_eq!(d.sflow_stats().sequence_gaps, 1);
        }

        #[test]
        fn keys_sequences_by_exporter_agent_and_sub_agent() {
            let mut d = Decoder::new(DecoderLimits::default());
            run(&mut d, from(1), 0, &dg(0, 100));
            // Other sub-agent, other exporter address, other agent address: separate sequences.
            run(&mut d, from(1), 0, &dg(1, 5));
            let other: SocketAddr = "198.51.100.1:1".parse().unwrap();
            run(&mut d, other, 0, &dg(0, 50));
            run(&mut d, from(1), 0, &datagram(&[10, 9, 9, 8], 0, 7, &[]));
            // Same exporter address from another port: the same agent.
            run(&mut d, from(2), 0, &dg(0, 101));
            assert_eq!(d.sflow_agents(), 4);
            let s = d.sflow_stats();
            assert_eq!((s.sequence_gaps, s.sequence_resets), (0, 0));
        }

        #[test]
        fn bounds_tracked_agents() {
            let mut d = Decoder::new(DecoderLimits {
                max_exporters: 2,
                ..DecoderLimits::default()
            });
            for sub in 0..4 {
                let (r, _) = run(&mut d, from(1), 0, &dg(sub, 1));
                // Untracked agents are still decoded.
                assert_eq!(r.records, 1);
            }
            assert_eq!((d.sflow_agents(), d.sflow_stats().agents_untracked), (2, 2));
            d.expire(SFLOW_AGENT_IDLE_MS);
            assert_eq!(d.sflow_agents(), 2);
            d.expire(SFLOW_AGENT_IDLE_MS + 1);
            assert_eq!(d.sflow_agents(), 0);
            run(&mut d, from(1), 0, &dg(3, 1));
            assert_eq!(d.sflow_agents(), 1);
        }

        #[test]
        fn counts_samples_the_agent_dropped() {
            let mut d = Decoder::new(DecoderLimits::default());
            let with = |seq, drops: &[u32]| {
                let samples: Vec<Vec<u8>> = drops.iter().map(|x| sample(*x)).collect();
                datagram(&AGENT, 0, seq, &samples)
            };
            // The first total is a baseline; then +3, +0, +2 within one datagram.
            run(&mut d, from(1), 0, &with(1, &[100]));
            run(&mut d, from(1), 0, &with(2, &[103, 103, 105]));
            assert_eq!(d.sflow_stats().samples_dropped, 5);
            // A total that goes back is a restarted count, not a loss.
            run(&mut d, from(1), 0, &with(3, &[1, 4]));
            assert_eq!(d.sflow_stats().samples_dropped, 8);
            // An agent restart forgets the totals.
            run(&mut d, from(1), 0, &restarted(with(1, &[50])));
            assert_eq!(d.sflow_stats().samples_dropped, 8);
        }

        #[test]
        fn every_truncation_is_counted_and_never_panics() {
            let cs = counter_sample(false, 1, (0, 5), &[generic_counters(5)]);
            let full = datagram(&AGENT, 0, 1, &[sample(0), cs, sample(0)]);
            let mut d = Decoder::new(DecoderLimits::default());
            for n in 0..full.len() {
                let (mut f, mut c) = (0u32, 0u32);
                let r = d.decode_with_counters(from(1), 0, &full[..n], |_| f += 1, |_| c += 1);
                assert!(r.error.is_some() || f + c < 3, "cut at {n}");
                assert_eq!((r.records, r.counter_records), (f, c));
            }
            let errors: u64 = d.stats().errors.iter().sum();
            assert_eq!(errors, full.len() as u64);
        }
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;
        use crate::testutil::{cat, ipfix, ipfix_opt_tpl, set, tpl, v9, v9_opt_tpl};

        /// Valid datagrams of every format, to be mutated.
        fn seeds() -> Vec<Vec<u8>> {
            let mut v5 = vec![0u8; 24 + 2 * 48];
            v5[1] = 5;
            v5[3] = 2;
            v5[22] = 0x40;
            v5[23] = 0x10;
            let v9_t = set(
                0,
                &cat(&[&tpl(
                    256,
                    &[(8, 4), (12, 4), (1, 4), (2, 4), (22, 4), (21, 4), (48, 1)],
                )]),
            );
            let v9_ot = set(1, &v9_opt_tpl(257, &[(1, 4)], &[(48, 1), (34, 4)]));
            let v9_od = set(257, &[0, 0, 0, 0, 1, 0, 0, 0, 64, 0, 0, 0]);
            let v9_d = set(256, &[1; 50]);
            // Template 300: protocol, a variable-length string, octets, and an enterprise
            // element (E bit, PEN 9).
            let mut t300 = tpl(300, &[(4, 1), (82, 0xffff), (1, 8), (0x8001, 2)]);
            t300.extend_from_slice(&[0, 0, 0, 9]);
            let ipfix_t = set(2, &t300);
            let ipfix_ot = set(3, &ipfix_opt_tpl(301, &[(302, 4)], &[(305, 4), (306, 4)]));
            let ipfix_od = set(301, &[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9]);
            let ipfix_d = set(
                300,
                &[6, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 17, 255],
            );
            vec![
                v5,
                v9(
                    1,
                    5_000,
                    1_000,
                    4,
                    &[v9_d.clone(), v9_t, v9_ot, v9_od, v9_d],
                ),
                ipfix(
                    7,
                    1_000,
                    &[ipfix_d.clone(), ipfix_t, ipfix_ot, ipfix_od, ipfix_d],
                ),
                ipfix(7, 1_000, &[set(2, &[0, 2, 0, 0]), set(3, &[0, 3, 0, 0])]),
                sflow_seed(),
            ]
        }

        /// An sFlow datagram touching every path: a flow sample with a tagged TCP header and
        /// the extended records, an expanded one with an MPLS/IPv6 header, a counter sample,
        /// and an unknown sample.
        fn sflow_seed() -> Vec<u8> {
            use crate::testutil::sflow::*;
            let v4 = ipv4_pkt(6, [10, 0, 0, 1], [10, 0, 0, 2], 0, 0, 0, &tcp(1, 2, 0x12));
            let frame = eth(&[(0x88a8, 1), (0x8100, 2)], 0x0800, &v4);
            let mut gw = words(&[1, 0x0a00_00fe, 1, 2, 3, 1, 2, 2, 4, 5, 1, 9, 0]);
            gw.extend_from_slice(&words(&[]));
            let fs = flow_sample(
                1,
                3,
                64,
                1_000,
                0,
                3,
                0x4000_0001,
                &[
                    entry(1001, &words(&[10, 0, 20, 0])),
                    raw_header(1, 1518, &frame),
                    entry(1002, &words(&[1, 0x0a00_00fe, 24, 16])),
                    entry(1003, &gw),
                ],
            );
            let v6 = ipv6_pkt(17, [1; 16], [2; 16], 0, &udp(3, 4));
            let mut mpls = vec![0x00, 0x01, 0x01, 0x40];
            mpls.extend_from_slice(&v6);
            let xfs = flow_sample_expanded(
                2,
                (0, 3),
                64,
                (0, 3),
                (2, 2),
                &[raw_header(1, 90, &eth(&[], 0x8847, &mpls))],
            );
            let cs = counter_sample(true, 3, (0, 3), &[generic_counters(3), ethernet_counters()]);
            let unknown = entry(4_413 << 12 | 7, &[0; 8]);
            datagram(&[192, 0, 2, 1], 0, 1, &[fs, xfs, cs, unknown])
        }

        #[test]
        fn seeds_decode_cleanly() {
            let mut d = Decoder::new(DecoderLimits::default());
            let from: SocketAddr = "192.0.2.1:1000".parse().unwrap();
            let got: Vec<(u32, Option<DecodeError>)> = seeds()
                .iter()
                .map(|dg| {
                    let r = d.decode(from, 0, dg, |_| {});
                    (r.records + r.counter_records, r.error)
                })
                .collect();
            assert_eq!(
                got,
                vec![(2, None), (4, None), (2, None), (0, None), (3, None)]
            );
            assert_eq!(d.stats().templates_withdrawn, 2);
            let s = d.sflow_stats();
            assert_eq!(
                (s.flow_samples, s.counter_samples, s.unknown_samples),
                (2, 1, 1)
            );
        }

        #[derive(Clone, Debug)]
        enum Input {
            Random(Vec<u8>),
            Mutated {
                seed: usize,
                edits: Vec<(usize, u8)>,
                cut: usize,
            },
            Prefixed {
                version: u16,
                body: Vec<u8>,
                fix_len: bool,
            },
            /// An sFlow v5 header (IPv4 or IPv6 agent) followed by random words, most of them
            /// small so that counts, lengths and formats are often plausible.
            Sflow {
                v6: bool,
                words: Vec<u32>,
            },
        }

        fn input() -> impl Strategy<Value = Input> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300).prop_map(Input::Random),
                (
                    0usize..4,
                    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                    any::<usize>()
                )
                    .prop_map(|(seed, edits, cut)| Input::Mutated {
                        seed,
                        edits,
                        cut
                    }),
                (
                    prop_oneof![Just(5u16), Just(9), Just(10)],
                    proptest::collection::vec(any::<u8>(), 0..200),
                    any::<bool>()
                )
                    .prop_map(|(version, body, fix_len)| Input::Prefixed {
                        version,
                        body,
                        fix_len
                    }),
                (
                    any::<bool>(),
                    proptest::collection::vec(
                        prop_oneof![0u32..5, Just(1001u32), Just(1003), 0u32..200, any::<u32>()],
                        0..80
                    )
                )
                    .prop_map(|(v6, words)| Input::Sflow { v6, words }),
            ]
        }

        fn bytes(input: &Input, seeds: &[Vec<u8>]) -> Vec<u8> {
            match input {
                Input::Random(b) => b.clone(),
                Input::Mutated { seed, edits, cut } => {
                    let mut b = seeds[*seed % seeds.len()].clone();
                    for (at, val) in edits {
                        let n = b.len();
                        b[at % n] = *val;
                    }
                    // Mostly keep the whole datagram; sometimes cut it short.
                    if cut % 4 == 0 {
                        b.truncate(cut / 4 % (b.len() + 1));
                    }
                    b
                }
                Input::Prefixed {
                    version,
                    body,
                    fix_len,
                } => {
                    let mut b = version.to_be_bytes().to_vec();
                    b.extend_from_slice(body);
                    if *fix_len && b.len() >= 4 {
                        let len = u16::try_from(b.len()).unwrap().to_be_bytes();
                        b[2..4].copy_from_slice(&len);
                    }
                    b
                }
                Input::Sflow { v6, words } => {
                    let mut b = vec![0, 0, 0, 5, 0, 0, 0, if *v6 { 2 } else { 1 }];
                    b.extend(words.iter().flat_map(|w| w.to_be_bytes()));
                    b
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn never_panics_and_keeps_its_books(
                inputs in proptest::collection::vec((input(), 0u8..3, 0u64..3_000), 1..12),
            ) {
                let seeds = seeds();
                let limits = DecoderLimits {
                    max_exporters: 2,
                    max_templates_per_exporter: 4,
                    max_templates_total: 6,
                    pending_bytes_per_exporter: 200,
                    pending_bytes_total: 300,
                    pending_ttl_ms: 1_000,
                };
                let mut d = Decoder::new(limits);
                let (mut now, mut records, mut bytes_in, mut with_error) = (0u64, 0u64, 0u64, 0u64);
                let (mut held, mut without) = (0u64, 0u64);

                for (inp, exp, step) in &inputs {
                    let dg = bytes(inp, &seeds);
                    let from = SocketAddr::new("192.0.2.1".parse().unwrap(), 1000 + u16::from(*exp));
                    now += step;
                    let pending_before = d.pending_bytes() as u64;
                    let (mut emitted, mut counters) = (0u64, 0u64);
                    let r = d.decode_with_counters(from, now, &dg, |rec| {
                        emitted += 1;
                        assert_eq!(rec.exporter_port, from.port());
                        assert!(rec.sampling_rate >= 1);
                        assert!(matches!(rec.ip_version, 0 | 4 | 6));
                        assert!(rec.truncated <= 1);
                        assert_eq!(rec._pad, [0; 4]);
                    }, |c| {
                        counters += 1;
                        assert_eq!(c.exporter_port, from.port());
                        assert!(c.has_generic == 1 || c.has_ethernet == 1);
                    });
                    prop_assert_eq!(u64::from(r.records), emitted);
                    prop_assert_eq!(u64::from(r.counter_records), counters);
                    if r.format == Some(FlowFormat::Sflow) {
                        // Every sample takes 8 bytes at least, after a 28-byte header.
                        let n = emitted + counters;
                        prop_assert!(n == 0 || n * 8 + 28 <= dg.len() as u64);
                    } else {
                        prop_assert_eq!(counters, 0);
                    }
                    // Every record consumes at least one byte of this datagram or of held data.
                    prop_assert!(emitted <= dg.len() as u64 + pending_before);
                    if r.format == Some(FlowFormat::NetflowV5) {
                        prop_assert!(emitted <= 30);
                    }
                    if r.format.is_none() {
                        prop_assert_eq!(emitted, 0);
                    }
                    records += emitted;
                    bytes_in += dg.len() as u64;
                    with_error += u64::from(r.error.is_some());
                    held += u64::from(r.sets_held);
                    without += u64::from(r.sets_without_template);
                    if step % 3 == 0 {
                        d.expire(now);
                    }

                    let s = *d.stats();
                    prop_assert!(d.pending_bytes() <= limits.pending_bytes_total);
                    prop_assert!(d.templates() <= limits.max_templates_total);
                    prop_assert_eq!(
                        s.sets_held,
                        s.held_sets_decoded + s.held_sets_expired + s.held_sets_evicted
                            + d.pending_sets() as u64
                    );
                }

                let s = d.stats();
                prop_assert_eq!(s.datagrams, inputs.len() as u64);
                prop_assert_eq!(s.records, records);
                prop_assert!(records <= bytes_in);
                prop_assert_eq!((s.sets_held, s.sets_without_template), (held, without));
                let errors: u64 = s.errors.iter().sum();
                // Errors of held sets are counted when they are decoded, not in the result.
                prop_assert!(errors >= with_error);
                prop_assert!(errors - with_error <= s.held_sets_decoded);
            }
        }
    }
}
