//! When an event may go out: `send_at`, a class's local delivery time and
//! SMS quiet hours, all in the recipient's time zone. Pure decisions over a
//! [`Clock`]; the consumer asks [`hold`] for every event it decodes, and an
//! event held goes to the delivery store's schedule (`src/scheduler.rs`)
//! until its time, instead of waiting in memory or in an open delivery.
//!
//! The recipient's zone is the event's `to.timezone`; else, for an SMS, the
//! zones of the phone number's country ([`country_zones`]); else
//! `quiet_hours.default_timezone`. A country with several zones is quiet
//! while any of them is, and opens when the last of them does: a message
//! may be late for some recipients, never early for any.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use herald_actors::model::{Channel, Job};

use crate::config::Config;

/// The time, as herald reads it (injected in tests).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms()
    }
}

/// The machine's clock moved by an offset that can change while herald
/// runs: tests put herald at 23:00 somewhere, then at 08:00.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    /// Makes the clock read `at` now.
    pub fn set(&self, at: DateTime<Utc>) {
        let offset = at.timestamp_millis() - crate::store::now_ms();
        self.offset_ms.store(offset, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}

/// Why an event waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// The event's `send_at` is still ahead.
    SendAt,
    /// The class delivers at a local time of day.
    LocalTime,
    /// An SMS inside the recipient's quiet hours.
    QuietHours,
}

impl HoldReason {
    /// The stored name and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::SendAt => "send_at",
            HoldReason::LocalTime => "local_time",
            HoldReason::QuietHours => "quiet_hours",
        }
    }
}

/// An event that must wait until `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub until_ms: i64,
    pub reason: HoldReason,
}

/// Whether `job` must wait at `now_ms`, and until when. `released`: the
/// event comes back from the schedule (its local delivery time is the one
/// it waited for, not the next day's).
pub fn hold(cfg: &Config, job: &Job, released: bool, now_ms: i64) -> Option<Hold> {
    if let Some(at) = job.send_at_ms.filter(|at| *at > now_ms) {
        return Some(Hold {
            until_ms: at,
            reason: HoldReason::SendAt,
        });
    }
    let class = cfg.classes.get(job.class.as_ref())?;
    let now = DateTime::from_timestamp_millis(now_ms)?;
    let zones = || recipient_zones(job, cfg.quiet_hours.default_tz());
    if !released && job.fallback_from.is_none() && job.attempt == 0 {
        if let Some((weekday, weekend)) = class.local_delivery() {
            let until = zones()
                .iter()
                .map(|tz| next_local_delivery(*tz, now, weekday, weekend))
                .max()?;
            return Some(Hold {
                until_ms: until.timestamp_millis(),
                reason: HoldReason::LocalTime,
            });
        }
    }
    let q = &cfg.quiet_hours;
    if q.enabled && job.channel == Channel::Sms && !class.quiet_hours_exempt {
        let opens = zones()
            .iter()
            .filter_map(|tz| quiet_until(*tz, now, q.start_time(), q.end_time()))
            .max()?;
        return Some(Hold {
            until_ms: opens.timestamp_millis(),
            reason: HoldReason::QuietHours,
        });
    }
    None
}

/// The zones whose local time counts for this recipient.
pub fn recipient_zones(job: &Job, default: Tz) -> Vec<Tz> {
    if let Some(tz) = job.timezone.as_deref().and_then(|t| t.parse().ok()) {
        return vec![tz];
    }
    if job.channel == Channel::Sms {
        if let Some(zones) = job.to_phone.as_deref().and_then(country_zones) {
            return zones.to_vec();
        }
    }
    vec![default]
}

/// If `now` is inside the quiet window `[start, end)` in `tz` (a window may
/// wrap midnight), when it ends.
pub fn quiet_until(
    tz: Tz,
    now: DateTime<Utc>,
    start: NaiveTime,
    end: NaiveTime,
) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&tz);
    let t = local.time();
    let quiet = if start <= end {
        start <= t && t < end
    } else {
        t >= start || t < end
    };
    if !quiet {
        return None;
    }
    let day = if t < end {
        local.date_naive()
    } else {
        local.date_naive() + Duration::days(1)
    };
    Some(at_local(tz, day, end))
}

