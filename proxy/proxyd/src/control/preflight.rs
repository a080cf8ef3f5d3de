//! `POST /v1/certs/preflight` (`proxyctl certs preflight [NAME...]`): why an ACME order
//! for a name would fail, found out before placing one. For each name:
//!
//! - `dns`: its A and AAAA records, through the daemon's resolver configuration
//!   (`--dns-server`), all point at this proxy (`--public-addr`, else the listeners'
//!   addresses that are not wildcards; with neither, a warning: cannot judge);
//! - `caa`: the relevant CAA RRset (RFC 8659 section 3: the name's, else its parent's,
//!   up to the top-level domain) permits one of the directory's `meta.caaIdentities`
//!   (`issuewild` first for a wildcard; a critical tag not understood forbids; RFC 8657
//!   `validationmethods` must allow a challenge this proxy answers, and `accounturi`
//!   name this proxy's stored account; none stored yet: a warning). No caaIdentities in
//!   the directory: a warning when a record restricts issuance, since nothing says
//!   whether it names this CA;
//! - `http-01`: a random one-off token published in the daemon's own HTTP-01 map is
//!   fetched from each of the name's addresses (the first [`MAX_FETCHES`]; more: a warning) on `--acme-http-port` (80) with the name
//!   as Host, as the CA would, and must come back byte for byte; no redirect is
//!   followed (one is reported); the token is withdrawn whatever happens;
//! - `challenge` (wildcards only): no challenge this proxy answers can prove one;
//! - `budget`: the CA's limits as kept locally (`acme::Manager::order_verdict`: a
//!   `rateLimited` hold of the CA, the local budget of its limits) let an order be
//!   placed now; else the time it becomes possible.
//!
//! Every network step is bounded ([`DNS_TIMEOUT`], [`HTTP_TIMEOUT`]); names are checked
//! side by side, at most [`PARALLEL`] at a time. Nothing here is on the request path.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use admin_api::{CheckResult, ErrorReply, PreflightCheck, PreflightName};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::control::served::date;
use crate::data::state::Shared;

/// Bound on reading the ACME ledger and the groups' meta.json for the `budget` check.
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on one DNS question (all servers and attempts).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one HTTP-01 fetch: connect, request, whole answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Names checked at once.
const PARALLEL: usize = 16;
/// Largest answer read from a name's port 80 (a key authorization is ~90 bytes).
const MAX_ANSWER: usize = 16 * 1024;
/// Addresses of one name fetched from (the first, in order); a DNS answer with more
/// must not turn into as many connections (up to [`PARALLEL`] names at once).
const MAX_FETCHES: usize = 16;

/// What the preflight needs from the configuration.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// `--dns-server` (empty: /etc/resolv.conf), as for upstream names.
    pub dns_servers: Vec<SocketAddr>,
    pub public_addrs: Vec<IpAddr>,
    /// `--acme-http-port`.
    pub http_port: u16,
}

type Refusal = (u16, ErrorReply);

fn refuse(code: u16, error: String) -> Refusal {
    (code, ErrorReply { error })
}

