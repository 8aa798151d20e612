//! The accept loop of one shard: spawns a task per connection, enforces the
//! per-shard connection cap, and drains connections on shutdown.

use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::conn::{Conn, ServerCtx};
use super::error::MatrixError;
use super::handoff::{self, Handoff, Moving};
use super::response::{write_head, ConnHeader};
use super::router::Router;
use super::shutdown::{ConnTracker, Shutdown};
use super::HttpConfig;

/// How long a rejected (over-cap) connection may take to receive its 503.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Serves HTTP on `listener` until `shutdown` triggers; then stops
/// accepting (the listener is closed, so new connections are refused), lets
/// in-flight requests finish (idle keep-alive connections close at once),
/// and returns when every connection is gone or `cfg.shutdown_grace` has
/// passed — connections still open then are dropped (closed).
///
/// Runs on one shard's monoio runtime, which must have its timer enabled.
pub async fn serve<S: 'static>(
    listener: TcpListener,
    router: Rc<Router<S>>,
    state: Rc<S>,
    cfg: Rc<HttpConfig>,
    shutdown: Shutdown,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    serve_with(listener, router, state, cfg, shutdown, tls, None).await
}

/// [`serve`], where plain connections may move between shards
/// (`http::handoff`): this server adopts the ones moved to its port on
/// this thread, and sends its own away through `handoff` when a response
/// asks (`Response::move_to`). Every shard's server on the port must be
/// started this way.
pub async fn serve_with<S: 'static>(
    listener: TcpListener,
    router: Rc<Router<S>>,
    state: Rc<S>,
    cfg: Rc<HttpConfig>,
    shutdown: Shutdown,
    tls: Option<Arc<rustls::ServerConfig>>,
    handoff: Option<Rc<dyn Handoff>>,
) {
    // A TLS session cannot move; neither do its connections.
    let handoff = handoff.filter(|_| tls.is_none());
    let acceptor = tls.map(monoio_rustls::TlsAcceptor::from);
    let tracker = Rc::new(ConnTracker::default());
    // Signals connection tasks to drop everything once the grace period ends.
    let force = Shutdown::new();
    let rejecting = Rc::new(ConnTracker::default());
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let ctx = Rc::new(ServerCtx {
        router,
        state,
        cfg: Rc::clone(&cfg),
        shutdown: shutdown.clone(),
        handoff: handoff.clone(),
        port,
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP server listening");
    }
    let _adopting = handoff.is_some().then(|| {
        let (ctx, tracker, force) = (Rc::clone(&ctx), Rc::clone(&tracker), force.clone());
        let adopt: handoff::Adopter = Rc::new(move |m: Moving| {
            let stream = match TcpStream::from_std(std::net::TcpStream::from(m.fd)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = %m.peer, error = %e, "cannot adopt a moved connection");
                    return;
                }
            };
            crate::metrics::local::bump(crate::metrics::local::Counter::ConnectionsMovedIn);
            let conn = Conn::adopted(stream, m.peer, m.read, m.moves, Rc::clone(&ctx));
            spawn_plain(conn, &tracker, &force);
        });
        handoff::register(port, adopt)
    });
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                if tracker.active() >= cfg.max_connections {
                    reject(stream, &rejecting, cfg.max_connections);
                    continue;
                }
                // Small responses must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                if let Some(acceptor) = &acceptor {
                    let guard = (
                        tracker.enter(),
                        crate::metrics::local::track(crate::metrics::local::Gauge::Connections),
                    );
                    let force = force.clone();
                    let acceptor = acceptor.clone();
                    let ctx = Rc::clone(&ctx);
                    let handshake_timeout = cfg.header_timeout;
                    monoio::spawn(async move {
                        let _guard = guard;
                        let serve = async {
                            let tls = match monoio::time::timeout(
                                handshake_timeout,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            // See http::tls: a slip in the TLS adapter
                            // closes this connection, not the shard.
                            let run = AssertUnwindSafe(Conn::new(tls, peer, ctx).run());
                            if run.catch_unwind().await.is_err() {
                                tracing::error!(%peer, "TLS connection task panicked");
                            }
                        };
                        monoio::select! {
                            _ = serve => {},
                            _ = force.wait() => {},
                        }
                    });
                } else {
                    spawn_plain(Conn::new(stream, peer, Rc::clone(&ctx)), &tracker, &force);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    drop(listener);
    tracing::info!(open = tracker.active(), "HTTP server shutting down");
    let drained = monoio::time::timeout(cfg.shutdown_grace, tracker.drained()).await;
    if drained.is_err() {
        tracing::warn!(
            open = tracker.active(),
            "shutdown grace period over; closing remaining connections"
        );
        force.trigger();
        // Let the connection tasks observe the signal and close.
        monoio::time::timeout(Duration::from_millis(100), tracker.drained())
            .await
            .ok();
    }
}

/// Serves a plain connection in its own task, counted by `tracker` and
/// dropped when `force` triggers.
fn spawn_plain<S: 'static>(conn: Conn<S>, tracker: &Rc<ConnTracker>, force: &Shutdown) {
    let guard = (
        tracker.enter(),
        crate::metrics::local::track(crate::metrics::local::Gauge::Connections),
    );
    let force = force.clone();
    monoio::spawn(async move {
        let _guard = guard;
        monoio::select! {
            _ = conn.run() => {},
            _ = force.wait() => {},
        }
    });
}

/// Answers an over-cap connection with 503 `M_LIMIT_EXCEEDED` in its own
/// small task, so the accept loop never waits on a client. If even the
/// rejecters pile up, the connection is simply closed.
fn reject(stream: TcpStream, rejecting: &Rc<ConnTracker>, cap: usize) {
    if rejecting.active() >= cap / 10 + 64 {
        drop(stream);
        return;
    }
    let guard = rejecting.enter();
    monoio::spawn(async move {
        let _guard = guard;
        let mut stream = stream;
        let resp =
            MatrixError::new(503, "M_LIMIT_EXCEEDED", "Too many connections").into_response();
        let mut out = Vec::with_capacity(512);
        write_head(&mut out, &resp, ConnHeader::Close);
        out.extend_from_slice(&resp.body);
        let _ = monoio::time::timeout(REJECT_WRITE_TIMEOUT, async {
            let (res, _) = stream.write_all(out).await;
            res?;
            // Half-close, then drain briefly: closing with the unread
            // request still queued would reset the connection and the
            // client might never see the 503.
            stream.shutdown().await?;
            let mut buf = Vec::with_capacity(4096);
            loop {
                buf.clear();
                let (res, b) = stream.read(buf).await;
                buf = b;
                if res? == 0 {
                    return Ok::<_, std::io::Error>(());
                }
            }
        })
        .await;
    });
}
