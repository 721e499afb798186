//! The actors on their own, with an in-memory provider and broker: restarts
//! after a panic or a freeze lose nothing, and one class's exhausted limit
//! does not hold up another.

mod common;

use std::time::Duration;

use common::*;
use herald_actors::messages::{Crash, Deliver};
use herald_actors::metrics::Metrics;
use herald_actors::model::Channel;
use herald_actors::ticket::{Disposition, Ticket};
use tokio::sync::mpsc;

fn restarts(m: &Metrics, actor: &str) -> u64 {
    m.actor_restarts.with_label_values(&[actor]).get()
}

async fn crash_class_sender_while_it_holds_deliveries(crash: Crash) {
    // 60/min: one send a second, so most deliveries are waiting when it dies.
    let w = start(vec![class("c", 1, 60)], Duration::ZERO);
    wait_for(|| w.registry.sender(Channel::Sms, "c").is_some()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = w.registry.sender(Channel::Sms, "c").unwrap();
    for i in 0..5 {
        first.do_send(Deliver {
            job: job(&format!("e{i}"), "c"),
            ticket: Ticket::new(tx.clone()),
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.do_send(crash);
    // Every delivery is settled: one acked (sent before the crash), the four
    // it held requeued — none lost, none acked without a send.
    let mut settled = Vec::new();
    while settled.len() < 5 {
        settled.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        settled.iter().filter(|d| **d == Disposition::Ack).count(),
        1,
        "{settled:?}"
    );
    assert_eq!(
        settled
            .iter()
            .filter(|d| **d == Disposition::Requeue)
            .count(),
        4,
        "{settled:?}"
    );
    assert_eq!(w.recorder.sent.lock().unwrap().len(), 1);
    wait_for(|| restarts(&w.metrics, "class_sender") == 1).await;
    // The fresh actor serves.
    wait_for(|| {
        w.registry
            .sender(Channel::Sms, "c")
            .is_some_and(|a| a.connected())
    })
    .await;
    let fresh = w.registry.sender(Channel::Sms, "c").unwrap();
    fresh.do_send(Deliver {
        job: job("after", "c"),
        ticket: Ticket::new(tx.clone()),
    });
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap(),
        Some(Disposition::Ack)
    );
}

#[actix_rt::test]
async fn a_panicking_class_sender_is_restarted_and_loses_nothing() {
    crash_class_sender_while_it_holds_deliveries(Crash::Panic).await;
}

#[actix_rt::test]
async fn a_frozen_class_sender_is_restarted_and_loses_nothing() {
    crash_class_sender_while_it_holds_deliveries(Crash::Freeze).await;
}

#[actix_rt::test]
async fn a_provider_that_dies_mid_send_hands_its_results_to_nobody_twice() {
    let w = start(vec![class("c", 1, 6000)], Duration::from_millis(300));
    wait_for(|| w.registry.provider(Channel::Sms).is_some()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sender = w.registry.sender(Channel::Sms, "c").unwrap();
    for i in 0..3 {
        sender.do_send(Deliver {
            job: job(&format!("e{i}"), "c"),
            ticket: Ticket::new(tx.clone()),
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.registry
        .provider(Channel::Sms)
        .unwrap()
        .do_send(Crash::Panic);
    // Sends open at the provider are cut off: their deliveries go back.
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d, Disposition::Requeue);
    }
    wait_for(|| restarts(&w.metrics, "sms_provider") == 1).await;
}

#[actix_rt::test]
async fn a_restart_of_the_metrics_actor_is_counted_too() {
    let w = start(vec![class("c", 1, 6000)], Duration::ZERO);
    wait_for(|| w.registry.metrics().is_some_and(|a| a.connected())).await;
    let first = w.registry.metrics().unwrap();
    first.do_send(Crash::Panic);
    // Counted by the fresh actor (the report once went to the dying one).
    wait_for(|| restarts(&w.metrics, "metrics") == 1).await;
    assert!(!first.connected());
}

#[actix_rt::test]
async fn a_class_at_its_limit_does_not_hold_up_another() {
    // "slow" may send 6 a minute, "fast" 6000: both share one provider.
    let w = start(
        vec![class("slow", 1, 6), class("fast", 2, 6000)],
        Duration::ZERO,
    );
    wait_for(|| w.registry.sender(Channel::Sms, "fast").is_some()).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let slow = w.registry.sender(Channel::Sms, "slow").unwrap();
    let fast = w.registry.sender(Channel::Sms, "fast").unwrap();
    for i in 0..50 {
        slow.do_send(Deliver {
            job: job(&format!("s{i}"), "slow"),
            ticket: Ticket::new(tx.clone()),
        });
    }
    for i in 0..50 {
        fast.do_send(Deliver {
            job: job(&format!("f{i}"), "fast"),
            ticket: Ticket::new(tx.clone()),
        });
    }
    wait_for(|| {
        w.recorder
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| id.starts_with('f'))
            .count()
            == 50
    })
    .await;
    let sent = w.recorder.sent.lock().unwrap().clone();
    let slow_sent = sent.iter().filter(|(id, _)| id.starts_with('s')).count();
    assert!(
        slow_sent <= 2,
        "slow class sent {slow_sent}, above its limit"
    );
    assert!(
        w.metrics
            .rate_limited
            .with_label_values(&["sms", "slow"])
            .get()
            >= 48
    );
}

#[actix_rt::test]
async fn a_delivery_waiting_for_a_restarting_provider_is_not_counted_rate_limited() {
    let w = start(vec![class("c", 1, 600_000)], Duration::ZERO);
    wait_for(|| w.registry.provider(Channel::Sms).is_some()).await;
    let live = w.registry.provider(Channel::Sms).unwrap();
    // The provider as the class sender finds it mid-restart: registered,
    // its mailbox closed.
    let closed =
        actix::AsyncContext::address(&actix::Context::<herald_actors::provider::Provider>::new());
    w.registry.set_provider(Channel::Sms, closed);
    let (tx, _rx) = mpsc::unbounded_channel();
    w.registry
        .sender(Channel::Sms, "c")
        .unwrap()
        .do_send(Deliver {
            job: job("e0", "c"),
            ticket: Ticket::new(tx),
        });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.recorder.sent.lock().unwrap().is_empty());
    w.registry.set_provider(Channel::Sms, live);
    wait_for(|| w.recorder.sent.lock().unwrap().len() == 1).await;
    let limited = w
        .metrics
        .rate_limited
        .with_label_values(&["sms", "c"])
        .get();
    assert_eq!(limited, 0, "it waited for the provider, not for its limit");
}

#[actix_rt::test]
async fn shared_provider_capacity_goes_to_the_most_urgent_class_first() {
    // One request at a time, 20 ms each: a queue forms at the provider.
    let w = start_with(
        vec![class("bulk", 7, 600_000), class("urgent", 1, 600_000)],
        Duration::from_millis(20),
        1,
    );
    wait_for(|| w.registry.sender(Channel::Sms, "urgent").is_some()).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let bulk = w.registry.sender(Channel::Sms, "bulk").unwrap();
    let urgent = w.registry.sender(Channel::Sms, "urgent").unwrap();
    for i in 0..40 {
        bulk.do_send(Deliver {
            job: job(&format!("b{i}"), "bulk"),
            ticket: Ticket::new(tx.clone()),
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5 {
        urgent.do_send(Deliver {
            job: job(&format!("u{i}"), "urgent"),
            ticket: Ticket::new(tx.clone()),
        });
    }
    wait_for(|| w.recorder.sent.lock().unwrap().len() == 45).await;
    let order = w.recorder.sent_ids();
    let last_urgent = order.iter().rposition(|id| id.starts_with('u')).unwrap();
    // Published after 40 bulk jobs, the urgent ones overtake all but the few
    // bulk sends already started.
    assert!(
        last_urgent < 12,
        "urgent jobs finished at position {last_urgent}: {order:?}"
    );
}
