//! The CA's rate limits, kept locally (issue 13): a pure function of the store's
//! [`Ledger`] and the time, so an order that the CA would refuse is not placed, and the
//! next attempt is scheduled when the limit frees, not retried in a loop.
//!
//! The limits are Let's Encrypt's ([`Limits::LETS_ENCRYPT`]): 300 new orders per
//! account per 3 h; 50 certificates per registered domain per 7 days (the registered
//! domain from the Public Suffix List, embedded by the `psl` crate); 5 certificates per
//! identical set of names per 7 days; 5 failed validations per identifier per hour.
//! Renewals that name the certificate they replace (ARI `replaces`) are exempt: they
//! are never refused and do not count. An order the ledger still shows as `placed` (a
//! crash during it) counts as issued.

use certs::{Ledger, OrderOutcome, OrderRecord};

/// One limit: at most `max` events in any `window` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: i64,
}

/// The limits the budget keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// New orders per account.
    pub orders: Limit,
    /// Certificates per registered domain.
    pub per_domain: Limit,
    /// Certificates per identical set of names.
    pub per_names: Limit,
    /// Failed validations per identifier.
    pub failed_per_name: Limit,
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

impl Limits {
    pub const LETS_ENCRYPT: Limits = Limits {
        orders: Limit {
            max: 300,
            window: 3 * HOUR,
        },
        per_domain: Limit {
            max: 50,
            window: 7 * DAY,
        },
        per_names: Limit {
            max: 5,
            window: 7 * DAY,
        },
        failed_per_name: Limit {
            max: 5,
            window: HOUR,
        },
    };
}

/// An order the budget refuses: which limit, and when it becomes possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// e.g. `5 certificates for a.test in 7d`.
    pub what: String,
    /// Unix seconds: the first time the order fits.
    pub until: i64,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "local budget of the CA's limits: {} already (not ordering before unix {})",
            self.what, self.until
        )
    }
}

/// The registered domain of `name` (`www.example.co.uk` -> `example.co.uk`); the name
/// itself when the list knows no suffix for it.
pub fn registered_domain(name: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    psl::domain_str(&name).unwrap_or(&name).to_string()
}

fn counts_as_certificate(o: &OrderRecord) -> bool {
    !o.replaces && matches!(o.outcome, OrderOutcome::Issued | OrderOutcome::Placed)
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut n: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    n.sort();
    n.dedup();
    n
}

/// With `times` (unix seconds) of the events that count, at most `limit.max` in a
/// window: `None` when one more fits at `now`, else the first time one more fits.
///
/// A time after `now` (the clock was set back since it was recorded) counts as `now`:
/// the order was placed, and its window is not allowed to end earlier than a full
/// window from now.
fn frees_at(times: Vec<i64>, limit: Limit, now: i64) -> Option<i64> {
    let mut times: Vec<i64> = times
        .into_iter()
        .map(|t| t.min(now))
        .filter(|t| *t > now - limit.window)
        .collect();
    if (times.len() as u64) < u64::from(limit.max) {
        return None;
    }
    times.sort_unstable();
    // One more fits once all but max-1 of them have left the window.
    let k = times.len() - limit.max as usize;
    Some(times[k] + limit.window)
}

