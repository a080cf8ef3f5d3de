//! Readiness, for `GET /v1/health/ready` (admin API, `proxyctl status`) and `GET /health`
//! (metrics listener): a route table is in force and every `--https`/`--http` address is
//! a listening socket of this very process.
//!
//! The listeners are read from `/proc/self/net/tcp{,6}` and `/proc/self/fd`, so a probe
//! opens no connection (one would count as a failed TLS handshake) and a port that
//! another process holds (pingora keeps retrying a busy port) does not count as ours.
//! Certificates are reported (how many are held, which routed names none covers) but do
//! not gate readiness: with ACME and `--acme-fallback none`, names wait for the CA while
//! every other site is served.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::data::state::Shared;

/// Where the daemon listens (for `status` and readiness).
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub admin: std::path::PathBuf,
}

pub struct Readiness {
    pub ready: bool,
    pub generation: u64,
    /// (address, listening) for every --https and --http address.
    pub listeners: Vec<(SocketAddr, bool)>,
    pub certificates: usize,
    pub names_without_certificate: Vec<String>,
    /// Why not ready, one short phrase each.
    pub problems: Vec<String>,
}

impl Readiness {
    /// The admin API's reply (`GET /v1/health/ready`).
    pub fn to_reply(&self) -> admin_api::Readiness {
        admin_api::Readiness {
            ready: self.ready,
            generation: self.generation,
            listeners: self
                .listeners
                .iter()
                .map(|(a, up)| admin_api::ListenerState {
                    address: a.to_string(),
                    listening: *up,
                })
                .collect(),
            certificates: self.certificates,
            names_without_certificate: self.names_without_certificate.clone(),
            problems: self.problems.clone(),
        }
    }
}

pub fn check(shared: &Shared, listeners: &Listeners) -> Readiness {
    let snapshot = shared.snapshot.load_full();
    // A table is in force from the start on (the daemon does not start without a valid
    // one, and a reload swaps a whole new one in): what is left to check is the sockets.
    let mut problems = Vec::new();
    let wanted: Vec<SocketAddr> = listeners
        .https
        .iter()
        .chain(listeners.http.iter())
        .copied()
        .collect();
    let listening = match own_listening_sockets() {
        Ok(set) => set,
        Err(e) => {
            problems.push(format!("cannot read the process's sockets: {e}"));
            HashSet::new()
        }
    };
    let listeners: Vec<(SocketAddr, bool)> = wanted
        .iter()
        .map(|a| (*a, listening.contains(&normalize(*a))))
        .collect();
    for (a, up) in &listeners {
        if !up {
            problems.push(format!("{a} is not listening"));
        }
    }
    // Valid now: an expired certificate does not count.
    let names_without_certificate = shared.certs.uncovered(&snapshot.table.names());
    Readiness {
        ready: problems.is_empty(),
        generation: snapshot.generation,
        listeners,
        certificates: shared.certs.certs().len(),
        names_without_certificate,
        problems,
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so `--https 127.0.0.1:443` matches either table.
fn normalize(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Local addresses of the TCP sockets in LISTEN state that this process holds.
fn own_listening_sockets() -> std::io::Result<HashSet<SocketAddr>> {
    let mut by_inode = std::collections::HashMap::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // no IPv6 in this kernel
        };
        for (addr, inode) in text.lines().skip(1).filter_map(parse_listen_line) {
            by_inode.insert(inode, normalize(addr));
        }
    }
    let mut own = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if own.len() == by_inode.len() {
            break;
        }
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(addr) = inode.and_then(|i| by_inode.get(&i)) {
            own.insert(*addr);
        }
    }
    Ok(own)
}

/// One line of /proc/net/tcp{,6}: `sl local rem st ... uid timeout inode ...`; only
/// sockets in state 0A (LISTEN).
fn parse_listen_line(line: &str) -> Option<(SocketAddr, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[3] != "0A" {
        return None;
    }
    let (ip_hex, port_hex) = f[1].split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    // The kernel prints each 32-bit word of the address as read in host byte order.
    let words: Vec<u32> = (0..ip_hex.len() / 8)
        .map(|i| u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    let inode = f[9].parse().ok()?;
    Some((SocketAddr::new(ip, port), inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_socket_this_process_listens_on() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").ok();
        let own = own_listening_sockets().unwrap();
        assert!(own.contains(&v4.local_addr().unwrap()), "{own:?}");
        if let Some(v6) = v6 {
            assert!(own.contains(&v6.local_addr().unwrap()), "{own:?}");
        }
        // Connected (not listening) sockets are not listeners.
        let client = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let own = own_listening_sockets().unwrap();
        assert!(!own.contains(&client.local_addr().unwrap()));
    }
}
