//! The journal on the hot path, with an in-memory store: claims decide what
//! is sent, records are committed before their deliveries are acked, and a
//! failing store holds deliveries instead of losing or acking them.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_actors::journal::{JournalParams, CLAIM_COMPANY};
use herald_actors::messages::{Crash, Deliver};
use herald_actors::model::Channel;
use herald_actors::ports::{
    ClaimRequest, ClaimVerdict, DeliveryLog, JournalError, OutcomeRecord, RecordOutcome,
};
use herald_actors::provider::LeaseRenewal;
use herald_actors::ticket::{Disposition, Ticket};
use tokio::sync::mpsc;

/// Just enough of the store's claim rules: sent stays sent; an unfinished
/// claim claimed again is an unknown outcome.
#[derive(Default)]
struct MemoryLog {
    status: Mutex<HashMap<String, &'static str>>,
    down: AtomicBool,
    transactions: AtomicUsize,
    records: Mutex<Vec<OutcomeRecord>>,
    /// Each transaction's (records, claims).
    shapes: Mutex<Vec<(usize, usize)>>,
    /// The events whose leases were renewed, in order.
    renewals: Mutex<Vec<String>>,
}

impl MemoryLog {
    /// Stores `id` as already in `status`.
    fn set(&self, id: &str, status: &'static str) {
        self.status.lock().unwrap().insert(id.into(), status);
    }
}

struct Log(Arc<MemoryLog>);

impl DeliveryLog for Log {
    fn commit(
        &self,
        records: Vec<OutcomeRecord>,
        claims: Vec<ClaimRequest>,
    ) -> BoxFuture<'static, Result<Vec<ClaimVerdict>, JournalError>> {
        let m = self.0.clone();
        async move {
            if m.down.load(Ordering::SeqCst) {
                return Err(JournalError("store down".into()));
            }
            m.transactions.fetch_add(1, Ordering::SeqCst);
            m.shapes.lock().unwrap().push((records.len(), claims.len()));
            let mut status = m.status.lock().unwrap();
            for r in &records {
                if matches!(r.outcome, RecordOutcome::Sent { .. }) {
                    status.insert(r.event_id.to_string(), "sent");
                }
            }
            m.records.lock().unwrap().extend(records);
            Ok(claims
                .iter()
                .map(|c| match status.get(&*c.event_id).copied() {
                    Some("sent") => ClaimVerdict::AlreadySent,
                    Some("elsewhere") => ClaimVerdict::InFlightElsewhere,
                    Some("sending") => ClaimVerdict::Send {
                        previous_unknown: true,
                    },
                    _ => {
                        status.insert(c.event_id.to_string(), "sending");
                        ClaimVerdict::Send {
                            previous_unknown: false,
                        }
                    }
                })
                .collect())
        }
        .boxed()
    }

    fn renew(&self, event_id: Arc<str>) -> BoxFuture<'static, Result<bool, JournalError>> {
        let m = self.0.clone();
        async move {
            if m.down.load(Ordering::SeqCst) {
                return Err(JournalError("store down".into()));
            }
            m.renewals.lock().unwrap().push(event_id.to_string());
            let status = m.status.lock().unwrap();
            Ok(status.get(&*event_id).copied() == Some("sending"))
        }
        .boxed()
    }
}

/// [`with_journal`] with sends that take `latency`.
fn with_latency(log: &Arc<MemoryLog>, latency: Duration) -> World {
    start_full(
        vec![class("c", 1, 600_000)],
        latency,
        8,
        Some(Arc::new(Log(log.clone()))),
    )
}

fn with_journal(log: &Arc<MemoryLog>) -> World {
    with_timings(log, JournalParams::default())
}

/// [`with_journal`] with the journal's timings given.
fn with_timings(log: &Arc<MemoryLog>, params: JournalParams) -> World {
    start_with_journal(
        vec![class("c", 1, 600_000)],
        Duration::from_millis(5),
        8,
        Some(Arc::new(Log(log.clone()))),
        params,
    )
}

/// Waits until the journal and the class sender are running.
async fn ready(w: &World) {
    wait_for(|| w.registry.journal().is_some() && w.registry.sender(Channel::Sms, "c").is_some())
        .await;
}

fn deliver(w: &World, id: &str, tx: &mpsc::UnboundedSender<Disposition>) {
    w.registry
        .sender(Channel::Sms, "c")
        .unwrap()
        .do_send(Deliver {
            job: job(id, "c"),
            ticket: Ticket::new(tx.clone()),
        });
}

/// `herald_outcome_unknown_total` of the class.
fn unknown_outcomes(w: &World) -> u64 {
    w.metrics
        .outcome_unknown
        .with_label_values(&["sms", "c"])
        .get()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Disposition>) -> Disposition {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a settlement in time")
        .expect("channel open")
}