impl Preflight {
    /// Checks `names` (empty: every name ACME orders for, i.e. every routed name that
    /// is not a wildcard). A name that is not routed is refused (404), naming it.
    pub async fn run(
        &self,
        shared: &Arc<Shared>,
        names: &[String],
    ) -> Result<admin_api::Preflight, Refusal> {
        let Some(manager) = shared.acme.get().cloned() else {
            return Err(refuse(
                409,
                "ACME is off (no --acme-directory): nothing to check".into(),
            ));
        };
        let routed = shared.snapshot.load().table.names();
        let names = select_names(&routed, names)?;

        let resolver = crate::control::dns::resolver(&self.dns_servers)
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"));
        let meta = {
            let manager = manager.clone();
            tokio::spawn(async move { manager.directory_meta().await })
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let (shared, resolver, limit) = (shared.clone(), resolver.clone(), limit.clone());
            let (name, this) = (name.clone(), self.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let found = this.probe(&shared, resolver, &name).await;
                (i, name, found)
            });
        }
        let mut probed: Vec<(usize, String, Probed)> = Vec::with_capacity(names.len());
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(p) => probed.push(p),
                Err(e) => return Err(refuse(500, format!("preflight task: {e}"))),
            }
        }
        probed.sort_by_key(|(i, _, _)| *i);

        let (caa_identities, meta_error) = match meta.await {
            Ok(Ok(m)) => (m.caa_identities, None),
            Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
            Err(e) => (Vec::new(), Some(format!("directory task: {e}"))),
        };
        let account = manager.account_uri();
        // The ledger (up to certs::LEDGER_MAX_BYTES) and each group's meta.json are
        // read from disk: once for all names, off the async workers, and bounded in
        // time (a store on a hung disk, a FIFO in the ledger's place).
        let verdicts = {
            let (manager, names) = (
                manager.clone(),
                probed.iter().map(|(_, n, _)| n.clone()).collect::<Vec<_>>(),
            );
            let read = tokio::task::spawn_blocking(move || manager.order_verdicts(&names));
            match tokio::time::timeout(LEDGER_TIMEOUT, read).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => Err(format!("ledger task: {e}")),
                Err(_) => Err(format!("not read within {}s", LEDGER_TIMEOUT.as_secs())),
            }
        };
        let names: Vec<PreflightName> = probed
            .into_iter()
            .enumerate()
            .map(|(k, (_, name, p))| {
                let caa = caa_check(
                    &p.caa,
                    &name,
                    &caa_identities,
                    account.as_deref(),
                    meta_error.as_deref(),
                );
                let mut checks = p.checks;
                checks.insert(1.min(checks.len()), caa);
                checks.push(budget_check(
                    verdicts.as_ref().map(|v| &v[k]).map_err(String::as_str),
                ));
                PreflightName { name, checks }
            })
            .collect();
        let mut reply = admin_api::Preflight {
            directory: manager.issuer().to_owned(),
            caa_identities,
            public_addrs: self.public_addrs.iter().map(|a| a.to_string()).collect(),
            http_port: self.http_port,
            names,
            ok: true,
        };
        reply.ok = !reply.any_failed();
        Ok(reply)
    }

    /// The checks of one name that need no directory, and its relevant CAA RRset.
    async fn probe(
        &self,
        shared: &Arc<Shared>,
        resolver: Result<Arc<TokioResolver>, String>,
        name: &str,
    ) -> Probed {
        let resolver = match resolver {
            Ok(r) => r,
            Err(e) => {
                let why = format!("no DNS resolver: {e}");
                return Probed {
                    checks: vec![
                        check("dns", CheckResult::Fail, why.clone()),
                        check("http-01", CheckResult::Skipped, "no DNS resolver".into()),
                    ],
                    caa: Err(why),
                };
            }
        };
        if let Some(base) = name.strip_prefix("*.") {
            return Probed {
                checks: vec![check(
                    "challenge",
                    CheckResult::Fail,
                    "a wildcard needs DNS-01, which this proxy does not answer (HTTP-01 and TLS-ALPN-01 cannot prove it)".into(),
                )],
                caa: relevant_caa(&resolver, base).await,
            };
        }
        let (caa, (dns, http)) = tokio::join!(relevant_caa(&resolver, name), async {
            let addrs = lookup_addrs(&resolver, name).await;
            let dns = self.dns_check(&addrs);
            let http = match &addrs {
                Ok(a) if !a.is_empty() => self.http_check(shared, name, a).await,
                _ => check(
                    "http-01",
                    CheckResult::Skipped,
                    format!("{name} has no address to connect to"),
                ),
            };
            (dns, http)
        });
        Probed {
            checks: vec![dns, http],
            caa,
        }
    }

    fn dns_check(&self, addrs: &Result<Vec<IpAddr>, String>) -> PreflightCheck {
        let addrs = match addrs {
            Ok(a) if a.is_empty() => {
                return check("dns", CheckResult::Fail, "no A or AAAA record".into())
            }
            Ok(a) => a,
            Err(e) => return check("dns", CheckResult::Fail, e.clone()),
        };
        let list = |a: &[IpAddr]| {
            a.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.public_addrs.is_empty() {
            return check(
                "dns",
                CheckResult::Warn,
                format!(
                    "resolves to {}; cannot judge: this proxy's public addresses are unknown (give --public-addr)",
                    list(addrs)
                ),
            );
        }
        let elsewhere: Vec<IpAddr> = addrs
            .iter()
            .filter(|a| !self.public_addrs.contains(a))
            .copied()
            .collect();
        if elsewhere.is_empty() {
            check(
                "dns",
                CheckResult::Ok,
                format!("resolves to {} (this proxy)", list(addrs)),
            )
        } else {
            check(
                "dns",
                CheckResult::Fail,
                format!(
                    "resolves to {}, not to this proxy ({})",
                    list(&elsewhere),
                    list(&self.public_addrs)
                ),
            )
        }
    }

    /// Publishes a one-off token, fetches it from every address, withdraws it.
    async fn http_check(
        &self,
        shared: &Arc<Shared>,
        name: &str,
        addrs: &[IpAddr],
    ) -> PreflightCheck {
        let token = random_hex(24);
        let body = format!("{}.preflight", random_hex(24));
        let _published = Token::publish(shared.clone(), &token, &body);
        let host = if self.http_port == 80 {
            name.to_owned()
        } else {
            format!("{name}:{}", self.http_port)
        };
        // Every address at once (the CA may pick any of them), up to MAX_FETCHES.
        let (fetched, unchecked) = addrs.split_at(addrs.len().min(MAX_FETCHES));
        let fetches: Vec<_> = fetched
            .iter()
            .map(|ip| {
                let addr = SocketAddr::new(*ip, self.http_port);
                let (host, token) = (host.clone(), token.clone());
                let task = tokio::spawn(async move {
                    tokio::time::timeout(HTTP_TIMEOUT, fetch(addr, &host, &token))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {HTTP_TIMEOUT:?}")))
                });
                (addr, task)
            })
            .collect();
        let mut failures = Vec::new();
        for (addr, task) in fetches {
            let answer = task
                .await
                .unwrap_or_else(|e| Err(format!("fetch task: {e}")));
            let problem = match answer {
                Err(e) => e,
                Ok(a) if a.status == 200 && a.body == body.as_bytes() => continue,
                Ok(a) if (300..400).contains(&a.status) => format!(
                    "HTTP {} to {} (not followed: this proxy never redirects its challenges)",
                    a.status,
                    a.location.as_deref().unwrap_or("nowhere")
                ),
                Ok(a) if a.status == 200 => {
                    "HTTP 200 with another body: not this proxy's token".into()
                }
                Ok(a) => format!("HTTP {}: not this proxy's token", a.status),
            };
            failures.push(format!("{addr}: {problem}"));
        }
        let url = format!("http://{host}/.well-known/acme-challenge/");
        let rest = match unchecked.len() {
            0 => String::new(),
            n => format!("; {n} more addresses not checked"),
        };
        if failures.is_empty() {
            let all: Vec<String> = fetched.iter().map(|a| a.to_string()).collect();
            check(
                "http-01",
                // Addresses not checked: the CA may pick one of them.
                if unchecked.is_empty() {
                    CheckResult::Ok
                } else {
                    CheckResult::Warn
                },
                format!("{url} reaches this proxy at {}{rest}", all.join(", ")),
            )
        } else {
            check(
                "http-01",
                CheckResult::Fail,
                format!(
                    "{url} does not reach this proxy: {}{rest}",
                    failures.join("; ")
                ),
            )
        }
    }
}

