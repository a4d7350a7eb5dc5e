//! Listening sockets. The default listen address of every tiketi process is `[::]:<port>`: on
//! Linux that one socket takes IPv6 and (IPv4-mapped) IPv4 connections, so pods are reachable on
//! IPv6-only EKS clusters as on IPv4 ones. Where the kernel has IPv6 switched off, binding `[::]`
//! fails; then the same port on `0.0.0.0` is used, with a warning.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;

/// Binds `addr`; an unspecified IPv6 address falls back to `0.0.0.0` on the same port when the
/// host cannot bind IPv6 sockets.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, fallback = %v4, error = %e, "IPv6 is not available here; listening on IPv4 only");
            TcpListener::bind(v4).await
        }
        Err(e) => Err(e),
    }
}

/// EAFNOSUPPORT (97) and EADDRNOTAVAIL (99) are what Linux answers when IPv6 is disabled.
fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(97 | 99)) || e.kind() == std::io::ErrorKind::AddrNotAvailable
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_default_address_serves_ipv4_clients_too() {
        let l = bind("[::]:0".parse().unwrap()).await.unwrap();
        let port = l.local_addr().unwrap().port();
        // A dual-stack socket (or the IPv4 fallback) accepts a connection to 127.0.0.1.
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (accepted, connected) = tokio::join!(l.accept(), connect);
        assert!(accepted.is_ok() && connected.is_ok());
    }
}
