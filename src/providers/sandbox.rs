//! `SandboxClient`: a provider that sends nothing. Each accepted message is
//! appended as one JSON line to a ledger file (recipient masked) and kept in
//! a bounded in-memory ledger; the answer is a receipt with a made-up id in
//! the provider's format. Twilio's test magic numbers fail the way Twilio's
//! test credentials do, so failure paths can be exercised without a provider.
//!
//! Each line is one `write` on a file opened for append, made while the
//! future is polled: a few microseconds against the page cache, so it is not
//! worth a trip through `spawn_blocking`. Several clients (one per channel)
//! may share one file: appends of a single line do not interleave.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::{BoxFuture, FutureExt};
use herald_actors::mask;
use herald_actors::model::{Channel, FailureKind, Outbound, ProviderClient, Receipt, SendError};

use super::SetupError;

/// How many accepted messages [`SandboxClient::sent`] remembers; older ones
/// are only in the ledger file. Bounded because sandbox is the default mode
/// and may run for weeks.
pub const LEDGER_CAPACITY: usize = 10_000;

/// Twilio test magic number: `To` is not a valid phone number (21211).
pub const MAGIC_INVALID_NUMBER: &str = "+15005550001";
/// Twilio test magic number: the recipient has unsubscribed (21610).
pub const MAGIC_UNSUBSCRIBED: &str = "+15005550004";

/// A simulated provider for one channel.
#[derive(Clone)]
pub struct SandboxClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Decides the id format, the masking and the magic numbers.
    channel: Channel,
    /// The ledger file, for `Debug` and [`SandboxClient::path`].
    path: PathBuf,
    /// The ledger file, opened for append (reopened on the next send if a
    /// write ever had to drop it); the lock keeps lines whole.
    file: Mutex<Option<File>>,
    /// The most recent accepted messages, oldest first.
    recent: Mutex<VecDeque<Outbound>>,
    /// Every message accepted since start.
    total: AtomicU64,
}

impl SandboxClient {
    /// A sandbox for `channel` that appends to `path`, creating the file
    /// and its parent directories now, so an unwritable path fails at start.
    pub fn new(channel: Channel, path: impl Into<PathBuf>) -> Result<SandboxClient, SetupError> {
        let path = path.into();
        let file = open_ledger(&path).map_err(|source| SetupError::Ledger {
            path: path.display().to_string(),
            source,
        })?;
        Ok(SandboxClient::with_file(channel, path, Some(file)))
    }

    fn with_file(channel: Channel, path: PathBuf, file: Option<File>) -> SandboxClient {
        SandboxClient {
            inner: Arc::new(Inner {
                channel,
                path,
                file: Mutex::new(file),
                recent: Mutex::new(VecDeque::new()),
                total: AtomicU64::new(0),
            }),
        }
    }

    pub fn channel(&self) -> Channel {
        self.inner.channel
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The accepted messages, oldest first (the last [`LEDGER_CAPACITY`]).
    pub fn sent(&self) -> Vec<Outbound> {
        lock(&self.inner.recent).iter().cloned().collect()
    }

    /// How many messages were accepted since start.
    pub fn sent_count(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    fn send_now(&self, msg: Outbound) -> Result<Receipt, SendError> {
        let inner = &*self.inner;
        if inner.channel == Channel::Sms {
            if let Some(err) = magic_number(&msg.to) {
                return Err(err);
            }
        }
        let provider_id = match inner.channel {
            Channel::Sms => twilio_message_sid(),
            Channel::Email => uuid_v4(),
        };
        let to = mask::address(inner.channel, &msg.to);
        let record = serde_json::json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "channel": inner.channel.as_str(),
            "to": to,
            "subject": msg.subject,
            "body": msg.body,
            "event_id": &*msg.idempotency_key,
            "provider_id": provider_id,
        });
        let mut line = record.to_string();
        line.push('\n');
        append(&inner.path, &mut lock(&inner.file), line.as_bytes()).map_err(|e| {
            SendError::new(
                FailureKind::ProviderError,
                format!("sandbox: cannot append to the ledger: {}", e.kind()),
            )
        })?;

        let mut recent = lock(&inner.recent);
        if recent.len() >= LEDGER_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(msg);
        drop(recent);
        inner.total.fetch_add(1, Ordering::Relaxed);
        Ok(Receipt { provider_id })
    }
}