/// Whether the CA's limits, as kept locally (a `rateLimited` hold, the local budget),
/// let an order for the name be placed now (`verdict`: `Err` when the ledger could
/// not be read).
fn budget_check(verdict: Result<&acme::OrderVerdict, &str>) -> PreflightCheck {
    match verdict {
        Ok(acme::OrderVerdict::Allowed) => check(
            "budget",
            CheckResult::Ok,
            "a new order fits the CA's limits as kept locally".into(),
        ),
        Ok(acme::OrderVerdict::NotOrdered) => check(
            "budget",
            CheckResult::Skipped,
            "not in any group this proxy orders by ACME".into(),
        ),
        Ok(acme::OrderVerdict::Refused { until, why }) => check(
            "budget",
            CheckResult::Fail,
            format!("{why}; an order is possible from {}", date(*until)),
        ),
        Err(e) => check(
            "budget",
            CheckResult::Fail,
            format!("the ACME ledger cannot be read, so nothing is ordered: {e}"),
        ),
    }
}

/// The names to check: `names` as asked (lower case, without a final dot, each once,
/// in the order given), all routed; none asked: every routed name that is not a
/// wildcard. `routed` is sorted. A name not routed is refused (404), naming it.
fn select_names(routed: &[String], names: &[String]) -> Result<Vec<String>, Refusal> {
    if names.is_empty() {
        return Ok(routed
            .iter()
            .filter(|n| !n.starts_with("*."))
            .cloned()
            .collect());
    }
    // What is no host name (an empty `name=`, another query key, odd bytes) is a bad
    // query (400), as documented, not a name "not routed".
    let bad: Vec<String> = names
        .iter()
        .filter(|n| !is_host_name(n))
        .map(|n| format!("{n:?}"))
        .collect();
    if !bad.is_empty() {
        return Err(refuse(
            400,
            format!(
                "bad query: not a host name (want name=HOST, repeatable): {}",
                bad.join(", ")
            ),
        ));
    }
    let mut wanted: Vec<String> = Vec::with_capacity(names.len());
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    for n in names {
        let n = n.trim_end_matches('.').to_ascii_lowercase();
        if seen.insert(n.clone()) {
            wanted.push(n);
        }
    }
    let unknown: Vec<String> = wanted
        .iter()
        .filter(|n| routed.binary_search(n).is_err())
        .map(|n| format!("{n:?}"))
        .collect();
    if !unknown.is_empty() {
        return Err(refuse(
            404,
            format!("not routed (no route lists it): {}", unknown.join(", ")),
        ));
    }
    Ok(wanted)
}

