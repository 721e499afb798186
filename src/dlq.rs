//! `herald dlq list` and `herald dlq replay`: reading and replaying dead
//! letters. Listing takes messages without acking and closes the channel, so
//! every one returns to the queue; replaying releases the event in the
//! delivery store, then republishes it to `herald` under its class
//! (confirmed) before acking it.

use std::sync::Arc;

use herald_actors::mask;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::Value;

use crate::amqp::publisher::{headers, Publisher};
use crate::amqp::topology::DLQ;
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

fn describe(props: &lapin::BasicProperties, body: &[u8]) -> Letter {
    let h = props.headers().as_ref();
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
        class: header_str(h, headers::CLASS).unwrap_or_default().to_owned(),
        reason: header_str(h, headers::REASON)
            .unwrap_or("broker")
            .to_owned(),
        detail: header_str(h, headers::DETAIL)
            .unwrap_or_default()
            .to_owned(),
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
