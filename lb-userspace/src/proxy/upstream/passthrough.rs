//! TLS passthrough: the client's TLS stream, still encrypted, spliced to an endpoint of the
//! host's backend group (ingress-nginx `ssl-passthrough`). The backend terminates TLS and
//! presents its own certificate. The ClientHello bytes read for the SNI are sent first.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{BackendGroup, balance, endpoint::InflightGuard};
use crate::{now_ms, tls};

/// A connection to a passthrough endpoint; counts as a request in flight on it while open.
pub struct Upstream {
    stream: TcpStream,
    _inflight: InflightGuard,
}

/// Connects to an endpoint of `group`. Endpoints that refuse are tried like retries of a
/// request (up to `retries.attempts` more) and recorded as failures for passive health.
/// `None` (counted) when no endpoint could be reached.
pub async fn connect(group: &BackendGroup, client_ip: IpAddr) -> Option<Upstream> {
    let hash_key = group.config.hash_on.as_ref().and_then(|on| {
        balance::hash_key(on, &http::HeaderMap::new(), client_ip, &http::Uri::from_static("/"))
    });
    let mut tried = Vec::new();
    for _attempt in 0..=group.config.retries.attempts {
        let Some(index) = group.balancer.pick(&group.endpoints, hash_key, now_ms(), &tried) else { break };
        tried.push(index);
        let endpoint = &group.endpoints[index];
        match tokio::time::timeout(group.connect_timeout(), TcpStream::connect(endpoint.address)).await {
            Ok(Ok(stream)) => {
                endpoint.record_success();
                let _ = stream.set_nodelay(true);
                tls::count_passthrough(true);
                return Some(Upstream { stream, _inflight: endpoint.start_request() });
            }
            Ok(Err(e)) => {
                tracing::debug!(backend = %group.name, endpoint = %endpoint.address, error = %e, "passthrough connect failed");
                endpoint.record_failure(&group.config.outlier, now_ms());
            }
            Err(_elapsed) => {
                tracing::debug!(backend = %group.name, endpoint = %endpoint.address, "passthrough connect timed out");
                endpoint.record_failure(&group.config.outlier, now_ms());
            }
        }
    }
    // Nothing to tell the client in TLS terms without a certificate: the caller closes.
    tls::count_passthrough(false);
    None
}

/// Sends the ClientHello bytes already read, then copies both ways until both sides close or
/// nothing moves for `idle`. References no snapshot, so reloads never cut it.
pub async fn splice(mut client: TcpStream, hello: Vec<u8>, mut upstream: Upstream, idle: Duration) {
    if upstream.stream.write_all(&hello).await.is_err() {
        return;
    }
    drop(hello);
    if let Err(e) = copy_both_ways(&mut client, &mut upstream.stream, idle).await {
        tracing::debug!(error = %e, "passthrough ended with an error");
    }
}

/// Copies bytes both ways; a side's EOF is passed on as a half-close. Ends when both directions
/// ended, on an error, or after `idle` without a byte in either direction.
async fn copy_both_ways(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle: Duration,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let (mut up_open, mut down_open) = (true, true);
    let mut last = Instant::now();
    while up_open || down_open {
        tokio::select! {
            read = client_read.read(&mut up), if up_open => match read? {
                0 => {
                    up_open = false;
                    upstream_write.shutdown().await?;
                }
                n => {
                    upstream_write.write_all(&up[..n]).await?;
                    last = Instant::now();
                }
            },
            read = upstream_read.read(&mut down), if down_open => match read? {
                0 => {
                    down_open = false;
                    client_write.shutdown().await?;
                }
                n => {
                    client_write.write_all(&down[..n]).await?;
                    last = Instant::now();
                }
            },
            () = tokio::time::sleep_until((last + idle).into()) => return Ok(()),
        }
    }
    Ok(())
}