/// `HOST` or `*.HOST`: letters, digits, `-`, `_` and dots, at most 253 bytes (a final
/// dot allowed).
fn is_host_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What [`Preflight::probe`] found: the finished checks and the relevant CAA RRset.
struct Probed {
    checks: Vec<PreflightCheck>,
    caa: Result<Option<CaaSet>, String>,
}

fn check(check: &str, result: CheckResult, detail: String) -> PreflightCheck {
    PreflightCheck {
        check: check.to_owned(),
        result,
        detail,
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    certs::util::random_fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A token in the daemon's HTTP-01 map, withdrawn on drop.
struct Token {
    shared: Arc<Shared>,
    token: String,
}

impl Token {
    fn publish(shared: Arc<Shared>, token: &str, body: &str) -> Token {
        shared.http01.rcu(|m| {
            let mut m = (**m).clone();
            m.insert(token.to_owned(), body.to_owned());
            m
        });
        Token {
            shared,
            token: token.to_owned(),
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.shared.http01.rcu(|m| {
            let mut m = (**m).clone();
            m.remove(&self.token);
            m
        });
    }
}

/// A and AAAA of `name` (absolute: no search domains), sorted. Asked one type at a
/// time: `lookup_ip` keeps the half that answered when the other fails, and a CA that
/// gets SERVFAIL for either type does not validate.
async fn lookup_addrs(resolver: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, String> {
    let (a, aaaa) = tokio::join!(
        lookup_type(resolver, name, RecordType::A),
        lookup_type(resolver, name, RecordType::AAAA)
    );
    let mut ips = match (a, aaaa) {
        (Ok(mut a), Ok(aaaa)) => {
            a.extend(aaaa);
            a
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
        (Err(a), Err(aaaa)) => return Err(format!("{a}; {aaaa}")),
    };
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// The addresses of one type (A or AAAA) of `name`; none: empty.
async fn lookup_type(
    resolver: &TokioResolver,
    name: &str,
    rtype: RecordType,
) -> Result<Vec<IpAddr>, String> {
    match tokio::time::timeout(DNS_TIMEOUT, resolver.lookup(format!("{name}."), rtype)).await {
        Ok(Ok(found)) => Ok(found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()),
        Ok(Err(e)) if e.is_no_records_found() => Ok(Vec::new()),
        Ok(Err(e)) => Err(format!("{rtype} lookup failed: {e}")),
        Err(_) => Err(format!("no {rtype} answer within {DNS_TIMEOUT:?}")),
    }
}

/// One CAA record, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaRecord {
    pub flags: u8,
    pub tag: String,
    pub value: Vec<u8>,
}

/// The relevant RRset (RFC 8659 section 3) and the name that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaSet {
    pub owner: String,
    pub records: Vec<CaaRecord>,
}

/// The first of `name`, its parent, ... up to the top-level domain that has CAA
/// records; `None` when none has. A failed lookup is an error: a CA does not issue
/// when it cannot read CAA.
async fn relevant_caa(resolver: &TokioResolver, name: &str) -> Result<Option<CaaSet>, String> {
    for owner in caa_candidates(name) {
        let asked = tokio::time::timeout(
            DNS_TIMEOUT,
            resolver.lookup(format!("{owner}."), RecordType::CAA),
        )
        .await;
        let records: Vec<CaaRecord> = match asked {
            Ok(Ok(found)) => found
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::CAA(caa) => Some(CaaRecord {
                        flags: caa.flags(),
                        tag: caa.tag.clone(),
                        value: caa.value.clone(),
                    }),
                    _ => None,
                })
                .collect(),
            Ok(Err(e)) if e.is_no_records_found() => Vec::new(),
            Ok(Err(e)) => {
                return Err(format!(
                    "CAA lookup of {owner} failed ({e}): the CA refuses to issue when it cannot read CAA"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "no CAA answer for {owner} within {DNS_TIMEOUT:?}: the CA refuses to issue when it cannot read CAA"
                ))
            }
        };
        if !records.is_empty() {
            return Ok(Some(CaaSet { owner, records }));
        }
    }
    Ok(None)
}

/// The names whose CAA RRsets are looked at, in order: `name` and each parent down to
/// the top-level domain (never the root).
pub fn caa_candidates(name: &str) -> Vec<String> {
    let name = name.trim_end_matches('.');
    let mut out = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        out.push(rest.to_owned());
        match rest.split_once('.') {
            Some((_, parent)) => rest = parent,
            None => break,
        }
    }
    out
}

/// The `caa` check of `name` (`*.` for a wildcard) from its relevant RRset.
fn caa_check(
    set: &Result<Option<CaaSet>, String>,
    name: &str,
    identities: &[String],
    account: Option<&str>,
    meta_error: Option<&str>,
) -> PreflightCheck {
    let set = match set {
        Err(e) => return check("caa", CheckResult::Fail, e.clone()),
        Ok(None) => {
            return check(
                "caa",
                CheckResult::Ok,
                "no CAA record: any CA may issue".into(),
            )
        }
        Ok(Some(s)) => s,
    };
    match caa_verdict(set, name.starts_with("*."), identities, account) {
        CaaVerdict::Permitted(why) => check("caa", CheckResult::Ok, why),
        CaaVerdict::Forbidden(why) => check("caa", CheckResult::Fail, why),
        CaaVerdict::CannotJudge(why) if identities.is_empty() => {
            let cause = match meta_error {
                Some(e) => format!("the directory could not be read ({e})"),
                None => "the directory names no caaIdentities".into(),
            };
            check(
                "caa",
                CheckResult::Warn,
                format!("{why}; cannot judge: {cause}"),
            )
        }
        CaaVerdict::CannotJudge(why) => check("caa", CheckResult::Warn, why),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaaVerdict {
    Permitted(String),
    Forbidden(String),
    CannotJudge(String),
}

/// Property tags of CAA a CA understands (RFC 8659, 8657, 9495 and the BRs' contact
/// tags): a critical one of any other forbids issuance.
const KNOWN_TAGS: &[&str] = &[
    "issue",
    "issuewild",
    "iodef",
    "issuemail",
    "issuevmc",
    "contactemail",
    "contactphone",
];

/// Challenge types this proxy answers (RFC 8657 `validationmethods` must allow one).
const OUR_METHODS: &[&str] = &["http-01", "tls-alpn-01"];

/// Whether the relevant RRset `set` lets a CA known by `identities` issue for a name
/// (`wildcard`: a `*.` name) with a challenge this proxy answers, to this proxy's
/// account (`account`, its URL; `None`: none yet). Pure (RFC 8659 section 4, RFC 8657
/// sections 3 and 4).
pub fn caa_verdict(
    set: &CaaSet,
    wildcard: bool,
    identities: &[String],
    account: Option<&str>,
) -> CaaVerdict {
    let show = |r: &CaaRecord| {
        format!(
            "{} CAA {} {} \"{}\"",
            set.owner,
            r.flags,
            r.tag,
            String::from_utf8_lossy(&r.value).escape_debug()
        )
    };
    if let Some(r) = set
        .records
        .iter()
        .find(|r| r.flags & 0x80 != 0 && !KNOWN_TAGS.iter().any(|t| t.eq_ignore_ascii_case(&r.tag)))
    {
        return CaaVerdict::Forbidden(format!(
            "{}: a critical tag no CA understands forbids issuance",
            show(r)
        ));
    }
    let tagged = |tag: &str| -> Vec<&CaaRecord> {
        set.records
            .iter()
            .filter(|r| r.tag.eq_ignore_ascii_case(tag))
            .collect()
    };
    let relevant = match (wildcard, tagged("issuewild")) {
        (true, wild) if !wild.is_empty() => wild,
        _ => tagged("issue"),
    };
    if relevant.is_empty() {
        return CaaVerdict::Permitted(format!(
            "CAA at {} does not restrict issuance{}",
            set.owner,
            if wildcard { " of wildcards" } else { "" }
        ));
    }
    let shown: Vec<String> = relevant.iter().map(|r| show(r)).collect();
    if identities.is_empty() {
        return CaaVerdict::CannotJudge(format!("restricted by {}", shown.join(", ")));
    }
    let ours = |issuer: &str| {
        identities
            .iter()
            .any(|i| i.trim_end_matches('.').eq_ignore_ascii_case(issuer))
    };
    let mut named_but_methods = Vec::new();
    let mut other_account = Vec::new();
    let mut account_unknown = Vec::new();
    for r in &relevant {
        let (issuer, params) = parse_issue_value(&r.value);
        if issuer.is_empty() || !ours(&issuer) {
            continue;
        }
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        // RFC 8657 section 3: only the account at this URL may have it issued.
        match (param("accounturi"), account) {
            (None, _) => {}
            (Some(uri), Some(ours)) if uri == ours => {}
            (Some(_), Some(_)) => {
                other_account.push(show(r));
                continue;
            }
            (Some(_), None) => {
                account_unknown.push(show(r));
                continue;
            }
        }
        let methods = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("validationmethods"))
            .map(|(_, v)| v.split(',').map(str::trim).collect::<Vec<_>>());
        match methods {
            Some(m) if !m.iter().any(|m| OUR_METHODS.contains(m)) => {
                named_but_methods.push(show(r));
            }
            _ => return CaaVerdict::Permitted(format!("permitted by {}", show(r))),
        }
    }
    if !account_unknown.is_empty() {
        return CaaVerdict::CannotJudge(format!(
            "{}: restricted to an ACME account, and this proxy has none yet; cannot judge",
            account_unknown.join(", ")
        ));
    }
    if !other_account.is_empty() {
        return CaaVerdict::Forbidden(format!(
            "{}: accounturi names another account than this proxy's ({})",
            other_account.join(", "),
            account.unwrap_or_default()
        ));
    }
    if !named_but_methods.is_empty() {
        return CaaVerdict::Forbidden(format!(
            "{}: validationmethods allows neither http-01 nor tls-alpn-01",
            named_but_methods.join(", ")
        ));
    }
    CaaVerdict::Forbidden(format!(
        "{} does not permit the CA ({})",
        shown.join(", "),
        identities.join(", ")
    ))
}

/// An `issue`/`issuewild` value: the issuer domain name (lower case, may be empty:
/// no CA) and its `key=value` parameters (RFC 8659 section 4.2).
pub fn parse_issue_value(value: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(value);
    let (issuer, params) = match text.split_once(';') {
        Some((i, p)) => (i, p),
        None => (&*text, ""),
    };
    let issuer = issuer.trim().trim_end_matches('.').to_ascii_lowercase();
    let params = params
        .split([';', ' ', '\t'])
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (issuer, params)
}

/// One answer of a name's port 80.
struct Answer {
    status: u16,
    body: Vec<u8>,
    location: Option<String>,
}

/// `GET /.well-known/acme-challenge/TOKEN` on `addr` with `Host: host`, HTTP/1.1,
/// `Connection: close`; the answer read to its end (at most [`MAX_ANSWER`] bytes).
async fn fetch(addr: SocketAddr, host: &str, token: &str) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: proxyd-preflight\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_ANSWER {
            return Err(format!("answer longer than {MAX_ANSWER} bytes"));
        }
        if let Some(a) = parse_answer(&raw, false)? {
            return Ok(a);
        }
    }
    parse_answer(&raw, true)?.ok_or_else(|| "connection closed before a whole HTTP answer".into())
}

