//! Tools of a hostile client: HTTP/2 frames written by hand over TLS (no h2 library would
//! send a flood or a malformed frame on purpose), slow writers, and the CPU time of a
//! process, to show that an attack costs the proxy a bounded amount.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::client::{client_config, tls_connect, Alpn};

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Write `bytes` one piece at a time, `every` apart; stops at the first write error
/// (the peer closed) and returns how many pieces went out.
pub async fn write_slowly<S: AsyncWrite + Unpin>(
    stream: &mut S,
    pieces: &[&[u8]],
    every: Duration,
) -> usize {
    for (i, piece) in pieces.iter().enumerate() {
        if stream.write_all(piece).await.is_err() || stream.flush().await.is_err() {
            return i;
        }
        tokio::time::sleep(every).await;
    }
    pieces.len()
}

pub mod h2 {
    //! Just enough HTTP/2 to write any frame: frame headers, and HPACK header blocks made
    //! of literals (never indexed, no Huffman), which every decoder must accept.

    use super::*;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;

    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// Error codes of RST_STREAM and GOAWAY.
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// One frame: 9-byte header then the payload.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, mut n: usize) {
        let max = (1usize << prefix_bits) - 1;
        if n < max {
            out.push(first | n as u8);
            return;
        }
        out.push(first | max as u8);
        n -= max;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }

    /// An HPACK block of "literal header field never indexed" entries.
    pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in headers {
            out.push(0x10);
            int(&mut out, 7, 0, name.len());
            out.extend_from_slice(name.as_bytes());
            int(&mut out, 7, 0, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// The pseudo-headers (and a few more) of a GET to `https://host/path`.
    pub fn get(host: &str, path: &str) -> Vec<u8> {
        header_block(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", host),
            (":path", path),
        ])
    }

    /// A decoded frame header and payload.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a GOAWAY or RST_STREAM.
        pub fn error_code(&self) -> Option<u32> {
            let at = match self.kind {
                GOAWAY => 4,
                RST_STREAM => 0,
                _ => return None,
            };
            self.payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        }
    }

    /// A TLS connection that negotiated `h2`, with the client preface and an empty
    /// SETTINGS frame already sent.
    pub struct Conn {
        pub io: TlsStream<TcpStream>,
        buf: Vec<u8>,
    }

    impl Conn {
        pub async fn open(addr: SocketAddr, ca_pem: &str, sni: &str) -> anyhow::Result<Conn> {
            let io = tls_connect(addr, client_config(ca_pem, Alpn::H2)?, sni).await?;
            if io.get_ref().1.alpn_protocol() != Some(b"h2") {
                bail!("the server did not pick h2");
            }
            let mut conn = Conn {
                io,
                buf: Vec::new(),
            };
            let mut hello = PREFACE.to_vec();
            hello.extend(frame(SETTINGS, 0, 0, &[]));
            conn.send(&hello).await?;
            Ok(conn)
        }

        pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
            self.io.write_all(bytes).await?;
            self.io.flush().await?;
            Ok(())
        }

        /// The next frame, `None` on EOF or a reset connection, or an error when nothing
        /// whole arrives within `within`.
        pub async fn read_frame(&mut self, within: Duration) -> anyhow::Result<Option<Frame>> {
            tokio::time::timeout(within, self.read_frame_inner())
                .await
                .context("no frame in time")?
        }

        async fn read_frame_inner(&mut self) -> anyhow::Result<Option<Frame>> {
            loop {
                if self.buf.len() >= 9 {
                    let len =
                        u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                    if self.buf.len() >= 9 + len {
                        let f = Frame {
                            kind: self.buf[3],
                            flags: self.buf[4],
                            stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                                & 0x7fff_ffff,
                            payload: self.buf[9..9 + len].to_vec(),
                        };
                        self.buf.drain(..9 + len);
                        return Ok(Some(f));
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// Read frames until the connection ends or `within` passes; returns them.
        pub async fn read_until_closed(&mut self, within: Duration) -> (Vec<Frame>, bool) {
            let deadline = tokio::time::Instant::now() + within;
            let mut frames = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.read_frame(left).await {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => return (frames, true),
                    Err(_) => return (frames, false),
                }
            }
        }
    }
}