/// Creates the parent directories and opens the ledger for append.
fn open_ledger(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends one line, opening the file first if that has not worked yet.
fn append(path: &Path, file: &mut Option<File>, line: &[u8]) -> std::io::Result<()> {
    if file.is_none() {
        *file = Some(open_ledger(path)?);
    }
    let result = match file {
        Some(f) => f.write_all(line),
        None => Ok(()),
    };
    if result.is_err() {
        // Reopen next time: the file may have been moved or its disk fixed.
        *file = None;
    }
    result
}

/// The failure Twilio's test credentials give for a magic `To` number.
fn magic_number(to: &str) -> Option<SendError> {
    let (kind, code, text) = match to {
        MAGIC_INVALID_NUMBER => (
            FailureKind::InvalidRecipient,
            21211,
            "the 'To' number is not a valid phone number",
        ),
        MAGIC_UNSUBSCRIBED => (
            FailureKind::Unsubscribed,
            21610,
            "attempt to send to unsubscribed recipient",
        ),
        _ => return None,
    };
    Some(SendError {
        kind,
        status: Some(400),
        code: Some(code),
        detail: format!("sandbox http 400 code {code}: {text}"),
        retry_after: None,
    })
}

/// A Twilio-shaped message SID: `SM` and 32 lowercase hex digits.
pub(crate) fn twilio_message_sid() -> String {
    format!("SM{:032x}", rand::random::<u128>())
}

/// A random (version 4) UUID, as Resend's email ids are.
pub(crate) fn uuid_v4() -> String {
    let n = (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing done under these locks can leave the data half-written.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProviderClient for SandboxClient {
    fn send(&self, msg: Outbound) -> BoxFuture<'static, Result<Receipt, SendError>> {
        let this = self.clone();
        async move { this.send_now(msg) }.boxed()
    }
}

impl fmt::Debug for SandboxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxClient")
            .field("channel", &self.inner.channel)
            .field("path", &self.inner.path)
            .field("sent_count", &self.sent_count())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn outbound(channel: Channel, to: &str) -> Outbound {
        Outbound {
            channel,
            idempotency_key: Arc::from("evt-1"),
            to: to.to_owned(),
            to_name: None,
            subject: if channel == Channel::Email {
                "Hi".into()
            } else {
                String::new()
            },
            body: "Reminder: bill due".into(),
        }
    }

    #[actix_rt::test]
    async fn records_sends_and_mimics_magic_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/sandbox.jsonl");
        let sms = SandboxClient::new(Channel::Sms, &path).unwrap();
        let email = SandboxClient::new(Channel::Email, &path).unwrap();

        let r = sms
            .send(outbound(Channel::Sms, "+15551234567"))
            .await
            .unwrap();
        assert!(
            r.provider_id.starts_with("SM") && r.provider_id.len() == 34,
            "{r:?}"
        );
        let r = email
            .send(outbound(Channel::Email, "jane@example.com"))
            .await
            .unwrap();
        assert_eq!(r.provider_id.len(), 36);
        assert_eq!(&r.provider_id[14..15], "4");

        let e = sms
            .send(outbound(Channel::Sms, MAGIC_INVALID_NUMBER))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.code),
            (FailureKind::InvalidRecipient, Some(21211))
        );
        let e = sms
            .send(outbound(Channel::Sms, MAGIC_UNSUBSCRIBED))
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.code), (FailureKind::Unsubscribed, Some(21610)));

        assert_eq!(sms.sent().len(), 1);
        assert_eq!(email.sent()[0].to, "jane@example.com");

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["channel"], "sms");
        assert_eq!(lines[0]["to"], "+1555***4567");
        assert_eq!(lines[0]["event_id"], "evt-1");
        assert_eq!(lines[1]["to"], "j***@example.com");
        assert_eq!(lines[1]["subject"], "Hi");
        assert!(!text.contains("15551234567") && !text.contains("jane@"));
    }
}
