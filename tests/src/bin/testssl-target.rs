//! A proxyd to scan: one backend behind the real proxyd with its local CA, on loopback
//! ports picked by the kernel. Used by tests/testssl/run.sh.
//!
//! Prints one line, `READY <https address> <CA file> <name>`, then serves until its
//! standard input is closed (or it is killed).

use tests::{Backend, Proxy};
use tokio::io::AsyncReadExt;

const NAME: &str = "testssl.test";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = Backend::start("scanned").await;
    let routes = format!(
        "[[route]]\nhosts = [\"{NAME}\"]\nupstreams = [\"{}\"]\n",
        backend.addr()
    );
    let proxy = Proxy::start(&routes).await;
    println!(
        "READY {} {} {NAME}",
        proxy.https_addr(),
        proxy.ca_path().display()
    );
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(proxy);
    Ok(())
}