/// Whether an order for `names` (an ARI replacement when `replaces`) fits the budget
/// at `now`; the refusal with the latest time when it does not.
pub fn check(
    ledger: &Ledger,
    names: &[String],
    replaces: bool,
    now: i64,
    limits: &Limits,
) -> Result<(), Refusal> {
    if replaces {
        return Ok(());
    }
    let names = sorted(names);
    let mut refusals: Vec<Refusal> = Vec::new();
    let counted = ledger.orders.iter().filter(|o| !o.replaces);

    let orders: Vec<i64> = counted.clone().map(|o| o.at).collect();
    if let Some(until) = frees_at(orders, limits.orders, now) {
        refusals.push(Refusal {
            what: format!(
                "{} new orders in {}",
                limits.orders.max,
                window(limits.orders.window)
            ),
            until,
        });
    }

    let same: Vec<i64> = counted
        .clone()
        .filter(|o| counts_as_certificate(o) && sorted(&o.names) == names)
        .map(|o| o.at)
        .collect();
    if let Some(until) = frees_at(same, limits.per_names, now) {
        refusals.push(Refusal {
            what: format!(
                "{} certificates for {} in {}",
                limits.per_names.max,
                names.join(","),
                window(limits.per_names.window)
            ),
            until,
        });
    }

    let mut domains: Vec<String> = names.iter().map(|n| registered_domain(n)).collect();
    domains.sort();
    domains.dedup();
    for d in &domains {
        let under: Vec<i64> = counted
            .clone()
            .filter(|o| counts_as_certificate(o))
            .filter(|o| o.names.iter().any(|n| registered_domain(n) == *d))
            .map(|o| o.at)
            .collect();
        if let Some(until) = frees_at(under, limits.per_domain, now) {
            refusals.push(Refusal {
                what: format!(
                    "{} certificates under {d} in {}",
                    limits.per_domain.max,
                    window(limits.per_domain.window)
                ),
                until,
            });
        }
    }

    for n in &names {
        let failed: Vec<i64> = ledger
            .failed_validations
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(n))
            .map(|f| f.at)
            .collect();
        if let Some(until) = frees_at(failed, limits.failed_per_name, now) {
            refusals.push(Refusal {
                what: format!(
                    "{} failed validations of {n} in {}",
                    limits.failed_per_name.max,
                    window(limits.failed_per_name.window)
                ),
                until,
            });
        }
    }
    match refusals.into_iter().max_by_key(|r| r.until) {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// What the budget has used at `now`, one line per limit that has a count: the
/// account's orders, and each registered domain of `groups` (the certificate groups'
/// names). For `proxyctl certs` and the metrics.
pub fn usage(ledger: &Ledger, groups: &[Vec<String>], now: i64, limits: &Limits) -> Vec<Usage> {
    // Like frees_at: a record after `now` (the clock was set back) counts.
    let in_window = |at: i64, l: Limit| at > now - l.window;
    let mut out = vec![Usage {
        scope: "account".into(),
        used: ledger
            .orders
            .iter()
            .filter(|o| !o.replaces && in_window(o.at, limits.orders))
            .count() as u32,
        limit: limits.orders,
        what: "orders",
    }];
    let mut domains: Vec<String> = groups
        .iter()
        .flatten()
        .map(|n| registered_domain(n))
        .collect();
    domains.sort();
    domains.dedup();
    for d in domains {
        let used = ledger
            .orders
            .iter()
            .filter(|o| counts_as_certificate(o) && in_window(o.at, limits.per_domain))
            .filter(|o| o.names.iter().any(|n| registered_domain(n) == d))
            .count() as u32;
        out.push(Usage {
            scope: d,
            used,
            limit: limits.per_domain,
            what: "certificates",
        });
    }
    out
}

/// One line of [`usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// `account`, or a registered domain.
    pub scope: String,
    pub used: u32,
    pub limit: Limit,
    /// `orders` or `certificates`.
    pub what: &'static str,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}/{} per {}",
            self.scope,
            self.what,
            self.used,
            self.limit.max,
            window(self.limit.window)
        )
    }
}

