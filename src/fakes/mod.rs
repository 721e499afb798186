//! Fake Twilio and Resend servers on `127.0.0.1:0`, speaking the real wire
//! formats (see `../shared/contracts/`). Integration tests point the real
//! clients at them, and `herald bench` uses them as providers that answer in
//! microseconds (or with the latency and error rate it asks for).
//!
//! - [`FakeTwilio`]: `POST /2010-04-01/Accounts/{sid}/Messages.json`.
//! - [`FakeResend`]: `POST /emails`, with `Idempotency-Key`.
//!
//! Each fake runs an actix-web server (one worker) under its own actix
//! `System` on a dedicated thread, so it works the same from
//! `#[actix_rt::test]`, `#[tokio::test]` or plain code, and keeps two
//! ledgers: every request as received ([`RecordedRequest`]) and every
//! message accepted ([`SentMessage`], what a real provider would deliver).
//!
//! Behaviour is programmable per recipient ([`FakeTwilio::script_for`]),
//! by default response, latency and a seeded error rate.

pub mod callbacks;
mod resend;
mod twilio;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use resend::FakeResend;
pub use twilio::FakeTwilio;

/// The credentials the fakes are started with in the tests and the bench
/// (and a `herald run` child is given to reach them).
pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "test-auth-token";
pub const RESEND_KEY: &str = "re_test_key";

/// One request as the fake received it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Header names lowercased; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body, parsed by its content type.
    pub body: RecordedBody,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// A form field (the first, if repeated); `None` for non-form bodies.
    pub fn form_value(&self, name: &str) -> Option<&str> {
        match &self.body {
            RecordedBody::Form(fields) => fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    /// The JSON body, if it was JSON.
    pub fn json(&self) -> Option<&serde_json::Value> {
        match &self.body {
            RecordedBody::Json(v) => Some(v),
            _ => None,
        }
    }
}

/// A request body, parsed by its `Content-Type`.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordedBody {
    Empty,
    /// `application/x-www-form-urlencoded`, fields in order.
    Form(Vec<(String, String)>),
    /// `application/json` that parsed.
    Json(serde_json::Value),
    /// Anything else, lossily as UTF-8.
    Other(String),
}

/// A message the fake accepted: what a real provider would deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    /// The `To` number, or the email recipients joined with `, `.
    pub to: String,
    /// Email subject; `None` for SMS.
    pub subject: Option<String>,
    /// The SMS body, or the email's text (else HTML) part.
    pub body: String,
    /// The id the fake answered with (`SM…` or a UUID).
    pub id: String,
    /// When its request arrived (before any latency the fake adds).
    pub received_at: SystemTime,
}

/// What a fake answers one request with.
#[derive(Clone, Debug, PartialEq)]
pub enum FakeResponse {
    /// Accept the message (Twilio 201, Resend 200).
    Ok,
    /// A Twilio error body with this HTTP status and code (on the Resend
    /// fake: a generic Resend error with this status).
    TwilioError { status: u16, code: i64 },
    /// A Resend error body with this status and `name` (on the Twilio fake:
    /// a generic Twilio error with this status).
    ResendError { status: u16, name: String },
    /// A generic error in the provider's format with this status (a 2xx
    /// status accepts the message).
    Status(u16),
    /// 429 with `Retry-After` (and Resend's `ratelimit-*` headers).
    TooManyRequests { retry_after_secs: u64 },
    /// Wait this long, then answer with `then`.
    Delayed {
        delay: Duration,
        then: Box<FakeResponse>,
    },
}

/// The programmable part of a fake, shared by both.
struct Behaviour {
    /// Responses queued per recipient (lowercased), consumed in order.
    scripts: HashMap<String, VecDeque<FakeResponse>>,
    /// The answer when no script, magic number or random error applies.
    default: FakeResponse,
    /// Added before every answer.
    latency: Duration,
    /// Chance (0..1) that an unscripted request gets a 500.
    error_rate: f64,
    /// Draws the random errors, seeded for repeatable runs.
    rng: StdRng,
    /// Whether to keep every request in the request ledger.
    record_requests: bool,
    /// How many requests the error rate has answered with a 500.
    random_errors: usize,
}