/// The answer in `raw` once whole (`Ok(None)`: not yet); `eof`: nothing more comes.
fn parse_answer(raw: &[u8], eof: bool) -> Result<Option<Answer>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof && !raw.is_empty() {
            Err("not an HTTP answer".into())
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    // `HTTP/1.x SP 3DIGIT [SP reason]` (RFC 9112 section 4).
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(1..))
        .and_then(|s| s.strip_prefix(' '))
        .filter(|s| s.len() == 3 || s.as_bytes().get(3) == Some(&b' '))
        .and_then(|s| s.get(..3))
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                status_line.escape_debug().to_string()
            )
        })?;
    let mut length = None;
    let mut chunked = false;
    let mut location = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("location") {
            location = Some(v.escape_debug().to_string());
        }
    }
    let body = &raw[end + 4..];
    let body = if chunked {
        match dechunk(body) {
            Some(b) => b,
            None if eof => return Err("a chunked body cut short".into()),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if body.len() < n {
            return if eof {
                Err("body shorter than its Content-Length".into())
            } else {
                Ok(None)
            };
        }
        body[..n].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Answer {
        status,
        body,
        location,
    }))
}

/// A whole chunked body, or `None` when it is not complete (or not chunked).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        // A size no answer can have (at most MAX_ANSWER is read) is never complete;
        // checked, as a hostile size near usize::MAX would overflow.
        if b.len() < size.checked_add(2)? {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(records: &[(u8, &str, &str)]) -> CaaSet {
        CaaSet {
            owner: "example.test".into(),
            records: records
                .iter()
                .map(|(f, t, v)| CaaRecord {
                    flags: *f,
                    tag: (*t).into(),
                    value: v.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    fn ids() -> Vec<String> {
        vec!["ca.test".into()]
    }

    fn permitted(v: &CaaVerdict) -> bool {
        matches!(v, CaaVerdict::Permitted(_))
    }

    #[test]
    fn candidates_walk_up_to_the_tld() {
        assert_eq!(
            caa_candidates("a.b.example.test."),
            ["a.b.example.test", "b.example.test", "example.test", "test"]
        );
        assert_eq!(caa_candidates("test"), ["test"]);
    }

    #[test]
    fn issue_names_the_ca_or_not() {
        assert!(permitted(&caa_verdict(
            &set(&[(0, "issue", "ca.test")]),
            false,
            &ids(),
            None
        )));
        assert!(permitted(&caa_verdict(
            &set(&[
                (0, "issue", "other.test"),
                (0, "issue", " CA.test. ; account=1")
            ]),
            false,
            &ids(),
            None
        )));
        let v = caa_verdict(&set(&[(0, "issue", "other.test")]), false, &ids(), None);
        assert_eq!(
            v,
            CaaVerdict::Forbidden(
                "example.test CAA 0 issue \"other.test\" does not permit the CA (ca.test)".into()
            )
        );
        // `;` alone: no CA at all.
        assert!(!permitted(&caa_verdict(
            &set(&[(0, "issue", ";")]),
            false,
            &ids(),
            None
        )));
        // Only iodef: no restriction.
        assert!(permitted(&caa_verdict(
            &set(&[(0, "iodef", "mailto:a@b.test")]),
            false,
            &ids(),
            None
        )));
    }

    #[test]
    fn wildcards_use_issuewild_first() {
        let s = set(&[(0, "issue", "ca.test"), (0, "issuewild", "other.test")]);
        assert!(permitted(&caa_verdict(&s, false, &ids(), None)));
        assert!(!permitted(&caa_verdict(&s, true, &ids(), None)));
        let s = set(&[(0, "issue", "ca.test")]);
        assert!(permitted(&caa_verdict(&s, true, &ids(), None)));
        // issuewild does not restrict names that are not wildcards.
        let s = set(&[(0, "issuewild", ";")]);
        assert!(permitted(&caa_verdict(&s, false, &ids(), None)));
    }

    #[test]
    fn critical_unknown_tags_and_validation_methods_forbid() {
        let s = set(&[(0, "issue", "ca.test"), (128, "future", "x")]);
        assert!(!permitted(&caa_verdict(&s, false, &ids(), None)));
        let s = set(&[(0, "issue", "ca.test"), (0, "future", "x")]);
        assert!(permitted(&caa_verdict(&s, false, &ids(), None)));
        let s = set(&[(0, "issue", "ca.test; validationmethods=dns-01")]);
        assert!(!permitted(&caa_verdict(&s, false, &ids(), None)));
        let s = set(&[(0, "issue", "ca.test; validationmethods=dns-01,http-01")]);
        assert!(permitted(&caa_verdict(&s, false, &ids(), None)));
    }

    #[test]
    fn without_caa_identities_a_restriction_cannot_be_judged() {
        let v = caa_verdict(&set(&[(0, "issue", "ca.test")]), false, &[], None);
        assert!(matches!(v, CaaVerdict::CannotJudge(_)), "{v:?}");
        let c = caa_check(
            &Ok(Some(set(&[(0, "issue", "ca.test")]))),
            "a.test",
            &[],
            None,
            None,
        );
        assert_eq!(c.result, CheckResult::Warn);
        assert!(c.detail.contains("names no caaIdentities"), "{}", c.detail);
        let c = caa_check(&Ok(None), "a.test", &[], None, None);
        assert_eq!(c.result, CheckResult::Ok);
    }

    #[test]
    fn answers_are_read_whole() {
        let a = parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .unwrap()
            .unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"abc"[..]));
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", false)
                .unwrap()
                .is_none()
        );
        let a = parse_answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.body, b"abc");
        let a = parse_answer(
            b"HTTP/1.1 301 Moved\r\nLocation: https://x.test/\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.location.as_deref(), Some("https://x.test/"));
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
    }

    #[test]
    fn names_are_selected_once_each_and_must_be_routed() {
        let routed: Vec<String> = ["*.w.test", "a.test", "b.test"].map(String::from).to_vec();
        let asked = |n: &[&str]| {
            select_names(
                &routed,
                &n.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(asked(&[]).unwrap(), ["a.test", "b.test"]);
        // Duplicates that are not neighbours, case, a final dot: each name once.
        assert_eq!(
            asked(&["B.test", "a.test", "b.test.", "A.TEST"]).unwrap(),
            ["b.test", "a.test"]
        );
        assert_eq!(asked(&["*.w.test"]).unwrap(), ["*.w.test"]);
        let (code, e) = asked(&["a.test", "c.test"]).unwrap_err();
        assert_eq!(code, 404);
        assert!(e.error.contains("\"c.test\""), "{}", e.error);
        // Not host names: a bad query (400), each quoted.
        let long = "a".repeat(254);
        for bad in ["", "x=1", "c.test\r\n", "a test", "*.", long.as_str()] {
            let (code, e) = asked(&["a.test", bad]).unwrap_err();
            assert_eq!(code, 400, "{bad:?}: {}", e.error);
            assert!(e.error.contains(&format!("{bad:?}")), "{}", e.error);
        }
    }

    /// A hostile :80 answer: a chunk size near usize::MAX must be an error, not a panic
    /// (`size + 2` overflowed, then `b[..size]` was out of range).
    #[test]
    fn a_huge_chunk_size_is_an_error_not_a_panic() {
        for eof in [false, true] {
            let got = std::panic::catch_unwind(|| {
                parse_answer(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
                    eof,
                )
                .map(|a| a.map(|a| a.body))
            });
            let got = got.expect("parse_answer panicked");
            assert!(matches!(got, Ok(None) | Err(_)), "{got:?}");
        }
    }

    /// A status line is `HTTP/1.x SP 3DIGIT`: `2000` or `+20` is no status 200/20.
    #[test]
    fn a_malformed_status_is_not_a_status() {
        for head in [
            &b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 +20 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1200 OK\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(
                parse_answer(head, true).is_err(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        let a = parse_answer(b"HTTP/1.0 404\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(a.status, 404);
    }

    /// RFC 8657 `accounturi`: a record naming the CA but another account forbids this
    /// proxy's account; it must not count as permitted.
    #[test]
    fn accounturi_of_another_account_is_not_permitted() {
        let s = set(&[(0, "issue", "ca.test; accounturi=https://ca.test/acct/other")]);
        assert!(!permitted(&caa_verdict(&s, false, &ids(), None)));
        // No account yet: cannot judge (a warning), not a failure.
        let v = caa_verdict(&s, false, &ids(), None);
        assert!(matches!(v, CaaVerdict::CannotJudge(_)), "{v:?}");
        let c = caa_check(&Ok(Some(s.clone())), "a.test", &ids(), None, None);
        assert_eq!(c.result, CheckResult::Warn, "{}", c.detail);
        assert!(c.detail.contains("has none yet"), "{}", c.detail);
        // Another account: forbidden, naming ours.
        let ours = "https://ca.test/acct/1";
        let v = caa_verdict(&s, false, &ids(), Some(ours));
        assert!(
            matches!(&v, CaaVerdict::Forbidden(w) if w.contains(ours)),
            "{v:?}"
        );
        // Ours: permitted; ours but with methods this proxy cannot answer: forbidden.
        let s = set(&[(0, "issue", "ca.test; accounturi=https://ca.test/acct/1")]);
        assert!(permitted(&caa_verdict(&s, false, &ids(), Some(ours))));
        let s = set(&[(
            0,
            "issue",
            "ca.test; accounturi=https://ca.test/acct/1; validationmethods=dns-01",
        )]);
        assert!(!permitted(&caa_verdict(&s, false, &ids(), Some(ours))));
        // Another record naming the CA without accounturi still permits.
        let s = set(&[
            (0, "issue", "ca.test; accounturi=https://ca.test/acct/other"),
            (0, "issue", "ca.test"),
        ]);
        assert!(permitted(&caa_verdict(&s, false, &ids(), Some(ours))));
    }
}