fn window(secs: i64) -> String {
    if secs % DAY == 0 {
        format!("{}d", secs / DAY)
    } else if secs % HOUR == 0 {
        format!("{}h", secs / HOUR)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::FailedValidation;

    const NOW: i64 = 1_800_000_000;
    const LE: Limits = Limits::LETS_ENCRYPT;

    fn order(at: i64, names: &[&str], outcome: OrderOutcome, replaces: bool) -> OrderRecord {
        OrderRecord {
            at,
            id: format!("o{at}"),
            cert: names[0].into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            replaces,
            profile: None,
            outcome,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn five_certificates_for_the_same_names_in_seven_days() {
        let mut l = Ledger::default();
        // 5 issued, the oldest 6 days ago.
        for i in 0..5 {
            l.orders.push(order(
                NOW - 6 * DAY + i * HOUR,
                &["b.example.org", "a.example.org"],
                OrderOutcome::Issued,
                false,
            ));
        }
        let set = names(&["a.example.org", "b.example.org"]);
        let r = check(&l, &set, false, NOW, &LE).unwrap_err();
        // Frees when the oldest leaves the 7-day window.
        assert_eq!(r.until, NOW - 6 * DAY + 7 * DAY);
        assert!(
            r.what
                .contains("5 certificates for a.example.org,b.example.org in 7d"),
            "{r}"
        );
        // From then on, it fits.
        assert!(check(&l, &set, false, r.until, &LE).is_ok());
        // Another set of names is not this limit.
        assert!(check(&l, &names(&["a.example.org"]), false, NOW, &LE).is_ok());
        // An ARI replacement is exempt.
        assert!(check(&l, &set, true, NOW, &LE).is_ok());
    }

    #[test]
    fn failed_and_replacement_orders_do_not_count_as_certificates_but_placed_does() {
        let mut l = Ledger::default();
        for i in 0..4 {
            l.orders
                .push(order(NOW - i, &["a.test"], OrderOutcome::Failed, false));
        }
        for i in 0..4 {
            l.orders
                .push(order(NOW - 10 - i, &["a.test"], OrderOutcome::Issued, true));
        }
        l.orders
            .push(order(NOW - 100, &["a.test"], OrderOutcome::Issued, false));
        assert!(check(&l, &names(&["a.test"]), false, NOW, &LE).is_ok());
        // A crash leaves `placed`: counted as issued.
        for i in 0..4 {
            l.orders.push(order(
                NOW - 200 - i,
                &["a.test"],
                OrderOutcome::Placed,
                false,
            ));
        }
        let r = check(&l, &names(&["a.test"]), false, NOW, &LE).unwrap_err();
        assert_eq!(r.until, NOW - 203 + 7 * DAY);
    }

    #[test]
    fn fifty_certificates_per_registered_domain() {
        let mut l = Ledger::default();
        for i in 0..50 {
            let n = format!("h{i}.example.co.uk");
            l.orders.push(order(
                NOW - DAY + i,
                &[n.as_str()],
                OrderOutcome::Issued,
                false,
            ));
        }
        // Another registered domain: fine.
        assert!(check(&l, &names(&["x.other.co.uk"]), false, NOW, &LE).is_ok());
        let r = check(&l, &names(&["new.example.co.uk"]), false, NOW, &LE).unwrap_err();
        assert!(r.what.contains("under example.co.uk"), "{r}");
        assert_eq!(r.until, NOW - DAY + 7 * DAY);
        assert_eq!(registered_domain("A.B.Example.CO.UK."), "example.co.uk");
        // Outside the window they are forgotten.
        assert!(check(
            &l,
            &names(&["new.example.co.uk"]),
            false,
            NOW + 6 * DAY + 1,
            &LE
        )
        .is_ok());
    }

    #[test]
    fn three_hundred_orders_per_account_in_three_hours() {
        let mut l = Ledger::default();
        for i in 0..300 {
            let n = format!("h{i}.test{i}");
            l.orders.push(order(
                NOW - 2 * HOUR + i,
                &[n.as_str()],
                OrderOutcome::Failed,
                false,
            ));
        }
        let r = check(&l, &names(&["a.test"]), false, NOW, &LE).unwrap_err();
        assert!(r.what.contains("300 new orders in 3h"), "{r}");
        assert_eq!(r.until, NOW - 2 * HOUR + 3 * HOUR);
        // The time it frees is when the oldest leaves the window, exactly.
        assert!(check(&l, &names(&["a.test"]), false, r.until - 1, &LE).is_err());
        assert!(check(&l, &names(&["a.test"]), false, r.until, &LE).is_ok());
        let u = usage(&l, &[names(&["a.test"])], NOW, &LE);
        assert_eq!(u[0].to_string(), "account orders 300/300 per 3h");
    }

    #[test]
    fn five_failed_validations_per_name_in_an_hour_and_the_latest_refusal_wins() {
        let mut l = Ledger::default();
        for i in 0..5 {
            l.failed_validations.push(FailedValidation {
                at: NOW - 30 * 60 + i,
                name: "a.test".into(),
            });
        }
        let r = check(&l, &names(&["b.test", "a.test"]), false, NOW, &LE).unwrap_err();
        assert!(
            r.what.contains("5 failed validations of a.test in 1h"),
            "{r}"
        );
        assert_eq!(r.until, NOW + 30 * 60);
        assert!(check(&l, &names(&["b.test"]), false, NOW, &LE).is_ok());
        // With a later refusal too (same names 5 times), the later one is reported.
        for i in 0..5 {
            l.orders.push(order(
                NOW - DAY + i,
                &["a.test", "b.test"],
                OrderOutcome::Issued,
                false,
            ));
        }
        let r = check(&l, &names(&["b.test", "a.test"]), false, NOW, &LE).unwrap_err();
        assert_eq!(r.until, NOW - DAY + 7 * DAY);
    }

    #[test]
    fn usage_lines() {
        let mut l = Ledger::default();
        l.orders.push(order(
            NOW - 60,
            &["www.example.org"],
            OrderOutcome::Issued,
            false,
        ));
        l.orders.push(order(
            NOW - 4 * HOUR,
            &["example.org"],
            OrderOutcome::Issued,
            false,
        ));
        l.orders.push(order(
            NOW - 60,
            &["example.org"],
            OrderOutcome::Issued,
            true,
        ));
        let u = usage(&l, &[names(&["example.org", "www.example.org"])], NOW, &LE);
        let lines: Vec<String> = u.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            lines,
            [
                "account orders 1/300 per 3h",
                "example.org certificates 2/50 per 7d"
            ]
        );
    }

    #[test]
    fn orders_recorded_after_now_still_count_when_the_clock_jumped_back() {
        // Five certificates for a.test recorded; then the clock is set back an hour
        // (NTP step, a VM restored from a snapshot): the records are "in the future".
        let mut l = Ledger::default();
        for i in 0..5 {
            l.orders.push(order(
                NOW + HOUR - i,
                &["a.test"],
                OrderOutcome::Issued,
                false,
            ));
        }
        let r = check(&l, &names(&["a.test"]), false, NOW, &LE).unwrap_err();
        // Counted as if placed now: frees a full window later, never earlier.
        assert_eq!(r.until, NOW + 7 * DAY, "{r}");
        assert_eq!(
            usage(&l, &[names(&["a.test"])], NOW, &LE)[1].to_string(),
            "a.test certificates 5/50 per 7d"
        );
        // A record far in the future (hand-edited) cannot overflow the arithmetic.
        l.orders
            .push(order(i64::MAX, &["a.test"], OrderOutcome::Issued, false));
        assert_eq!(
            check(&l, &names(&["a.test"]), false, NOW, &LE)
                .unwrap_err()
                .until,
            NOW + 7 * DAY
        );
    }

    /// Review: registered domains at the edges of the Public Suffix List.
    #[test]
    fn registered_domains_at_the_edges_of_the_list() {
        // A name that is itself a public suffix: its own scope, no panic.
        assert_eq!(registered_domain("co.uk"), "co.uk");
        assert_eq!(registered_domain("uk"), "uk");
        // Unknown TLDs (the default rule "*"): the last two labels.
        assert_eq!(registered_domain("x.y.a.test"), "a.test");
        // IDN in punycode, an IDN TLD too.
        assert_eq!(
            registered_domain("www.xn--bcher-kva.de"),
            "xn--bcher-kva.de"
        );
        assert_eq!(
            registered_domain("a.b.xn--e1afmkfd.xn--p1ai"),
            "xn--e1afmkfd.xn--p1ai"
        );
        // Case and a trailing dot name the same domain.
        assert_eq!(registered_domain("WWW.Example.ORG."), "example.org");
        // Degenerate input: itself, no panic.
        assert_eq!(registered_domain(""), "");
        assert_eq!(registered_domain("."), "");
        assert_eq!(registered_domain("a..b"), registered_domain("a..b"));
    }
}