/// The next time (strictly after `now`, or now) that is the class's
/// delivery time in `tz`: `weekday` Monday to Friday, `weekend` on Saturday
/// and Sunday.
pub fn next_local_delivery(
    tz: Tz,
    now: DateTime<Utc>,
    weekday: NaiveTime,
    weekend: NaiveTime,
) -> DateTime<Utc> {
    let today = now.with_timezone(&tz).date_naive();
    (0..8)
        .map(|d| today + Duration::days(d))
        .map(|day| {
            let time = match day.weekday() {
                Weekday::Sat | Weekday::Sun => weekend,
                _ => weekday,
            };
            at_local(tz, day, time)
        })
        .find(|at| *at >= now)
        .expect("a delivery time within a week")
}

/// `day` at `time` in `tz`, as UTC. A time that does not exist that day (a
/// DST gap) is taken an hour later; an ambiguous one (the hour repeated)
/// the first time it occurs.
fn at_local(tz: Tz, day: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = day.and_time(time);
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .expect("an hour after a DST gap exists")
        .with_timezone(&Utc)
}

/// The zones of a phone number's country (by its E.164 calling code), for
/// the countries herald's users send to most. A country spanning several
/// zones lists the ones most of its people live in: for `+1`, the four
/// continental US zones and Arizona (Alaska and Hawaii recipients should
/// carry `to.timezone`). `None` for a code not listed.
pub fn country_zones(phone: &str) -> Option<&'static [Tz]> {
    use chrono_tz::{Africa, America, Asia, Australia, Europe, Pacific};
    let digits = phone.strip_prefix('+')?;
    const NANP: &[Tz] = &[
        America::New_York,
        America::Chicago,
        America::Denver,
        America::Phoenix,
        America::Los_Angeles,
    ];
    const AU: &[Tz] = &[
        Australia::Sydney,
        Australia::Brisbane,
        Australia::Adelaide,
        Australia::Perth,
    ];
    let table: &[(&str, &'static [Tz])] = &[
        ("1", NANP),
        ("7", &[Europe::Moscow]),
        ("20", &[Africa::Cairo]),
        ("27", &[Africa::Johannesburg]),
        ("30", &[Europe::Athens]),
        ("31", &[Europe::Amsterdam]),
        ("32", &[Europe::Brussels]),
        ("33", &[Europe::Paris]),
        ("34", &[Europe::Madrid]),
        ("36", &[Europe::Budapest]),
        ("39", &[Europe::Rome]),
        ("40", &[Europe::Bucharest]),
        ("41", &[Europe::Zurich]),
        ("43", &[Europe::Vienna]),
        ("44", &[Europe::London]),
        ("45", &[Europe::Copenhagen]),
        ("46", &[Europe::Stockholm]),
        ("47", &[Europe::Oslo]),
        ("48", &[Europe::Warsaw]),
        ("49", &[Europe::Berlin]),
        ("51", &[America::Lima]),
        ("52", &[America::Mexico_City]),
        ("54", &[America::Argentina::Buenos_Aires]),
        ("55", &[America::Sao_Paulo]),
        ("56", &[America::Santiago]),
        ("57", &[America::Bogota]),
        ("60", &[Asia::Kuala_Lumpur]),
        ("61", AU),
        ("62", &[Asia::Jakarta]),
        ("63", &[Asia::Manila]),
        ("64", &[Pacific::Auckland]),
        ("65", &[Asia::Singapore]),
        ("66", &[Asia::Bangkok]),
        ("81", &[Asia::Tokyo]),
        ("82", &[Asia::Seoul]),
        ("84", &[Asia::Ho_Chi_Minh]),
        ("86", &[Asia::Shanghai]),
        ("90", &[Europe::Istanbul]),
        ("91", &[Asia::Kolkata]),
        ("92", &[Asia::Karachi]),
        ("234", &[Africa::Lagos]),
        ("254", &[Africa::Nairobi]),
        ("351", &[Europe::Lisbon]),
        ("353", &[Europe::Dublin]),
        ("358", &[Europe::Helsinki]),
        ("380", &[Europe::Kyiv]),
        ("420", &[Europe::Prague]),
        ("852", &[Asia::Hong_Kong]),
        ("886", &[Asia::Taipei]),
        ("966", &[Asia::Riyadh]),
        ("971", &[Asia::Dubai]),
        ("972", &[Asia::Jerusalem]),
    ];
    // Calling codes are prefix-free: at most one entry matches.
    table
        .iter()
        .find(|(code, _)| digits.starts_with(code))
        .map(|(_, zones)| *zones)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America, Asia, Europe};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    #[test]
    fn quiet_hours_wrap_midnight_and_open_at_the_end() {
        let (start, end) = (hm(21, 0), hm(8, 0));
        let ny = America::New_York;
        // 23:00 in New York (EST, UTC-5) on 14 January: quiet until 08:00 on the 15th.
        let opens = quiet_until(ny, utc("2025-01-15T04:00:00Z"), start, end);
        assert_eq!(opens, Some(utc("2025-01-15T13:00:00Z")));
        // 02:00: quiet until 08:00 the same day.
        let opens = quiet_until(ny, utc("2025-01-15T07:00:00Z"), start, end);
        assert_eq!(opens, Some(utc("2025-01-15T13:00:00Z")));
        // 08:00 and 20:59 are open; 21:00 is quiet.
        assert_eq!(
            quiet_until(ny, utc("2025-01-15T13:00:00Z"), start, end),
            None
        );
        assert_eq!(
            quiet_until(ny, utc("2025-01-16T01:59:00Z"), start, end),
            None
        );
        assert!(quiet_until(ny, utc("2025-01-16T02:00:00Z"), start, end).is_some());
        // A window that does not wrap.
        let noon = quiet_until(ny, utc("2025-01-15T17:30:00Z"), hm(12, 0), hm(13, 0));
        assert_eq!(noon, Some(utc("2025-01-15T18:00:00Z")));
    }

    #[test]
    fn quiet_hours_across_a_dst_change_open_at_local_eight() {
        // New York springs forward on 9 March 2025: 08:00 is EDT (UTC-4).
        let opens = quiet_until(
            America::New_York,
            utc("2025-03-09T05:00:00Z"), // 00:00 EST
            hm(21, 0),
            hm(8, 0),
        );
        assert_eq!(opens, Some(utc("2025-03-09T12:00:00Z")));
    }

    #[test]
    fn local_delivery_is_the_next_weekday_or_weekend_time() {
        let (weekday, weekend) = (hm(6, 45), hm(8, 30));
        // Monday 13 January 2025, 20:00 UTC.
        let now = utc("2025-01-13T20:00:00Z");
        // Tuesday 06:45 in New York (EST), Berlin (CET), Tokyo (JST).
        assert_eq!(
            next_local_delivery(America::New_York, now, weekday, weekend),
            utc("2025-01-14T11:45:00Z")
        );
        assert_eq!(
            next_local_delivery(Europe::Berlin, now, weekday, weekend),
            utc("2025-01-14T05:45:00Z")
        );
        // Already Tuesday 05:00 in Tokyo: 06:45 the same day.
        assert_eq!(
            next_local_delivery(Asia::Tokyo, now, weekday, weekend),
            utc("2025-01-13T21:45:00Z")
        );
        // Friday 12:00 UTC: Saturday 08:30 everywhere.
        let friday = utc("2025-01-17T12:00:00Z");
        assert_eq!(
            next_local_delivery(America::New_York, friday, weekday, weekend),
            utc("2025-01-18T13:30:00Z")
        );
        assert_eq!(
            next_local_delivery(Asia::Tokyo, friday, weekday, weekend),
            utc("2025-01-17T23:30:00Z")
        );
    }

    #[test]
    fn phone_numbers_give_their_country_zones() {
        assert_eq!(country_zones("+447700900123"), Some(&[Europe::London][..]));
        assert_eq!(country_zones("+4915112345678"), Some(&[Europe::Berlin][..]));
        assert_eq!(country_zones("+15551234567").map(<[Tz]>::len), Some(5));
        assert_eq!(country_zones("+3531234567"), Some(&[Europe::Dublin][..]));
        assert_eq!(country_zones("+999123456"), None);
        assert_eq!(country_zones("447700900123"), None);
    }

    #[test]
    fn a_country_with_several_zones_is_quiet_while_any_is() {
        // 11:00 UTC in January: 06:00 New York (quiet), 03:00 Los Angeles
        // (quiet): opens at 08:00 Los Angeles.
        let now = utc("2025-01-15T11:00:00Z");
        let opens = country_zones("+15551234567")
            .unwrap()
            .iter()
            .filter_map(|tz| quiet_until(*tz, now, hm(21, 0), hm(8, 0)))
            .max();
        assert_eq!(opens, Some(utc("2025-01-15T16:00:00Z")));
    }
}
