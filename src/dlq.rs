//! `herald dlq list` and `herald dlq replay`: reading and replaying dead
//! letters. Listing takes messages without acking and closes the channel, so
//! every one returns to the queue; replaying releases the event in the
//! delivery store, then republishes it to `herald` under its class
//! (confirmed) before acking it.
//!
//! herald's own letters carry their class and reason in `x-herald-*`
//! headers. The broker dead-letters by itself too: an event whose
//! publisher-set `expiration` ran out while it waited in its class queue.
//! Those carry only the broker's `x-death`; their class is read from the
//! queue it names, so they can be listed by class and replayed like any
//! other.

use std::sync::Arc;

use herald_actors::mask;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use serde_json::Value;

use crate::amqp::publisher::{headers, Publisher};
use crate::amqp::topology::{class_of_queue, DLQ};
use crate::amqp::{header_str, header_u64};
use crate::store::Store;

/// One dead letter, as shown to an operator (addresses masked).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Letter {
    pub event_id: Option<String>,
    pub class: String,
    pub reason: String,
    pub detail: String,
    pub attempts: u64,
    pub to_phone: Option<String>,
    pub to_email: Option<String>,
}

/// The first `x-death` entry's queue and reason: where and why the broker
/// dead-lettered a message.
fn broker_death(h: Option<&FieldTable>) -> Option<(String, String)> {
    let AMQPValue::FieldArray(deaths) = h?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let first = Some(first);
    Some((
        header_str(first, "queue")?.to_owned(),
        header_str(first, "reason").unwrap_or("unknown").to_owned(),
    ))
}

fn describe(props: &lapin::BasicProperties, body: &[u8]) -> Letter {
    let h = props.headers().as_ref();
    let death = broker_death(h);
    let event: Option<Value> = serde_json::from_slice(body).ok();
    let field = |ptr: &str| {
        event
            .as_ref()
            .and_then(|e| e.pointer(ptr))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Letter {
        event_id: field("/id"),
        class: match (header_str(h, headers::CLASS), &death) {
            (Some(class), _) => class.to_owned(),
            (None, Some((queue, _))) => class_of_queue(queue).unwrap_or_default().to_owned(),
            (None, None) => String::new(),
        },
        reason: header_str(h, headers::REASON)
            .unwrap_or("broker")
            .to_owned(),
        detail: match (header_str(h, headers::DETAIL), &death) {
            (Some(detail), _) => detail.to_owned(),
            (None, Some((queue, why))) => {
                format!("dead-lettered by the broker from {queue}: {why}")
            }
            (None, None) => String::new(),
        },
        attempts: header_u64(h, headers::ATTEMPTS).unwrap_or(0),
        to_phone: field("/to/phone").map(|p| mask::phone(&p)),
        to_email: field("/to/email").map(|e| mask::email(&e)),
    }
}

async fn depth(conn: &Connection) -> lapin::Result<u32> {
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            DLQ.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = ch.close(200, "done".into()).await;
    Ok(q.message_count())
}

/// Every dead letter, oldest first; the queue is left as it was (none is
/// taken, so all go back when the channel closes).
pub async fn list(conn: &Connection) -> Result<Vec<Letter>, String> {
    let mut out = Vec::new();
    take_each(
        conn,
        |letter| {
            out.push(letter.clone());
            false
        },
        async |_, _| Ok(()),
    )
    .await?;
    Ok(out)
}

/// Which dead letters an operation takes: all, a class's, one event's.
#[derive(Debug, Default, Clone, Copy)]
pub struct Which<'a> {
    pub class: Option<&'a str>,
    pub id: Option<&'a str>,
}

impl Which<'_> {
    fn matches(&self, letter: &Letter) -> bool {
        self.class.is_none_or(|c| c == letter.class)
            && self
                .id
                .is_none_or(|id| letter.event_id.as_deref() == Some(id))
    }
}

/// Takes every dead letter `select` accepts, once, through `take` (which
/// must ack it); the rest go back to the queue, in order, when the channel
/// closes. Returns how many were taken.
async fn take_each(
    conn: &Connection,
    mut select: impl FnMut(&Letter) -> bool,
    mut take: impl AsyncFnMut(lapin::message::Delivery, Letter) -> Result<(), String>,
) -> Result<usize, String> {
    let n = depth(conn).await.map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut taken = 0;
    for _ in 0..n {
        let Some(msg) = ch
            .basic_get(DLQ.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| e.to_string())?
        else {
            break;
        };
        let d = msg.delivery;
        let letter = describe(&d.properties, &d.data);
        if !select(&letter) {
            continue; // left unacked: back to the queue when the channel closes
        }
        take(d, letter).await?;
        taken += 1;
    }
    let _ = ch.close(200, "done".into()).await;
    Ok(taken)
}

/// Republishes the dead letters `which` selects to `herald` under their
/// class; returns how many. Letters with no class stay in the queue.
///
/// The event's record in the delivery store is released first (a
/// `dead_lettered` event becomes claimable again); without that, the journal
/// would find it final and ack the replay without sending it.
pub async fn replay(
    conn: &Arc<Connection>,
    publisher: &Publisher,
    store: &Store,
    which: Which<'_>,
) -> Result<usize, String> {
    // A letter with no class has nothing to route it by: it stays.
    let select = |l: &Letter| !l.class.is_empty() && which.matches(l);
    take_each(conn, select, async |d, letter| {
        let id = letter.event_id.unwrap_or_default();
        let priority = d.properties.priority().unwrap_or(0);
        if !id.is_empty() {
            store
                .release(&id, crate::store::now_ms())
                .await
                .map_err(|e| e.to_string())?;
        }
        publisher
            .publish_event(&letter.class, &id, &d.data, priority)
            .await
            .map_err(|e| e.to_string())?;
        ack(&d).await
    })
    .await
}

/// Deletes the dead letters `which` selects; returns how many.
pub async fn purge(conn: &Connection, which: Which<'_>) -> Result<usize, String> {
    take_each(conn, |l| which.matches(l), async |d, _| ack(&d).await).await
}

async fn ack(d: &lapin::message::Delivery) -> Result<(), String> {
    d.acker
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