#[actix_rt::test]
async fn a_send_is_recorded_before_its_delivery_is_acked_and_never_repeated() {
    let log = Arc::new(MemoryLog::default());
    let w = with_journal(&log);
    ready(&w).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    deliver(&w, "e1", &tx);
    assert_eq!(next(&mut rx).await, Disposition::Ack);
    // Acked only after the record was committed.
    assert_eq!(log.status.lock().unwrap().get("e1").copied(), Some("sent"));
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 1);
    // The same event again (a redelivery or a republish): acked, not sent.
    deliver(&w, "e1", &tx);
    assert_eq!(next(&mut rx).await, Disposition::Ack);
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 1);
    wait_for(|| {
        w.metrics
            .duplicates_suppressed
            .with_label_values(&["sms", "c"])
            .get()
            == 1
    })
    .await;
}

#[actix_rt::test]
async fn an_outcome_record_waits_for_the_next_claim_to_share_its_transaction() {
    let log = Arc::new(MemoryLog::default());
    // A linger far beyond the test, so only a claim can commit the record.
    let params = JournalParams {
        record_linger: Duration::from_secs(600),
        ..JournalParams::default()
    };
    let w = with_timings(&log, params);
    ready(&w).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    deliver(&w, "first", &tx);
    wait_for(|| w.recorder.sent.lock().unwrap().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "the record waits, so no ack yet");
    assert_eq!(*log.shapes.lock().unwrap(), vec![(0, 1)]);
    // The next claim carries the waiting record: one transaction for both,
    // and the first delivery is acked once it commits.
    deliver(&w, "second", &tx);
    assert_eq!(next(&mut rx).await, Disposition::Ack);
    assert_eq!(*log.shapes.lock().unwrap(), vec![(0, 1), (1, 1)]);
    assert_eq!(
        log.status.lock().unwrap().get("first").copied(),
        Some("sent")
    );
}

#[actix_rt::test]
async fn a_few_claims_wait_for_company_and_a_full_batch_goes_at_once() {
    let log = Arc::new(MemoryLog::default());
    // A claim linger far beyond the test, so only company ends it.
    let params = JournalParams {
        claim_linger: Duration::from_secs(600),
        ..JournalParams::default()
    };
    let w = with_timings(&log, params);
    ready(&w).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let few = CLAIM_COMPANY - 1;
    for i in 0..few {
        deliver(&w, &format!("few-{i}"), &tx);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log.shapes.lock().unwrap().is_empty(), "{few} claims wait");
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 0);
    // One more makes company: all go, in one transaction.
    deliver(&w, "one-more", &tx);
    wait_for(|| w.recorder.sent.lock().unwrap().len() == CLAIM_COMPANY).await;
    assert_eq!(log.shapes.lock().unwrap()[0], (0, CLAIM_COMPANY));
}

#[actix_rt::test]
async fn an_event_another_process_is_sending_is_held_and_claimed_again() {
    let log = Arc::new(MemoryLog::default());
    log.set("busy", "elsewhere");
    let w = with_journal(&log);
    ready(&w).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    deliver(&w, "busy", &tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "held, neither acked nor requeued");
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 0, "not sent");
    // The other process's send is recorded: the next claim finds it sent.
    log.set("busy", "sent");
    assert_eq!(next(&mut rx).await, Disposition::Ack);
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 0);
    assert!(log.transactions.load(Ordering::SeqCst) >= 2);
}

#[actix_rt::test]
async fn an_unfinished_claim_is_counted_as_an_unknown_outcome_and_sent_again() {
    let log = Arc::new(MemoryLog::default());
    log.set("crashed", "sending");
    let w = with_journal(&log);
    ready(&w).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    deliver(&w, "crashed", &tx);
    assert_eq!(next(&mut rx).await, Disposition::Ack);
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 1);
    wait_for(|| unknown_outcomes(&w) == 1).await;
}

#[actix_rt::test]
async fn a_failing_store_holds_deliveries_until_it_answers_again() {
    let log = Arc::new(MemoryLog::default());
    let w = with_journal(&log);
    ready(&w).await;
    log.down.store(true, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..20 {
        deliver(&w, &format!("d{i}"), &tx);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing is settled while the store is down"
    );
    assert_eq!(
        w.recorder.sent.lock().unwrap().len(),
        0,
        "nothing sent without a claim"
    );
    log.down.store(false, Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(next(&mut rx).await, Disposition::Ack);
    }
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 20);
    // Group commit: 20 claims and 20 records took far fewer than 40 transactions.
    assert!(log.transactions.load(Ordering::SeqCst) < 40);
}

