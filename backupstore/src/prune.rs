//! Retention: which backups of a volume to keep, with Proxmox Backup
//! Server's prune semantics, and the prune that deletes the rest.
//!
//! [`plan`] is a pure function of the backups' creation times. Backups are
//! taken newest first; each keep option in turn (last, hourly, daily,
//! weekly, monthly, yearly) keeps the newest backup of each of the first N
//! of its periods (hour, day, ISO week, month, year, in local time) that
//! hold a backup not yet decided, skipping periods that already hold a kept
//! one; the older backups of a period it keeps from are removed (a coarser
//! option cannot pick them up again). keep-last's period is the backup
//! itself. Whatever no option keeps is removed, except the newest backup,
//! which is always kept: a prune never leaves a volume without its latest
//! backup.
//!
//! [`BackupStore::prune`] deletes the removed backups' manifests (never
//! their chunks: `gc` collects those once nothing references them), or only
//! reports what it would do with `dry_run`.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::{BackupInfo, BackupStore};

/// How many periods of each kind to keep a backup from; `None` (or 0)
/// keeps nothing by that option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yearly: Option<u32>,
}

impl KeepOptions {
    /// True if no option keeps anything.
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| *n == 0)
    }

    /// The options in the order they apply, with their counts.
    fn rules(&self) -> [(Rule, usize); 6] {
        let n = |o: Option<u32>| o.unwrap_or(0) as usize;
        [
            (Rule::Last, n(self.last)),
            (Rule::Hourly, n(self.hourly)),
            (Rule::Daily, n(self.daily)),
            (Rule::Weekly, n(self.weekly)),
            (Rule::Monthly, n(self.monthly)),
            (Rule::Yearly, n(self.yearly)),
        ]
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    #[serde(rename = "keep-last")]
    Last,
    #[serde(rename = "keep-hourly")]
    Hourly,
    #[serde(rename = "keep-daily")]
    Daily,
    #[serde(rename = "keep-weekly")]
    Weekly,
    #[serde(rename = "keep-monthly")]
    Monthly,
    #[serde(rename = "keep-yearly")]
    Yearly,
    /// The newest backup, kept whatever the options say.
    Newest,
}

/// What becomes of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub keep: bool,
    /// For a kept backup: the option that keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    /// For a kept backup: the period it is kept for, in local time
    /// (`2026-11-30` for a day, `2026-W48` for an ISO week, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
}

/// Decides which of one volume's backups (`(id, created)`, any order) to
/// keep. `offset` gives the local time's offset from UTC in seconds at an
/// instant (periods are local, as people count days). Returns one decision
/// per backup, newest first.
pub(crate) fn plan(
    backups: &[(String, u64)],
    keep: &KeepOptions,
    offset: &dyn Fn(u64) -> i64,
) -> Vec<Decision> {
    let mut order: Vec<&(String, u64)> = backups.iter().collect();
    order.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
    let mut marks: Vec<Option<Mark>> = vec![None; order.len()];
    for (rule, count) in keep.rules() {
        if count == 0 {
            continue;
        }
        let period = |i: usize| period_of(rule, order[i].1, offset(order[i].1), &order[i].0);
        // Periods that already hold a backup kept by an earlier option.
        let covered: HashSet<String> = (0..order.len())
            .filter(|&i| marks[i].as_ref().is_some_and(|m| m.keep))
            .map(period)
            .collect();
        let mut chosen: HashSet<String> = HashSet::new();
        for (i, mark) in marks.iter_mut().enumerate() {
            if mark.is_some() {
                continue;
            }
            let p = period(i);
            if covered.contains(&p) {
                continue;
            }
            if chosen.contains(&p) {
                *mark = Some(Mark::REMOVE);
            } else {
                if chosen.len() >= count {
                    break;
                }
                chosen.insert(p.clone());
                *mark = Some(Mark {
                    keep: true,
                    rule: Some(rule),
                    period: (rule != Rule::Last).then_some(p),
                });
            }
        }
    }
    // The newest backup stays whatever the options say.
    if let Some(first) = marks.first_mut() {
        if !first.as_ref().is_some_and(|m| m.keep) {
            *first = Some(Mark {
                keep: true,
                rule: Some(Rule::Newest),
                period: None,
            });
        }
    }
    order
        .iter()
        .zip(marks)
        .map(|((id, created), mark)| {
            let Mark { keep, rule, period } = mark.unwrap_or(Mark::REMOVE);
            Decision {
                id: id.clone(),
                created: *created,
                keep,
                rule,
                period,
            }
        })
        .collect()
}

