//! The broker link: owns the current connection and keeps it up. It
//! connects (with capped, jittered backoff), declares the topology, opens the
//! publisher's confirm channel and starts the consumers; when the connection
//! or any consumer dies (heartbeat timeout, broker restart, network cut), it
//! tears the session down and starts again — topology included — with no
//! process restart. Deliveries unacked on the old connection are returned
//! to their queues by the broker and come again on the new one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    /// `herald_broker_connected`, moved as sessions start and end.
    gauge: Option<prometheus::IntGauge>,
}

impl BrokerLink {
    /// A link over an existing connection (for the CLI's one-shot commands).
    pub async fn fixed(conn: Arc<Connection>) -> lapin::Result<Arc<BrokerLink>> {
        let link = Arc::new(BrokerLink::default());
        link.set(conn).await?;
        Ok(link)
    }

    /// A link that reports its state in `gauge` (1 connected, 0 not).
    pub fn with_gauge(gauge: prometheus::IntGauge) -> BrokerLink {
        gauge.set(0);
        BrokerLink {
            gauge: Some(gauge),
            ..BrokerLink::default()
        }
    }

    fn report(&self, connected: bool) {
        if let Some(g) = &self.gauge {
            g.set(i64::from(connected));
        }
    }

    async fn set(&self, conn: Arc<Connection>) -> lapin::Result<()> {
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Some(Live { conn, publish });
        self.sessions.fetch_add(1, Ordering::SeqCst);
        self.report(true);
        Ok(())
    }

    fn clear(&self) -> Option<Arc<Connection>> {
        self.report(false);
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

/// The consumers running now, for shutdown to cancel.
#[derive(Clone, Default)]
struct ConsumerSet(Arc<Mutex<Vec<Running>>>);

impl ConsumerSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, r: Running) {
        self.lock().push(r);
    }

    fn remove(&self, tag: &str) {
        self.lock().retain(|r| r.tag != tag);
    }
}

async fn cancel(r: &Running) {
    let _ = r
        .channel
        .basic_cancel(r.tag.as_str().into(), BasicCancelOptions::default())
        .await;
}

/// Stops a running link: consumers cancelled, then (after the caller's grace
/// period) the connection closed.
pub struct LinkControl {
    link: Arc<BrokerLink>,
    consumers: ConsumerSet,
    task: tokio::task::JoinHandle<()>,
}

impl LinkControl {
    /// Stops taking deliveries: every consumer is cancelled, so nothing new
    /// arrives; what was delivered stays ours to finish or return.
    pub async fn stop_consuming(&self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        let running = self.consumers.lock().clone();
        for r in &running {
            cancel(r).await;
        }
    }

