//! A loopback TCP forwarder between a real client and the proxy, to cut the client's connection
//! the way a network does: [`Forwarder::freeze`] makes every connection open at that moment go
//! silent in both directions (the sockets stay open, nothing more passes), so the client notices
//! only by its own timers and reconnects through the forwarder, which passes new connections;
//! [`Forwarder::cut`] closes them instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct Forwarder {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    accepted: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    /// The connection tasks (without the accept loop), for [`Forwarder::cut`].
    links: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Forwarder {
    pub async fn start(to: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, a, t) = (conns.clone(), accepted.clone(), links.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let frozen = Arc::new(AtomicBool::new(false));
                c.lock().unwrap().push(frozen.clone());
                let task = tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::join!(pipe(cr, uw, frozen.clone()), pipe(ur, cw, frozen));
                });
                t.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Forwarder {
            addr,
            conns,
            accepted,
            tasks,
            links,
        }
    }

    /// Every connection open now goes silent both ways; later ones pass.
    pub fn freeze(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// Every connection open now is closed at once (both sockets dropped); later ones pass.
    pub fn cut(&self) {
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().iter() {
            t.abort();
        }
        self.cut();
    }
}

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if !frozen.load(Ordering::SeqCst) {
                    let _ = to.shutdown().await;
                }
                break;
            }
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // A black hole: what arrives is lost, both sockets stay open.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if frozen.load(Ordering::SeqCst) {
        // Keep the other half open: a frozen link never closes by itself.
        std::future::pending::<()>().await;
    }
}