/// A decision taken while the options apply.
#[derive(Clone)]
struct Mark {
    keep: bool,
    rule: Option<Rule>,
    period: Option<String>,
}

impl Mark {
    const REMOVE: Mark = Mark {
        keep: false,
        rule: None,
        period: None,
    };
}

/// The period of `rule` that a backup created at `utc` belongs to.
fn period_of(rule: Rule, utc: u64, offset: i64, id: &str) -> String {
    let local = utc as i64 + offset;
    let days = local.div_euclid(86_400);
    let hour = local.rem_euclid(86_400) / 3600;
    let (y, m, d) = civil_from_days(days);
    match rule {
        Rule::Last | Rule::Newest => format!("{utc}/{id}"),
        Rule::Hourly => format!("{y:04}-{m:02}-{d:02} {hour:02}h"),
        Rule::Daily => format!("{y:04}-{m:02}-{d:02}"),
        Rule::Weekly => {
            let (iso_year, week) = iso_week(days);
            format!("{iso_year:04}-W{week:02}")
        }
        Rule::Monthly => format!("{y:04}-{m:02}"),
        Rule::Yearly => format!("{y:04}"),
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// ISO 8601 week-numbering year and week of a day count since 1970-01-01:
/// the week (Monday to Sunday) belongs to the year of its Thursday.
fn iso_week(days: i64) -> (i64, u32) {
    // 1970-01-01 was a Thursday: weekday 3 counting from Monday = 0.
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let (year, ..) = civil_from_days(thursday);
    let jan1 = days_from_civil(year, 1, 1);
    (year, ((thursday - jan1) / 7 + 1) as u32)
}

/// Inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One backup in a prune report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedBackup {
    pub url: String,
    pub volume: String,
    #[serde(flatten)]
    pub decision: Decision,
}

/// What a prune did (or, with `dry_run`, would do), per backup, newest first
/// within each volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub kept: u64,
    pub removed: u64,
    pub backups: Vec<PrunedBackup>,
}

impl BackupStore {
    /// Applies `keep` to the backups of `volume` (of every volume if
    /// `None`), each volume on its own, and deletes the manifests of those
    /// it does not keep unless `dry_run`. Periods are the daemon's local
    /// time.
    pub async fn prune(
        &self,
        volume: Option<&str>,
        keep: &KeepOptions,
        dry_run: bool,
    ) -> Result<PruneReport> {
        let mut by_volume: BTreeMap<String, Vec<BackupInfo>> = BTreeMap::new();
        for b in self.list(volume).await? {
            by_volume.entry(b.volume.clone()).or_default().push(b);
        }
        let mut report = PruneReport {
            dry_run,
            kept: 0,
            removed: 0,
            backups: Vec::new(),
        };
        for (volume, backups) in by_volume {
            let times: Vec<(String, u64)> =
                backups.iter().map(|b| (b.id.clone(), b.created)).collect();
            for decision in plan(&times, keep, &crate::clock::local_offset) {
                if decision.keep {
                    report.kept += 1;
                } else {
                    report.removed += 1;
                    if !dry_run {
                        self.delete(&volume, &decision.id).await?;
                    }
                }
                report.backups.push(PrunedBackup {
                    url: self.url.backup_url(&decision.id, &volume),
                    volume: volume.clone(),
                    decision,
                });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UTC: &dyn Fn(u64) -> i64 = &|_| 0;

    /// Seconds of `YYYY-MM-DD HH:MM` UTC.
    fn at(y: i64, m: u32, d: u32, h: u64, min: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * 86_400 + h * 3600 + min * 60
    }

    fn history(times: &[u64]) -> Vec<(String, u64)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("b{i:02}"), *t))
            .collect()
    }

