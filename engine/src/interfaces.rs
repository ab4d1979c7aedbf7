//! Rates from interface counter samples: sFlow agents send cumulative counters per interface
//! every 20 to 30 s; the merger keeps each interface's previous sample and turns the difference
//! into bits per second and utilisation.
//!
//! The interval is the agent's own uptime difference when both samples carry one (its clock,
//! not the network's jitter), else the arrival times. A counter that went backwards (agent
//! restart, counter reset or 64-bit wrap) gives no rate for that sample. At most
//! [`MAX_INTERFACES`] interfaces are remembered; interfaces silent for [`IDLE_MS`] are forgotten
//! when room is needed, and samples of interfaces beyond the bound get no rate (counted).

use std::collections::HashMap;

use flowplane_decoders::CounterRecord;

use crate::output::InterfaceCounters;

/// Interfaces whose previous sample is kept.
pub(crate) const MAX_INTERFACES: usize = 65_536;
/// An interface silent for this long may be forgotten.
pub(crate) const IDLE_MS: u64 = 10 * 60 * 1_000;

/// (agent, sub-agent, source id type, source id index).
type IfKey = ([u8; 16], u32, u32, u32);

#[derive(Clone, Copy, Debug)]
struct Last {
    time_ms: u64,
    uptime_ms: u32,
    in_octets: u64,
    out_octets: u64,
}

/// The previous sample of every interface seen.
#[derive(Debug, Default)]
pub(crate) struct InterfaceRates {
    last: HashMap<IfKey, Last>,
    untracked: u64,
}

impl InterfaceRates {
    /// Samples that got no rate because [`MAX_INTERFACES`] interfaces were already tracked.
    pub(crate) fn untracked(&self) -> u64 {
        self.untracked
    }

    /// The sample with its rates since the interface's previous one.
    pub(crate) fn annotate(&mut self, r: &CounterRecord) -> InterfaceCounters {
        let key = (r.agent, r.sub_agent_id, r.source_id_type, r.source_id_index);
        let now = Last {
            time_ms: r.time_ms,
            uptime_ms: r.uptime_ms,
            in_octets: r.in_octets,
            out_octets: r.out_octets,
        };
        let mut out = InterfaceCounters {
            record: *r,
            interval_secs: None,
            in_bps: None,
            out_bps: None,
            utilisation: None,
        };
        let prev = match self.last.get_mut(&key) {
            Some(slot) => Some(std::mem::replace(slot, now)),
            None => {
                if self.last.len() >= MAX_INTERFACES {
                    let newest = r.time_ms;
                    self.last
                        .retain(|_, l| newest.saturating_sub(l.time_ms) < IDLE_MS);
                }
                if self.last.len() < MAX_INTERFACES {
                    self.last.insert(key, now);
                } else {
                    self.untracked += 1;
                }
                None
            }
        };
        let Some(prev) = prev else { return out };

        let interval_ms = if prev.uptime_ms != 0 && now.uptime_ms != 0 {
            // The agent's uptime went back: it restarted, the counters start again.
            (now.uptime_ms >= prev.uptime_ms).then(|| u64::from(now.uptime_ms - prev.uptime_ms))
        } else {
            Some(now.time_ms.saturating_sub(prev.time_ms))
        };
        let Some(interval_ms) = interval_ms.filter(|ms| *ms > 0) else {
            return out;
        };
        let secs = interval_ms as f64 / 1_000.0;
        let rate = |a: u64, b: u64| (b >= a).then(|| (b - a) as f64 * 8.0 / secs);
        out.interval_secs = Some(secs);
        out.in_bps = rate(prev.in_octets, now.in_octets);
        out.out_bps = rate(prev.out_octets, now.out_octets);
        if r.if_speed > 0 {
            let busiest = match (out.in_bps, out.out_bps) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            out.utilisation = busiest.map(|bps| (bps / r.if_speed as f64).min(1.0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(uptime_ms: u32, in_octets: u64, out_octets: u64) -> CounterRecord {
        CounterRecord {
            agent: [1; 16],
            source_id_index: 7,
            if_index: 7,
            if_speed: 1_000_000_000,
            uptime_ms,
            time_ms: 1_700_000_000_000 + u64::from(uptime_ms),
            in_octets,
            out_octets,
            ..CounterRecord::default()
        }
    }

    #[test]
    fn rates_and_utilisation_from_consecutive_samples() {
        let mut r = InterfaceRates::default();
        let first = r.annotate(&sample(10_000, 1_000, 5_000));
        assert_eq!((first.in_bps, first.utilisation), (None, None));
        // 20 s later: 25 MB in (10 Mb/s), 250 MB out (100 Mb/s) on 1 Gb/s.
        let second = r.annotate(&sample(30_000, 1_000 + 25_000_000, 5_000 + 250_000_000));
        assert_eq!(second.interval_secs, Some(20.0));
        assert_eq!(second.in_bps, Some(10_000_000.0));
        assert_eq!(second.out_bps, Some(100_000_000.0));
        assert_eq!(second.utilisation, Some(0.1));
    }

    #[test]
    fn a_restart_or_a_counter_going_back_gives_no_rate() {
        let mut r = InterfaceRates::default();
        r.annotate(&sample(50_000, 9_000, 9_000));
        // Uptime went back: the agent restarted.
        let s = r.annotate(&sample(1_000, 10, 10));
        assert_eq!((s.in_bps, s.out_bps), (None, None));
        // Counter back while uptime moves on: that direction has no rate, the other has.
        let s = r.annotate(&sample(21_000, 5, 2_510));
        assert_eq!(s.in_bps, None);
        assert_eq!(s.out_bps, Some(1_000.0));
        assert_eq!(s.utilisation, Some(1e-6));
    }

    #[test]
    fn bounded() {
        let mut r = InterfaceRates::default();
        for i in 0..MAX_INTERFACES as u32 + 10 {
            let mut s = sample(1, 0, 0);
            s.source_id_index = i;
            r.annotate(&s);
        }
        assert_eq!(r.last.len(), MAX_INTERFACES);
        assert_eq!(r.untracked(), 10);
    }
}
