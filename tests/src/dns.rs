//! A small authoritative DNS server on loopback, for the tests of upstream names and of
//! the ACME preflight: UDP on `127.0.0.1:0`, A, CAA and CNAME records from tables the test
//! changes while it runs, a TTL the test chooses, NXDOMAIN for unknown names, and an
//! empty answer (NOERROR) for other record types of a known name. Enough for a stub resolver; nothing more (no compression in
//! questions, no EDNS in answers, no TCP).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const TYPE_A: u16 = 1;
const TYPE_CAA: u16 = 257;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_FORMERR: u16 = 1;
const RCODE_SERVFAIL: u16 = 2;
const TYPE_AAAA: u16 = 28;

/// One CAA record: flags, tag, value.
type Caa = (u8, String, String);

#[derive(Default)]
struct Zone {
    records: Mutex<HashMap<String, Vec<Ipv4Addr>>>,
    /// CAA records (flags, tag, value) by name.
    caa: Mutex<HashMap<String, Vec<Caa>>>,
    /// CNAME target by name (answered alone, for every type: the resolver follows it).
    cname: Mutex<HashMap<String, String>>,
    /// Names whose AAAA queries get SERVFAIL (a broken or hostile server).
    servfail_aaaa: Mutex<std::collections::HashSet<String>>,
    ttl: AtomicU32,
    queries: AtomicU64,
}

/// The server. [`DnsServer::stop`] (or dropping it) closes its socket: queries then go
/// unanswered, as with a name server that is down.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    task: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Listen on a free UDP port of 127.0.0.1. TTL 1 s until [`DnsServer::set_ttl`].
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("dns: bind 127.0.0.1:0/udp");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Zone::default());
        zone.ttl.store(1, Ordering::SeqCst);
        let task = tokio::spawn(serve(socket, zone.clone()));
        DnsServer {
            addr,
            zone,
            task: Some(task),
        }
    }

    /// `127.0.0.1:<port>`: what `proxyd --dns-server` takes.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer A queries for `name` with these addresses from now on.
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr]) {
        self.zone
            .records
            .lock()
            .unwrap()
            .insert(normalize(name), addrs.to_vec());
    }

    /// Answer CAA queries for `name` with these records (flags, tag, value) from now
    /// on (RFC 8659 section 4.1's wire form).
    pub fn set_caa(&self, name: &str, records: &[(u8, &str, &str)]) {
        let records = records
            .iter()
            .map(|(f, t, v)| (*f, (*t).to_owned(), (*v).to_owned()))
            .collect();
        self.zone
            .caa
            .lock()
            .unwrap()
            .insert(normalize(name), records);
    }

    /// Answer every query for `name` with a CNAME to `target` (and nothing else: the
    /// resolver asks for the target itself), from now on.
    pub fn set_cname(&self, name: &str, target: &str) {
        self.zone
            .cname
            .lock()
            .unwrap()
            .insert(normalize(name), normalize(target));
    }

    /// Answer SERVFAIL to AAAA queries for `name` from now on (A and the rest as set).
    pub fn servfail_aaaa(&self, name: &str) {
        self.zone
            .servfail_aaaa
            .lock()
            .unwrap()
            .insert(normalize(name));
    }

    /// Answer NXDOMAIN for `name` from now on (its A and CAA records gone).
    pub fn remove(&self, name: &str) {
        self.zone.records.lock().unwrap().remove(&normalize(name));
        self.zone.caa.lock().unwrap().remove(&normalize(name));
    }

    pub fn set_ttl(&self, seconds: u32) {
        self.zone.ttl.store(seconds, Ordering::SeqCst);
    }

    /// Queries answered so far (all names and types).
    pub fn queries(&self) -> u64 {
        self.zone.queries.load(Ordering::SeqCst)
    }

    /// Close the socket and stop answering.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = answer(&buf[..n], &zone) {
            zone.queries.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// The reply to one query, or `None` for something that is not a query.
fn answer(q: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([q[2], q[3]]);
    if flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    let qdcount = u16::from_be_bytes([q[4], q[5]]);
    // Question: labels up to the root, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression in a question: not from a stub resolver
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    let question = &q[12..i + 4];
    let name = labels.join(".");

    let records = zone.records.lock().unwrap().get(&name).cloned();
    let caa = zone.caa.lock().unwrap().get(&name).cloned();
    let cname = zone.cname.lock().unwrap().get(&name).cloned();
    let known = records.is_some() || caa.is_some() || cname.is_some();
    // Each answer record's type and data.
    let rdata: Vec<(u16, Vec<u8>)> = match qtype {
        _ if cname.is_some() => {
            let mut d = Vec::new();
            for label in cname.unwrap_or_default().split('.') {
                d.push(label.len() as u8);
                d.extend_from_slice(label.as_bytes());
            }
            d.push(0);
            vec![(TYPE_CNAME, d)]
        }
        TYPE_A => records
            .unwrap_or_default()
            .iter()
            .map(|a| (TYPE_A, a.octets().to_vec()))
            .collect(),
        TYPE_CAA => caa
            .unwrap_or_default()
            .iter()
            .map(|(flags, tag, value)| {
                let mut d = vec![*flags, tag.len() as u8];
                d.extend_from_slice(tag.as_bytes());
                d.extend_from_slice(value.as_bytes());
                (TYPE_CAA, d)
            })
            .collect(),
        _ => vec![],
    };
    let servfail = qtype == TYPE_AAAA && zone.servfail_aaaa.lock().unwrap().contains(&name);
    let (rcode, answers) = match known {
        _ if qdcount != 1 => (RCODE_FORMERR, vec![]),
        _ if servfail => (RCODE_SERVFAIL, vec![]),
        false => (RCODE_NXDOMAIN, vec![]),
        true if qclass == CLASS_IN => (0, rdata),
        true => (0, vec![]),
    };
    let ttl = zone.ttl.load(Ordering::SeqCst);

    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]); // id
                                   // QR, opcode copied, AA, RD copied, RA, rcode.
    let out_flags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode;
    r.extend_from_slice(&out_flags.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes()); // qdcount
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes()); // ancount
    r.extend_from_slice(&0u16.to_be_bytes()); // nscount
    r.extend_from_slice(&0u16.to_be_bytes()); // arcount
    r.extend_from_slice(question);
    for (rtype, data) in answers {
        r.extend_from_slice(&0xC00Cu16.to_be_bytes()); // the name in the question
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}
