//! Keep-warm windows (`scale.keep_warm`): a revision's minimum scale by time of day and
//! weekday in a time zone, on top of `scale.min`, so a service used in office hours is warm
//! when the first person arrives and at zero at night. The autoscaler asks for the floor at
//! every decision; the local time comes from [`clock::wall_now`], which follows paused time in
//! tests.

use crate::clock;
use crate::config::{self, DAYS, parse_clock};
use std::time::SystemTime;

/// One window: the days it opens on (Monday first), its opening and closing minute, its floor.
#[derive(Debug, Clone)]
struct Window {
    days: [bool; 7],
    from: u16,
    to: u16,
    min: u32,
}

impl Window {
    /// Open at `minute` (after local midnight) of weekday `day` (Monday = 0)?
    fn open(&self, day: usize, minute: u16) -> bool {
        let yesterday = (day + 6) % 7;
        if self.from < self.to {
            self.days[day] && (self.from..self.to).contains(&minute)
        } else {
            // Overnight (or all day when equal): opened on a listed day, closes the next.
            (self.days[day] && minute >= self.from) || (self.days[yesterday] && minute < self.to)
        }
    }
}

/// A revision's keep-warm windows in their time zone.
#[derive(Debug, Clone)]
pub struct KeepWarm {
    tz: jiff::tz::TimeZone,
    windows: Vec<Window>,
}

impl KeepWarm {
    /// The runtime form of a validated `keep_warm` section; `None` if it does not hold up
    /// (validation has refused such a file).
    pub fn new(k: &config::KeepWarm) -> Option<KeepWarm> {
        let tz = jiff::tz::TimeZone::get(&k.time_zone).ok()?;
        let windows = k
            .windows
            .iter()
            .map(|w| {
                let mut days = [w.days.is_empty(); 7];
                for d in &w.days {
                    let i = DAYS.iter().position(|n| d.eq_ignore_ascii_case(n))?;
                    days[i] = true;
                }
                Some(Window {
                    days,
                    from: parse_clock(&w.from).ok()?,
                    to: parse_clock(&w.to).ok()?,
                    min: w.min,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(KeepWarm { tz, windows })
    }

    /// The floor at `at`: the highest `min` of the windows open then, 0 if none is.
    pub fn floor_at(&self, at: SystemTime) -> u32 {
        let Ok(ts) = jiff::Timestamp::try_from(at) else {
            return 0;
        };
        let local = ts.to_zoned(self.tz.clone());
        let day = usize::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(0);
        let minute = u16::try_from(local.hour()).unwrap_or(0) * 60
            + u16::try_from(local.minute()).unwrap_or(0);
        self.windows
            .iter()
            .filter(|w| w.open(day, minute))
            .map(|w| w.min)
            .max()
            .unwrap_or(0)
    }

    /// The floor now.
    pub fn floor(&self) -> u32 {
        self.floor_at(clock::wall_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keep(yaml: &str) -> KeepWarm {
        KeepWarm::new(&serde_norway::from_str(yaml).unwrap()).unwrap()
    }

    /// 2026-12-07 is a Monday.
    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(rfc3339.parse::<jiff::Timestamp>().unwrap())
    }

    #[test]
    fn office_hours_in_a_time_zone() {
        let k = keep(
            "{ time_zone: Europe/Berlin, windows: [{ days: [mon, tue, wed, thu, fri], from: '08:00', to: '18:00', min: 2 }] }",
        );
        // Berlin is UTC+1 in December.
        assert_eq!(
            k.floor_at(at("2026-12-07T06:59:00Z")),
            0,
            "Monday 07:59 local"
        );
        assert_eq!(
            k.floor_at(at("2026-12-07T07:00:00Z")),
            2,
            "Monday 08:00 local"
        );
        assert_eq!(
            k.floor_at(at("2026-12-07T16:59:00Z")),
            2,
            "Monday 17:59 local"
        );
        assert_eq!(
            k.floor_at(at("2026-12-07T17:00:00Z")),
            0,
            "Monday 18:00 local"
        );
        assert_eq!(k.floor_at(at("2026-12-12T10:00:00Z")), 0, "Saturday");
        // Summer time: UTC+2.
        assert_eq!(
            k.floor_at(at("2026-07-06T06:30:00Z")),
            2,
            "Monday 08:30 in July"
        );
    }

    #[test]
    fn overnight_windows_close_the_next_day_and_the_highest_min_wins() {
        let k = keep(
            "{ windows: [{ days: [fri], from: '22:00', to: '02:00' }, { from: '01:00', to: '01:30', min: 3 }] }",
        );
        assert_eq!(k.floor_at(at("2026-12-11T21:59:00Z")), 0, "Friday before");
        assert_eq!(k.floor_at(at("2026-12-11T22:00:00Z")), 1, "Friday night");
        assert_eq!(k.floor_at(at("2026-12-12T01:10:00Z")), 3, "both open");
        assert_eq!(
            k.floor_at(at("2026-12-12T01:59:00Z")),
            1,
            "Saturday small hours"
        );
        assert_eq!(k.floor_at(at("2026-12-12T02:00:00Z")), 0);
        assert_eq!(
            k.floor_at(at("2026-12-13T01:45:00Z")),
            0,
            "Sunday: Saturday is not listed"
        );
        let _ = Duration::ZERO;
    }
}