    /// Closes the connection: whatever is still unacked returns to its queue.
    ///
    /// Its channels are closed first, each awaited, and the link's task is
    /// gone before the connection closes: lapin closes a channel by itself
    /// when its last handle drops, and one whose close is still queued when
    /// the connection starts closing fails and is logged as a connection
    /// ERROR, on every clean shutdown.
    pub async fn close(self) {
        self.link.stopping.store(true, Ordering::SeqCst);
        let running = self.consumers.lock().clone();
        for r in &running {
            let _ = r.channel.close(200, "herald stopping".into()).await;
        }
        if let Some(publish) = self.link.publish_channel() {
            let _ = publish.close(200, "herald stopping".into()).await;
        }
        self.task.abort();
        let _ = self.task.await;
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
    let consumers = ConsumerSet::default();
    let (up_tx, mut up_rx) = watch::channel(false);
    let task = tokio::spawn(maintain(
        params,
        link.clone(),
        ctx,
        consumers.clone(),
        up_tx,
    ));
    while !*up_rx.borrow_and_update() {
        if up_rx.changed().await.is_err() {
            break;
        }
    }
    LinkControl {
        link,
        consumers,
        task,
    }
}

async fn maintain(
    params: LinkParams,
    link: Arc<BrokerLink>,
    ctx: Arc<ConsumeContext>,
    consumers: ConsumerSet,
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
    consumers: &ConsumerSet,
    up: &watch::Sender<bool>,
) -> lapin::Result<()> {
    let conn = Arc::new(super::connect(&params.url, params.heartbeat_secs).await?);
    let setup = conn.create_channel().await?;
    topology::declare(&setup, &params.classes).await?;
    let _ = setup.close(200, "declared".into()).await;
    link.set(conn.clone()).await?;
    // The last session's consumers died with its connection.
    consumers.lock().clear();
    // The unrouted queue's consumer first: it runs even when every class
    // is paused, so a lost connection is always noticed.
    let sources = std::iter::once(Source::Unrouted).chain(
        params
            .classes
            .iter()
            .map(|c| Source::Class(c.class.clone())),
    );
    let mut loops = Vec::new();
    for source in sources {
        let first =
            consumer_while_running(&conn, &source, params.prefetch, ctx, consumers, link).await?;
        loops.push(Box::pin(keep_consuming(
            &conn,
            source,
            params.prefetch,
            ctx,
            consumers,
            link,
            first,
        )));
    }
    let _ = up.send(true);
    info!(session = link.sessions(), "connected to the broker");
    // Any consumer ending on its own means the channel or the connection is
    // gone.
    let (ended, _, _) = futures_util::future::select_all(loops).await;
    if let Err(e) = ended {
        warn!(error = %e, "a consumer could not restart");
    }
    if !link.stopping() {
        warn!("lost the broker connection; reconnecting");
    }
    Ok(())
}

/// Whether `source` is a paused class.
fn paused(source: &Source, set: &std::collections::BTreeSet<String>) -> bool {
    matches!(source, Source::Class(c) if set.contains(c))
}

/// Starts `source`'s consumer unless its class is paused.
async fn consumer_while_running(
    conn: &Connection,
    source: &Source,
    prefetch: u16,
    ctx: &Arc<ConsumeContext>,
    consumers: &ConsumerSet,
    link: &BrokerLink,
) -> lapin::Result<Option<Running>> {
    if paused(source, &ctx.controls.watch_paused().borrow()) {
        return Ok(None);
    }
    let r = consumer::start(conn, source.clone(), prefetch, ctx.clone()).await?;
    consumers.insert(r.clone());
    if link.stopping() {
        // Shutdown began while it started: it missed the cancel.
        cancel(&r).await;
    }
    Ok(Some(r))
}

/// Runs `source`'s consumer for the session: cancels it while its class
/// is paused (the channel stays open until what it took is settled) and
/// starts a new one on resume. Returns when a consumer ends that was not
/// paused: shutdown, or a lost channel or connection.
async fn keep_consuming(
    conn: &Connection,
    source: Source,
    prefetch: u16,
    ctx: &Arc<ConsumeContext>,
    consumers: &ConsumerSet,
    link: &BrokerLink,
    mut running: Option<Running>,
) -> lapin::Result<()> {
    let mut pauses = ctx.controls.watch_paused();
    loop {
        match running.take() {
            None => {
                running =
                    consumer_while_running(conn, &source, prefetch, ctx, consumers, link).await?;
                // Still paused: wait for a change.
                if running.is_none() && pauses.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Some(r) => {
                let paused_now = async {
                    loop {
                        if paused(&source, &pauses.borrow_and_update()) {
                            return;
                        }
                        if pauses.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                };
                tokio::select! {
                    _ = r.done.notified() => {
                        consumers.remove(&r.tag);
                        return Ok(());
                    }
                    _ = paused_now => {
                        r.retired.store(true, Ordering::SeqCst);
                        cancel(&r).await;
                        r.done.notified().await;
                        consumers.remove(&r.tag);
                        if let Source::Class(class) = &source {
                            ctx.controls.release(class);
                        }
                        info!(?source, "consumer cancelled: class paused");
                    }
                }
            }
        }
    }
}
