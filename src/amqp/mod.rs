//! The broker edge: topology, consumers and the confirmed publisher, over
//! lapin.

pub mod acks;
pub mod consumer;
pub mod link;
pub mod publisher;
pub mod topology;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};

/// The largest AMQP frame herald proposes (RabbitMQ's default is 128 KiB).
/// lapin keeps a receive and a send ring of 32 frames per connection, and a
/// steady stream of deliveries cycles through all of the receive ring: at
/// 128 KiB frames that is 8 MiB resident, at 16 KiB 1 MiB. A message larger
/// than a frame goes as several body frames; events are far smaller.
pub const FRAME_MAX: u32 = 16 * 1024;

/// Connects with herald's client name, the configured heartbeat and
/// [`FRAME_MAX`] (each unless the URL sets its own).
pub async fn connect(url: &str, heartbeat_secs: u16) -> lapin::Result<Connection> {
    let url = with_default(url, "heartbeat", heartbeat_secs.into());
    let url = with_default(&url, "frame_max", FRAME_MAX);
    let props = ConnectionProperties::default().with_connection_name("herald".into());
    Connection::connect(&url, props).await
}

/// Adds `key=value` to an AMQP URL's query unless it has that key.
fn with_default(url: &str, key: &str, value: u32) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(key))
    {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// Reads a header as text.
pub fn header_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads a header as an unsigned number.
pub fn header_u64(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    match headers?.inner().get(name)? {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

/// Adds a text header.
pub fn put_str(table: &mut FieldTable, name: &str, value: &str) {
    table.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
}

/// Adds a number header.
pub fn put_u64(table: &mut FieldTable, name: &str, value: u64) {
    table.insert(
        ShortString::from(name),
        AMQPValue::LongLongInt(value as i64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_default_is_added_once() {
        let cases = [
            ("amqp://h/%2f", "heartbeat", "amqp://h/%2f?heartbeat=10"),
            ("amqp://h/?x=1", "heartbeat", "amqp://h/?x=1&heartbeat=10"),
            (
                "amqp://h/?heartbeat=3",
                "heartbeat",
                "amqp://h/?heartbeat=3",
            ),
            // A key that merely ends like another is not that key.
            (
                "amqp://h/?x_heartbeat=1",
                "heartbeat",
                "amqp://h/?x_heartbeat=1&heartbeat=10",
            ),
            (
                "amqp://h/?x=1&heartbeat=3",
                "heartbeat",
                "amqp://h/?x=1&heartbeat=3",
            ),
        ];
        for (url, key, want) in cases {
            assert_eq!(with_default(url, key, 10), want, "{url}");
        }
    }

    #[test]
    fn headers_round_trip() {
        let mut t = FieldTable::default();
        put_str(&mut t, "a", "x");
        put_u64(&mut t, "n", 3);
        assert_eq!(header_str(Some(&t), "a"), Some("x"));
        assert_eq!(header_u64(Some(&t), "n"), Some(3));
        assert_eq!(header_u64(Some(&t), "missing"), None);
    }
}