#[actix_rt::test]
async fn a_journal_that_dies_returns_what_it_held() {
    let log = Arc::new(MemoryLog::default());
    let w = with_journal(&log);
    ready(&w).await;
    log.down.store(true, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..5 {
        deliver(&w, &format!("j{i}"), &tx);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.registry.journal().unwrap().do_send(Crash::Panic);
    for _ in 0..5 {
        assert_eq!(next(&mut rx).await, Disposition::Requeue);
    }
    wait_for(|| {
        w.metrics
            .actor_restarts
            .with_label_values(&["journal"])
            .get()
            == 1
    })
    .await;
}

#[actix_rt::test]
async fn two_copies_of_one_event_in_flight_at_once_are_sent_once() {
    let log = Arc::new(MemoryLog::default());
    // Slow sends: the second copy arrives while the first call is open.
    let w = with_latency(&log, Duration::from_millis(300));
    ready(&w).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    deliver(&w, "twin", &tx);
    deliver(&w, "twin", &tx);
    deliver(&w, "other", &tx);
    for _ in 0..3 {
        assert_eq!(next(&mut rx).await, Disposition::Ack);
    }
    let sent = w.recorder.sent_ids();
    assert_eq!(
        sent.iter().filter(|id| *id == "twin").count(),
        1,
        "{sent:?}"
    );
    assert_eq!(
        sent.iter().filter(|id| *id == "other").count(),
        1,
        "{sent:?}"
    );
    assert_eq!(unknown_outcomes(&w), 0);
}

#[actix_rt::test]
async fn a_second_copy_waits_however_long_the_store_holds_the_first_claim() {
    let log = Arc::new(MemoryLog::default());
    let w = with_journal(&log);
    ready(&w).await;
    log.down.store(true, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::unbounded_channel();
    deliver(&w, "held", &tx);
    deliver(&w, "held", &tx);
    // Past the staleness check (every 5 s) with the store still down: the
    // first claim is not answered, so the second copy stays parked rather
    // than joining it in one batch, where both would be sent.
    tokio::time::sleep(Duration::from_millis(5_600)).await;
    log.down.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(next(&mut rx).await, Disposition::Ack);
    }
    let sent = w.recorder.sent.lock().unwrap().len();
    assert_eq!(sent, 1, "the event was sent once");
}

#[actix_rt::test]
async fn a_parked_copy_goes_once_the_first_copys_delivery_is_gone() {
    let log = Arc::new(MemoryLog::default());
    let w = with_latency(&log, Duration::from_secs(1));
    ready(&w).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    deliver(&w, "gone", &tx);
    deliver(&w, "gone", &tx);
    // The first copy is in its call when its provider dies: the call and
    // its ticket go with it, and no outcome will come.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.registry
        .provider(Channel::Sms)
        .unwrap()
        .do_send(Crash::Panic);
    assert_eq!(next(&mut rx).await, Disposition::Requeue);
    // The parked copy is let through at the next check, without waiting
    // for any lease, and sent once, its first attempt counted unknown.
    assert_eq!(next(&mut rx).await, Disposition::Ack);
    let sent = w.recorder.sent.lock().unwrap().len();
    assert_eq!(sent, 1);
    assert_eq!(unknown_outcomes(&w), 1);
}

#[actix_rt::test]
async fn a_claim_that_waited_for_its_provider_renews_its_lease_or_is_not_sent() {
    let log = Arc::new(MemoryLog::default());
    let store: Arc<dyn DeliveryLog> = Arc::new(Log(log.clone()));
    // Two sends a second, one at a time: of five claimed at once, two go
    // at once and the others wait 0.5, 1 and 1.5 s for the provider.
    let w = start_world(
        vec![class("c", 1, 600_000)],
        Duration::from_millis(5),
        1,
        Some(store.clone()),
        JournalParams::default(),
        |p| {
            p.rate_per_sec = 2.0;
            p.lease = Some(LeaseRenewal {
                log: store,
                after: Duration::from_millis(250),
            });
        },
    );
    ready(&w).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    for id in ["a", "b", "c", "d", "e"] {
        deliver(&w, id, &tx);
    }
    // Another process found the last one's lease run out and sent it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    log.set("e", "sent");
    for _ in 0..5 {
        assert_eq!(next(&mut rx).await, Disposition::Ack);
    }
    let sent = w.recorder.sent_ids();
    assert_eq!(sent, ["a", "b", "c", "d"]);
    let renewed = log.renewals.lock().unwrap().clone();
    assert_eq!(renewed, ["c", "d", "e"]);
    assert_eq!(
        w.metrics
            .duplicates_suppressed
            .with_label_values(&["sms", "c"])
            .get(),
        1
    );
}
