//! The broker edge: topology, consumers and the confirmed publisher, over
//! lapin.

pub mod acks;
pub mod consumer;
pub mod link;
pub mod publisher;
pub mod topology;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};

/// Connects with herald's client name and the configured heartbeat.
pub async fn connect(url: &str, heartbeat_secs: u16) -> lapin::Result<Connection> {
    let url = with_heartbeat(url, heartbeat_secs);
    let props = ConnectionProperties::default().with_connection_name("herald".into());
    Connection::connect(&url, props).await
}

/// Adds `heartbeat=N` to an AMQP URL unless it has one.
fn with_heartbeat(url: &str, secs: u16) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}heartbeat={secs}")
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
    fn heartbeat_is_added_once() {
        assert_eq!(
            with_heartbeat("amqp://h/%2f", 10),
            "amqp://h/%2f?heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/?x=1", 10),
            "amqp://h/?x=1&heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/?heartbeat=3", 10),
            "amqp://h/?heartbeat=3"
        );
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