impl Behaviour {
    fn new() -> Behaviour {
        Behaviour {
            scripts: HashMap::new(),
            default: FakeResponse::Ok,
            latency: Duration::ZERO,
            error_rate: 0.0,
            rng: StdRng::seed_from_u64(0),
            record_requests: true,
            random_errors: 0,
        }
    }

    /// The answer for one request to `to`: its script first, then the
    /// provider's magic numbers, then the random error rate, then the default.
    fn choose(
        &mut self,
        to: &str,
        magic: impl Fn(&str) -> Option<FakeResponse>,
    ) -> (FakeResponse, Duration) {
        let key = to.to_ascii_lowercase();
        let scripted = match self.scripts.get_mut(&key) {
            Some(queue) => {
                let next = queue.pop_front();
                if queue.is_empty() {
                    self.scripts.remove(&key);
                }
                next
            }
            None => None,
        };
        let response = scripted
            .or_else(|| magic(to))
            .or_else(|| {
                let error = self.error_rate > 0.0 && self.rng.random::<f64>() < self.error_rate;
                self.random_errors += usize::from(error);
                error.then_some(FakeResponse::Status(500))
            })
            .unwrap_or_else(|| self.default.clone());
        (response, self.latency)
    }
}

/// State and knobs both fakes share.
struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<RecordedRequest>>,
    sent: Mutex<Vec<SentMessage>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            behaviour: Mutex::new(Behaviour::new()),
            requests: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
        }
    }

    fn script_for(&self, to: &str, responses: Vec<FakeResponse>) {
        let mut b = lock(&self.behaviour);
        let queue = b.scripts.entry(to.to_ascii_lowercase()).or_default();
        queue.extend(responses);
        if queue.is_empty() {
            b.scripts.remove(&to.to_ascii_lowercase());
        }
    }

    fn set_default(&self, response: FakeResponse) {
        lock(&self.behaviour).default = response;
    }

    fn set_latency(&self, latency: Duration) {
        lock(&self.behaviour).latency = latency;
    }

    fn set_error_rate(&self, rate: f64, seed: u64) {
        let mut b = lock(&self.behaviour);
        b.error_rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        b.rng = StdRng::seed_from_u64(seed);
    }

    fn set_record_requests(&self, on: bool) {
        lock(&self.behaviour).record_requests = on;
    }

    fn random_errors(&self) -> usize {
        lock(&self.behaviour).random_errors
    }

    fn record(&self, req: &HttpRequest, body: &[u8], received_at: SystemTime) {
        if !lock(&self.behaviour).record_requests {
            return;
        }
        let recorded = record_request(req, body, received_at);
        lock(&self.requests).push(recorded);
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    fn request_count(&self) -> usize {
        lock(&self.requests).len()
    }

    fn push_sent(&self, message: SentMessage) {
        lock(&self.sent).push(message);
    }

    fn sent(&self) -> Vec<SentMessage> {
        lock(&self.sent).clone()
    }

    fn sent_count(&self) -> usize {
        lock(&self.sent).len()
    }

    fn clear(&self) {
        lock(&self.requests).clear();
        lock(&self.sent).clear();
    }
}

