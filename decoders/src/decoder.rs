//! The entry point: one [`Decoder`] per worker, holding the template state of every exporter
//! that worker has seen.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::template::{Accum, SamplerRef, Template, TemplateError, TemplateKind, TimeBase};
use crate::{DecodeError, FlowFormat, FlowRecord, addr_to_bytes, ipfix, netflow_v5, netflow_v9};

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
    /// Option records announcing a sampling rate or system-init time that were not kept
    /// because the per-exporter bound (`max_templates_per_exporter` entries) was hit.
    pub options_refused: u64,
}

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
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &DecoderLimits {
        &self.limits
    }

    /// Decodes one datagram received from `exporter` at `now_ms` (Unix milliseconds) and calls
    /// `emit` once per decoded record. Auto-detects NetFlow v5, v9 and IPFIX from the header.
    ///
    /// Errors are returned in [`DatagramResult::error`] and counted in [`DecodeStats::errors`];
    /// records decoded before the error have been emitted.
    pub fn decode<F: FnMut(&FlowRecord)>(
        &mut self,
        exporter: SocketAddr,
        now_ms: u64,
        datagram: &[u8],
        mut emit: F,
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
            Ok(VERSION_V5) => {
                result.format = Some(FlowFormat::NetflowV5);
                netflow_v5::Packet::new_checked(datagram).map(|p| {
                    result.records += netflow_v5::parse(&p, &base, &mut emit);
                })
            }
            Ok(VERSION_V9) => {
                result.format = Some(FlowFormat::NetflowV9);
                netflow_v9::Packet::new_checked(datagram).and_then(|p| {
                    let mut cx = Cx::new(self, exporter, now_ms, &mut result, &mut emit);
                    netflow_v9::parse(&p, &base, &mut cx)
                })
            }
            Ok(VERSION_IPFIX) => {
                result.format = Some(FlowFormat::Ipfix);
                ipfix::Packet::new_checked(datagram).and_then(|p| {
                    let mut cx = Cx::new(self, exporter, now_ms, &mut result, &mut emit);
                    ipfix::parse(&p, &base, &mut cx)
                })
            }
            // sFlow (issue 3) and anything else.
            Ok(_) => Err(DecodeError::BadVersion),
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
        // Known gap: exporters that went silent keep their templates until restart; an idle
        // timeout would free their slot under `max_exporters`.
        self.exporters.retain(|_, s| !s.is_empty());
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
        let Some(state) = exporter_state(&mut self.dec.exporters, &limits, self.exporter) else {
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
        // Known gap: RFC 7011 § 8.4 lets a collector expire UDP templates that are not refreshed;
        // here templates live until withdrawn, replaced, or the decoder is dropped.
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
        let Some(state) = exporter_state(&mut self.dec.exporters, &limits, self.exporter) else {
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
    let out = template.for_each_record(body, |acc: &Accum| {
        // A sampler named in the record wins over the scope-wide announcement.
        let rate = match acc.sampler_ref() {
            SamplerRef::Scope => scope_rate,
            named => st.samplers.get(&sampler_key(named)).copied().or(scope_rate),
        };
        let mut rec = *base;
        acc.finish(&mut rec, time, rate);
        emit(&rec);
        emitted += 1;
    });
    match out {
        Ok(_) => Ok(emitted),
        Err(e) => Err((emitted, e)),
    }
}

/// The state of `addr`, created if there is room for one more exporter.
fn exporter_state<'m>(
    exporters: &'m mut HashMap<SocketAddr, ExporterState>,
    limits: &DecoderLimits,
    addr: SocketAddr,
) -> Option<&'m mut ExporterState> {
    if !exporters.contains_key(&addr) && exporters.len() >= limits.max_exporters {
        return None;
    }
    Some(exporters.entry(addr).or_default())
}

/// NetFlow v5: the 16-bit version field at offset 0.
const VERSION_V5: u16 = 0x0005;
/// NetFlow v9 (RFC 3954 § 5.1).
const VERSION_V9: u16 = 0x0009;
/// IPFIX (RFC 7011 § 3.1).
const VERSION_IPFIX: u16 = 0x000a;

/// Reads the 16-bit version that NetFlow v5, v9 and IPFIX all put at offset 0.
///
/// sFlow v5 puts a 32-bit version there instead (`00 00 00 05`), so its 16-bit reading is 0 and
/// it can never be taken for NetFlow v5 (`00 05`); until the sFlow decoder lands (issue 3) it is
/// refused here as [`DecodeError::BadVersion`].
fn sniff_version(datagram: &[u8]) -> Result<u16, DecodeError> {
    match datagram {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
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
        // sFlow v5: 32-bit version 5, then an IPv4 agent address.
        let sflow = [0, 0, 0, 5, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let r = d.decode(exporter(), 0, &sflow, |_| panic!("no record expected"));
        assert_eq!(r.error, Some(DecodeError::BadVersion));
        assert_eq!(r.format, None);
        assert_eq!(d.stats().errors[DecodeError::BadVersion.index()], 1);
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
            ]
        }

        #[test]
        fn seeds_decode_cleanly() {
            let mut d = Decoder::new(DecoderLimits::default());
            let from: SocketAddr = "192.0.2.1:1000".parse().unwrap();
            let got: Vec<(u32, Option<DecodeError>)> = seeds()
                .iter()
                .map(|dg| {
                    let r = d.decode(from, 0, dg, |_| {});
                    (r.records, r.error)
                })
                .collect();
            assert_eq!(got, vec![(2, None), (4, None), (2, None), (0, None)]);
            assert_eq!(d.stats().templates_withdrawn, 2);
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
                    let mut emitted = 0u64;
                    let r = d.decode(from, now, &dg, |rec| {
                        emitted += 1;
                        assert_eq!(rec.exporter_port, from.port());
                        assert!(rec.sampling_rate >= 1);
                        assert!(matches!(rec.ip_version, 0 | 4 | 6));
                    });
                    prop_assert_eq!(u64::from(r.records), emitted);
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
