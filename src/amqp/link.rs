//! The broker link: owns the current connection and keeps it up. It
//! connects (with capped, jittered backoff), declares the topology, opens the
//! publisher's confirm channel and starts the consumers; when the connection
//! or any consumer dies (heartbeat timeout, broker restart, network cut), it
//! tears the session down and starts again — topology included — with no
//! process restart. Deliveries unacked on the old connection are returned
//! to their queues by the broker and come again on the new one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::{BasicCancelOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tracing::{info, warn};

use super::consumer::{self, ConsumeContext, Running, Source};
use super::topology::{self, ClassTopology};

/// The first wait after a lost or failed connection.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest wait between two connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// What the link needs to (re)build a session.
pub struct LinkParams {
    pub url: String,
    pub heartbeat_secs: u16,
    pub prefetch: u16,
    pub classes: Vec<ClassTopology>,
}

struct Live {
    conn: Arc<Connection>,
    /// The publisher's channel, in confirm mode.
    publish: Channel,
}

/// The current connection, shared by the publisher, the queue-depth poller
/// and `/readyz`.
#[derive(Default)]
pub struct BrokerLink {
    live: RwLock<Option<Live>>,
    /// Bumped at every new session; `/readyz` and tests watch it.
    sessions: AtomicUsize,
    /// Set when herald is shutting down: a consumer ending is then expected.
    stopping: AtomicBool,
}

impl BrokerLink {
    /// A link over an existing connection (for the CLI's one-shot commands).
    pub async fn fixed(conn: Arc<Connection>) -> lapin::Result<Arc<BrokerLink>> {
        let link = Arc::new(BrokerLink::default());
        link.set(conn).await?;
        Ok(link)
    }

    async fn set(&self, conn: Arc<Connection>) -> lapin::Result<()> {
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Some(Live { conn, publish });
        self.sessions.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn clear(&self) -> Option<Arc<Connection>> {
        self.live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|l| l.conn)
    }

    /// The publisher's confirm channel, while connected.
    pub fn publish_channel(&self) -> Option<Channel> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|l| l.conn.status().connected())
            .map(|l| l.publish.clone())
    }

    /// The current connection, while connected.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|l| l.conn.status().connected())
            .map(|l| l.conn.clone())
    }

    pub fn connected(&self) -> bool {
        self.connection().is_some()
    }

    /// How many sessions have been established so far.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Stops a running link: consumers cancelled, then (after the caller's grace
/// period) the connection closed.
pub struct LinkControl {
    link: Arc<BrokerLink>,
    consumers: watch::Receiver<Vec<Running>>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkControl {
    /// Stops taking deliveries: every consumer is cancelled, so nothing new
    /// arrives; what was delivered stays ours to finish or return.
    pub async fn stop_consuming(&self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        let running = self.consumers.borrow().clone();
        for r in running {
            let _ = r
                .channel
                .basic_cancel(r.tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }

    /// Closes the connection: whatever is still unacked returns to its queue.
    pub async fn close(self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        self.task.abort();
        if let Some(conn) = self.link.clear() {
            let _ = conn.close(200, "herald stopping".into()).await;
        }
    }
}

/// Starts the link; returns once the first session is up.
pub async fn start(
    params: LinkParams,
    link: Arc<BrokerLink>,
    ctx: Arc<ConsumeContext>,
) -> LinkControl {
    let (tx, rx) = watch::channel(Vec::new());
    let (up_tx, mut up_rx) = watch::channel(false);
    let task = tokio::spawn(maintain(params, link.clone(), ctx, tx, up_tx));
    while !*up_rx.borrow_and_update() {
        if up_rx.changed().await.is_err() {
            break;
        }
    }
    LinkControl {
        link,
        consumers: rx,
        task,
    }
}

async fn maintain(
    params: LinkParams,
    link: Arc<BrokerLink>,
    ctx: Arc<ConsumeContext>,
    consumers: watch::Sender<Vec<Running>>,
    up: watch::Sender<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&params, &link, &ctx, &consumers, &up).await {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => warn!(error = %e, retry_in = ?backoff, "broker session failed"),
        }
        if link.stopping() {
            // Consumers ended because we cancelled them: the connection stays
            // open for the acks of open sends until `LinkControl::close`.
            return;
        }
        if let Some(conn) = link.clear() {
            let _ = conn.close(200, "reconnecting".into()).await;
        }
        let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: returns when it is lost.
async fn session(
    params: &LinkParams,
    link: &BrokerLink,
    ctx: &Arc<ConsumeContext>,
    consumers: &watch::Sender<Vec<Running>>,
    up: &watch::Sender<bool>,
) -> lapin::Result<()> {
    let conn = Arc::new(super::connect(&params.url, params.heartbeat_secs).await?);
    let setup = conn.create_channel().await?;
    topology::declare(&setup, &params.classes).await?;
    let _ = setup.close(200, "declared".into()).await;
    link.set(conn.clone()).await?;
    let mut running = Vec::new();
    for c in &params.classes {
        running.push(
            consumer::start(
                &conn,
                Source::Class(c.class.clone()),
                params.prefetch,
                ctx.clone(),
            )
            .await?,
        );
    }
    running.push(consumer::start(&conn, Source::Unrouted, params.prefetch, ctx.clone()).await?);
    let tasks: Vec<_> = running.iter().map(|r| r.done.clone()).collect();
    consumers.send_replace(running);
    let _ = up.send(true);
    info!(session = link.sessions(), "connected to the broker");
    // Any consumer ending means the channel or the connection is gone.
    let ended = futures_util::future::select_all(
        tasks
            .into_iter()
            .map(|n| Box::pin(async move { n.notified().await })),
    );
    ended.await;
    if !link.stopping() {
        warn!("lost the broker connection; reconnecting");
    }
    Ok(())
}