    /// `(id, rule)` of the kept backups, newest first.
    fn kept(decisions: &[Decision]) -> Vec<(String, Option<Rule>)> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| (d.id.clone(), d.rule))
            .collect()
    }

    #[test]
    fn calendar_helpers() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2021-01-03 (a Sunday) is in ISO week 2020-W53; 2021-01-04 starts W01.
        assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(days_from_civil(2021, 1, 4)), (2021, 1));
        // 2024-12-30 (a Monday) is in 2025-W01.
        assert_eq!(iso_week(days_from_civil(2024, 12, 30)), (2025, 1));
        assert_eq!(iso_week(days_from_civil(2026, 12, 1)), (2026, 49));
    }

    /// A synthetic history with each option's result computed by hand.
    #[test]
    fn each_option_keeps_the_hand_computed_set() {
        let times = [
            at(2024, 6, 15, 12, 0),   // b00
            at(2025, 3, 10, 9, 0),    // b01
            at(2025, 11, 2, 8, 0),    // b02 Sunday, ISO week 2025-W44
            at(2025, 11, 20, 8, 0),   // b03 Thursday, W47
            at(2025, 11, 28, 23, 0),  // b04 Friday, W48
            at(2025, 11, 29, 1, 0),   // b05 Saturday, W48
            at(2025, 11, 30, 10, 0),  // b06 Sunday, W48
            at(2025, 11, 30, 10, 30), // b07 same hour as b06
            at(2025, 11, 30, 11, 15), // b08
            at(2025, 12, 1, 0, 5),    // b09 Monday, W49
            at(2025, 12, 1, 0, 50),   // b10 same hour
            at(2025, 12, 1, 2, 0),    // b11 newest
        ];
        let h = history(&times);
        let only = |f: fn(&mut KeepOptions)| {
            let mut k = KeepOptions::default();
            f(&mut k);
            let mut ids: Vec<String> = kept(&plan(&h, &k, UTC)).into_iter().map(|k| k.0).collect();
            ids.sort();
            ids
        };
        let ids = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(only(|k| k.last = Some(3)), ids(&["b09", "b10", "b11"]));
        // Hours, newest first: 12-01 02h (b11), 12-01 00h (b10; b09 removed),
        // 11-30 11h (b08), 11-30 10h (b07; b06 removed).
        assert_eq!(
            only(|k| k.hourly = Some(4)),
            ids(&["b07", "b08", "b10", "b11"])
        );
        // Days: 12-01 (b11), 11-30 (b08), 11-29 (b05).
        assert_eq!(only(|k| k.daily = Some(3)), ids(&["b05", "b08", "b11"]));
        // ISO weeks: W49 (b11), W48 (b08), W47 (b03), W44 (b02).
        assert_eq!(
            only(|k| k.weekly = Some(4)),
            ids(&["b02", "b03", "b08", "b11"])
        );
        // Months: 2025-12 (b11), 2025-11 (b08), 2025-03 (b01).
        assert_eq!(only(|k| k.monthly = Some(3)), ids(&["b01", "b08", "b11"]));
        // Years: 2025 (b11), 2024 (b00).
        assert_eq!(only(|k| k.yearly = Some(5)), ids(&["b00", "b11"]));

        // Combined, applied in order: keep-last 2 takes b11, b10; keep-daily
        // 2 skips 12-01 (covered) and takes 11-30 (b08, removing b06, b07)
        // and 11-29 (b05); keep-monthly 3 skips 2025-12 and 2025-11
        // (covered) and takes 2025-03 (b01) and 2024-06 (b00).
        let k = KeepOptions {
            last: Some(2),
            daily: Some(2),
            monthly: Some(3),
            ..KeepOptions::default()
        };
        let d = plan(&h, &k, UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("b11".into(), Some(Rule::Last)),
                ("b10".into(), Some(Rule::Last)),
                ("b08".into(), Some(Rule::Daily)),
                ("b05".into(), Some(Rule::Daily)),
                ("b01".into(), Some(Rule::Monthly)),
                ("b00".into(), Some(Rule::Monthly)),
            ]
        );
        let b08 = d.iter().find(|d| d.id == "b08").unwrap();
        assert_eq!(b08.period.as_deref(), Some("2025-11-30"));
        assert_eq!(d.len(), times.len());
        assert_eq!(d[0].id, "b11", "newest first");
    }

    #[test]
    fn periods_are_local_time() {
        // 23:30 UTC on 11-30 and 00:30 UTC on 12-01: two UTC days, one day
        // at UTC-2 (21:30 and 22:30 on 11-30).
        let h = history(&[at(2025, 11, 30, 23, 30), at(2025, 12, 1, 0, 30)]);
        let k = KeepOptions {
            daily: Some(7),
            ..KeepOptions::default()
        };
        assert_eq!(kept(&plan(&h, &k, UTC)).len(), 2);
        let minus_two: &dyn Fn(u64) -> i64 = &|_| -7200;
        let d = plan(&h, &k, minus_two);
        assert_eq!(kept(&d), vec![("b01".into(), Some(Rule::Daily))]);
        assert_eq!(d[0].period.as_deref(), Some("2025-11-30"));
    }

    #[test]
    fn the_newest_backup_is_kept_by_any_options() {
        let h = history(&[at(2025, 1, 1, 0, 0), at(2025, 1, 2, 0, 0)]);
        let d = plan(&h, &KeepOptions::default(), UTC);
        assert_eq!(kept(&d), vec![("b01".into(), Some(Rule::Newest))]);
        assert!(plan(&[], &KeepOptions::default(), UTC).is_empty());
    }

    fn keep_options() -> impl Strategy<Value = KeepOptions> {
        let n = || proptest::option::of(0u32..5);
        (n(), n(), n(), n(), n(), n()).prop_map(|(last, hourly, daily, weekly, monthly, yearly)| {
            KeepOptions {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
            }
        })
    }

    proptest! {
        /// Whatever the history and options: one decision per backup, the
        /// newest kept, keep-last N keeps the N newest, no option keeps
        /// more periods than asked, and no two kept backups share one
        /// option's period.
        #[test]
        fn plan_invariants(
            times in proptest::collection::vec(1_500_000_000u64..1_900_000_000, 0..60),
            keep in keep_options(),
            offset in -50_400i64..50_400,
        ) {
            let h = history(&times);
            let tz: &dyn Fn(u64) -> i64 = &move |_| offset;
            let d = plan(&h, &keep, tz);
            prop_assert_eq!(d.len(), h.len());
            if let Some(newest) = h.iter().max_by_key(|(id, t)| (*t, id.clone())) {
                prop_assert_eq!(&d[0].id, &newest.0);
                prop_assert!(d[0].keep);
            }
            let last = keep.last.unwrap_or(0) as usize;
            for (i, dec) in d.iter().enumerate().take(last) {
                prop_assert!(dec.keep && dec.rule == Some(Rule::Last), "backup {i} kept by keep-last");
            }
            for (rule, count) in keep.rules() {
                let periods: Vec<&String> = d.iter()
                    .filter(|x| x.rule == Some(rule))
                    .filter_map(|x| x.period.as_ref())
                    .collect();
                let by_rule = d.iter().filter(|x| x.rule == Some(rule)).count();
                prop_assert!(by_rule <= count);
                let distinct: HashSet<&String> = periods.iter().copied().collect();
                prop_assert_eq!(distinct.len(), periods.len());
            }
            // The same plan again over only what was kept keeps it all.
            let survivors: Vec<(String, u64)> = d.iter().filter(|x| x.keep).map(|x| (x.id.clone(), x.created)).collect();
            let again = plan(&survivors, &keep, tz);
            prop_assert!(again.iter().all(|x| x.keep), "a second prune removes nothing");
        }
    }
}
