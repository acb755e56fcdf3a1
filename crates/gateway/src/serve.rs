//! Serving the gateway's router: HTTP/1.1, and HTTP/2 with prior knowledge (h2c) on the
//! same port, so that a proxy or client that multiplexes can hold many requests on few
//! connections.
//!
//! A request held while a pool wakes costs mostly its connection, so the listener keeps a
//! connection small: the protocol is told apart by peeking at the first bytes (nothing is
//! consumed, so HTTP/1.1's read buffer stays at its first 8 KB instead of growing to fit a
//! few bytes read ahead), and the router is shared by all connections. Every accepted socket has `TCP_NODELAY`, so small writes (one streamed chunk per token)
//! go out at once instead of waiting, by Nagle's algorithm, for the client's delayed ACK
//! (up to 40 ms).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What an HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a client may take to send its request's head (HTTP/1.1) or the connection
/// preface (HTTP/2) before the connection is closed.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish the requests it is serving (HTTP/2 connections are sent GOAWAY), and
/// returns once all have closed.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        tokio::spawn(connection(stream, router.clone(), stop_rx.clone()));
    }
    drop((listener, stop_rx));
    let _ = stop_tx.send(true);
    // Every connection task holds a receiver; they are all gone once each has closed.
    stop_tx.closed().await;
}

/// Waits after a failed accept: at once for a connection that went away before it was
/// accepted, a second for anything else (running out of file descriptors, most likely,
/// which a busy loop would only make worse).
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept connections; trying again in 1 s (is the open-file limit, ulimit -n, too low?)");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves one connection until it closes, or until a stop was asked for and its requests
/// are answered.
async fn connection(stream: TcpStream, router: Router, mut stop: watch::Receiver<bool>) {
    // A client that connected but has sent nothing yet holds up no stop.
    let http2 = tokio::select! {
        first = tokio::time::timeout(HEAD_TIMEOUT, starts_with_preface(&stream)) => match first {
            Ok(Ok(http2)) => http2,
            Ok(Err(_)) | Err(_) => return,
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    let io = TokioIo::new(stream);
    let service = TowerToHyperService::new(router);
    if http2 {
        // Boxed: an HTTP/1.1 connection, the common case, does not carry its size.
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service);
        Box::pin(until_stopped(conn, stop, |c| c.graceful_shutdown())).await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .serve_connection(io, service);
        until_stopped(conn, stop, |c| c.graceful_shutdown()).await;
    }
}

/// Runs a connection to its end; once a stop is asked for, `shut` tells it to finish what
/// it serves and close.
async fn until_stopped<C: Future>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    shut: impl FnOnce(std::pin::Pin<&mut C>),
) {
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => shut(conn.as_mut()),
    }
    let _ = conn.await;
}

/// Whether the client opens with the HTTP/2 preface, read without consuming it: false as
/// soon as a byte differs (an HTTP/1.1 request differs by its second byte at the latest).
async fn starts_with_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut seen = [0u8; PREFACE.len()];
    loop {
        let n = stream.peek(&mut seen).await?;
        if n == 0 || seen[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // A preface cut short: peeking again returns at once, so wait for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