/// Builds the ledger entry for one request.
fn record_request(req: &HttpRequest, body: &[u8], received_at: SystemTime) -> RecordedRequest {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_default();
    let body = if body.is_empty() {
        RecordedBody::Empty
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        RecordedBody::Form(parse_form(body))
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(body)
            .map(RecordedBody::Json)
            .unwrap_or_else(|_| RecordedBody::Other(String::from_utf8_lossy(body).into_owned()))
    } else {
        RecordedBody::Other(String::from_utf8_lossy(body).into_owned())
    };
    RecordedRequest {
        method: req.method().as_str().to_owned(),
        path: req.path().to_owned(),
        headers,
        body,
        received_at,
    }
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing done under these locks can leave the data half-written.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An actix-web server on `127.0.0.1:0`, run by its own actix `System` on
/// its own thread; stopped (and the thread joined) on drop.
struct ServerThread {
    /// `http://127.0.0.1:PORT`.
    base_url: String,
    /// Stops the server; the thread then ends.
    handle: ServerHandle,
    /// Joined on stop so the port is free and no thread outlives the fake.
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    fn start<F>(name: &str, configure: F) -> io::Result<ServerThread>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        // Bound here so the port is known (and connections queue in the
        // backlog) before the server thread is even scheduled.
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<ServerHandle>>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let server = HttpServer::new(move || App::new().configure(configure.clone()))
                        .workers(1)
                        .disable_signals()
                        .shutdown_timeout(1)
                        .listen(listener);
                    let server = match server {
                        Ok(server) => server.run(),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(server.handle()));
                    let _ = server.await;
                });
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("fake server thread ended before starting"))??;
        Ok(ServerThread {
            base_url,
            handle,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The stop command is sent when `stop` is called; the returned
            // future only waits for it, and the thread join does that.
            drop(self.handle.stop(false));
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The methods both fakes share, written once.
macro_rules! fake_common_methods {
    () => {
        /// `http://127.0.0.1:PORT`: the base URL to give a client.
        pub fn base_url(&self) -> String {
            self.server.base_url.clone()
        }

        /// Every request received (unless recording was turned off).
        pub fn requests(&self) -> Vec<$crate::fakes::RecordedRequest> {
            self.shared.requests()
        }

        /// How many requests the request ledger holds.
        pub fn request_count(&self) -> usize {
            self.shared.request_count()
        }

        /// The messages accepted, in order.
        pub fn sent(&self) -> Vec<$crate::fakes::SentMessage> {
            self.shared.sent()
        }

        /// How many messages were accepted.
        pub fn sent_count(&self) -> usize {
            self.shared.sent_count()
        }

        /// The next requests for `to` get these responses in order; then the
        /// normal behaviour (magic numbers, error rate, default) resumes.
        pub fn script_for(&self, to: &str, responses: Vec<$crate::fakes::FakeResponse>) {
            self.shared.script_for(to, responses);
        }

        /// The answer for requests nothing else decides (initially `Ok`).
        pub fn set_default(&self, response: $crate::fakes::FakeResponse) {
            self.shared.set_default(response);
        }

        /// A delay before every answer (initially none).
        pub fn set_latency(&self, latency: std::time::Duration) {
            self.shared.set_latency(latency);
        }

        /// Answer this share (0..1) of unscripted requests with a 500,
        /// drawn from a generator seeded with `seed`.
        pub fn set_error_rate(&self, rate: f64, seed: u64) {
            self.shared.set_error_rate(rate, seed);
        }

        /// How many requests [`Self::set_error_rate`] has answered with a 500.
        pub fn random_errors(&self) -> usize {
            self.shared.random_errors()
        }

        /// Whether to keep every request in [`Self::requests`] (default on;
        /// turn off for long benchmarks). Accepted messages are always kept.
        pub fn set_record_requests(&self, on: bool) {
            self.shared.set_record_requests(on);
        }

        /// Empties both ledgers.
        pub fn clear(&self) {
            self.shared.clear();
        }

        /// Stops the server and joins its thread (dropping does the same).
        pub fn stop(self) {
            drop(self);
        }
    };
}
pub(crate) use fake_common_methods;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_then_magic_then_default() {
        let mut b = Behaviour::new();
        b.scripts
            .insert("+1".into(), VecDeque::from([FakeResponse::Status(500)]));
        let magic = |to: &str| (to == "+2").then_some(FakeResponse::Status(400));
        assert_eq!(b.choose("+1", magic).0, FakeResponse::Status(500));
        assert_eq!(b.choose("+1", magic).0, FakeResponse::Ok);
        assert_eq!(b.choose("+2", magic).0, FakeResponse::Status(400));
        b.default = FakeResponse::Status(503);
        assert_eq!(b.choose("+3", magic).0, FakeResponse::Status(503));
    }

    #[test]
    fn error_rate_is_seeded() {
        let run = |seed| {
            let mut b = Behaviour::new();
            b.error_rate = 0.3;
            b.rng = StdRng::seed_from_u64(seed);
            (0..1000)
                .filter(|_| b.choose("+1", |_| None).0 != FakeResponse::Ok)
                .count()
        };
        assert_eq!(run(7), run(7));
        assert!((200..400).contains(&run(7)), "{}", run(7));
    }
}
