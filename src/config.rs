//! herald's configuration: the TOML file, the environment overrides, and the
//! checks behind `herald check-config`. The reference for every key is
//! `docs/specs/config.md`.
//!
//! # Unknown keys, and reporting every problem in one run
//!
//! STYLE.md asks for `#[serde(deny_unknown_fields)]`, but serde stops at the
//! first error, while `herald check-config` must print *every* problem, each
//! with its key path, in one run. So no struct here uses
//! `deny_unknown_fields`. Instead the document is deserialized through
//! [`serde_ignored::deserialize`], which calls back with the path of every
//! key serde skipped; each one becomes the problem `<path>: unknown key`.
//! Then [`Config::validate`] collects every semantic problem (again with its
//! key path) instead of returning on the first. The effect is the same as
//! `deny_unknown_fields` — a config with an unknown key never loads — but the
//! operator sees everything at once.
//!
//! Errors serde itself raises (a string where a number belongs, a missing
//! required field, an unknown channel name) still stop deserialization. Each
//! is reported as one problem, with the key path recovered from the error's
//! position in the document.
//!
//! Semantic values serde could reject itself are deliberately typed loosely so
//! that `validate` reports them with their path instead: `channel` is an
//! `Option` (a missing one is `classes.X.channel: missing`) and rate limits are
//! `i64` (a negative one is `...rate_limit.sms: must be >= 0, got -5`).
//!
//! # Secrets
//!
//! `providers.twilio.account_sid`, `providers.twilio.auth_token`,
//! `providers.resend.api_key`, `providers.resend.webhook_secret` and
//! `admin_token` are `#[serde(skip)]`: they
//! come only from the environment, and putting one in the file is reported as
//! an unknown key naming the variable to use. `Debug` prints them as
//! `Some("***")`, and masks the password in any URL.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveTime;
use chrono_tz::Tz;
use herald_actors::model::Channel;
use serde::Deserialize;

/// The config file used when neither `--config` nor `HERALD_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/herald.toml";

/// The shipped config, compiled in: used when [`DEFAULT_CONFIG_PATH`] does
/// not exist, so `herald run` works from any directory.
pub const SHIPPED_CONFIG: &str = include_str!("../config/herald.toml");

/// The environment variable naming the config file.
pub const CONFIG_PATH_ENV: &str = "HERALD_CONFIG";

/// Every environment override: the variable and the key path it replaces.
/// Secrets (`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`, `RESEND_API_KEY`,
/// `HERALD_ADMIN_TOKEN`) can only be set this way.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("HERALD_AMQP_URL", "amqp.url"),
    ("HERALD_HTTP_ADDR", "http.addr"),
    ("HERALD_PROVIDER_MODE", "providers.mode"),
    ("HERALD_STORE_URL", "store.url"),
    ("HERALD_REDIS_URL", "redis_url"),
    ("HERALD_ADMIN_TOKEN", "admin_token"),
    ("HERALD_PUBLIC_URL", "public_url"),
    ("TWILIO_ACCOUNT_SID", "providers.twilio.account_sid"),
    ("TWILIO_AUTH_TOKEN", "providers.twilio.auth_token"),
    ("TWILIO_PHONE_NUMBER", "providers.twilio.from"),
    ("TWILIO_BASE_URL", "providers.twilio.base_url"),
    ("RESEND_API_KEY", "providers.resend.api_key"),
    ("RESEND_FROM", "providers.resend.from"),
    ("RESEND_BASE_URL", "providers.resend.base_url"),
    ("RESEND_WEBHOOK_SECRET", "providers.resend.webhook_secret"),
];

/// The key paths that may only come from the environment, and their variable.
const ENV_ONLY: &[(&str, &str)] = &[
    ("admin_token", "HERALD_ADMIN_TOKEN"),
    ("providers.twilio.account_sid", "TWILIO_ACCOUNT_SID"),
    ("providers.twilio.auth_token", "TWILIO_AUTH_TOKEN"),
    ("providers.resend.api_key", "RESEND_API_KEY"),
    ("providers.resend.webhook_secret", "RESEND_WEBHOOK_SECRET"),
];

/// Most retries a class may ask for: beyond this, backoff delays reach days.
pub const MAX_RETRIES: u32 = 20;
/// A provider call must end well before RabbitMQ's default consumer timeout
/// (30 min), or the broker closes the channel of a delivery still held.
pub const MAX_PROVIDER_TIMEOUT_SECS: f64 = 600.0;

/// Longest class or template name. Class names become queue names
/// (`herald.<class>` plus suffixes, at most 255 bytes) and metric labels.
pub const MAX_NAME_LEN: usize = 64;

/// The whole configuration, validated.
#[derive(Clone, Deserialize)]
pub struct Config {
    /// The broker events come in through.
    #[serde(default)]
    pub amqp: AmqpConfig,
    /// The one HTTP listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where delivery records live.
    #[serde(default)]
    pub store: StoreConfig,
    /// Twilio, Resend, and whether they are really called.
    #[serde(default)]
    pub providers: ProvidersConfig,
    /// The SMS quiet-hours window.
    #[serde(default)]
    pub quiet_hours: QuietHoursConfig,
    /// Actor health checks.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// Named templates an event may refer to instead of carrying its text.
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateConfig>,
    /// The message classes, by name (the routing key).
    #[serde(default)]
    pub classes: BTreeMap<String, ClassConfig>,
    /// Recurring events (`[[schedules]]`), as Celery beat published them.
    #[serde(default)]
    pub schedules: Vec<ScheduleConfig>,
    /// Bearer token for `/api`; `None` refuses every `/api` call.
    /// Environment only (`HERALD_ADMIN_TOKEN`).
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// The URL providers call back on; webhook signatures are computed over it.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Redis for rate-limit state shared by several instances; `None` keeps
    /// limits in-process.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// How limits are shared among instances.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `[limits]`: sharing the rate limits among herald instances.
#[derive(Clone, Debug, Deserialize)]
pub struct LimitsConfig {
    /// herald instances sharing the limits through `redis_url`. While Redis
    /// is unreachable each instance keeps `1/instances` of every limit, so
    /// the fleet stays within it. Unused without `redis_url`.
    #[serde(default = "default_instances")]
    pub instances: u32,
}

/// `[amqp]`: the broker.
#[derive(Clone, Deserialize)]
pub struct AmqpConfig {
    /// `amqp://` or `amqps://` URL.
    #[serde(default = "default_amqp_url")]
    pub url: String,
    /// Unacknowledged deliveries each class queue's consumer may hold.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// AMQP heartbeat interval; 0 turns heartbeats off.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u16,
    /// How often queue depths are polled for `herald_queue_messages`.
    #[serde(default = "default_queue_poll_secs")]
    pub queue_poll_secs: f64,
}

/// `[http]`: the one HTTP listener.
#[derive(Clone, Debug, Deserialize)]
pub struct HttpConfig {
    /// A socket address, `IP:port`.
    #[serde(default = "default_http_addr")]
    pub addr: String,
}

/// `[store]`: the delivery store.
#[derive(Clone, Deserialize)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...` (`postgresql://` also accepted).
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Delivered (`sent`) records are deleted this many days after they finished.
    #[serde(default = "default_retention_delivered_days")]
    pub retention_delivered_days: u32,
    /// Failed records (dead-lettered, suppressed, outcome unknown) are
    /// deleted this many days after they finished.
    #[serde(default = "default_retention_failed_days")]
    pub retention_failed_days: u32,
    /// How often the retention clean-up runs.
    #[serde(default = "default_retention_interval_secs")]
    pub retention_interval_secs: f64,
    /// Rows deleted per statement by the clean-up.
    #[serde(default = "default_retention_batch")]
    pub retention_batch: u32,
}

/// `[providers]`: the provider clients.
#[derive(Clone, Debug, Deserialize)]
pub struct ProvidersConfig {
    /// Simulate sends (`sandbox`) or call the providers (`live`).
    #[serde(default)]
    pub mode: ProviderMode,
    /// Where sandbox mode appends the messages it would have sent (JSON lines).
    #[serde(default = "default_sandbox_outbox")]
    pub sandbox_outbox: String,
    /// `[providers.twilio]`.
    #[serde(default)]
    pub twilio: TwilioConfig,
    /// `[providers.resend]`.
    #[serde(default)]
    pub resend: ResendConfig,
}

/// Whether sends are simulated or real.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderMode {
    /// Nothing leaves the machine: every send is accepted and recorded in the
    /// sandbox outbox.
    #[default]
    Sandbox,
    /// Real Twilio and Resend calls.
    Live,
}

impl ProviderMode {
    /// The name used in the config file and `HERALD_PROVIDER_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderMode::Sandbox => "sandbox",
            ProviderMode::Live => "live",
        }
    }

    /// Parses `sandbox` or `live` (case-insensitive, surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<ProviderMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sandbox" => Some(ProviderMode::Sandbox),
            "live" => Some(ProviderMode::Live),
            _ => None,
        }
    }
}

impl fmt::Display for ProviderMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[providers.twilio]`: the SMS provider.
#[derive(Clone, Deserialize)]
pub struct TwilioConfig {
    /// API root: `https://api.twilio.com`, a regional edge, a proxy or a fake.
    #[serde(default = "default_twilio_base_url")]
    pub base_url: String,
    /// `AC…`; environment only (`TWILIO_ACCOUNT_SID`).
    #[serde(skip)]
    pub account_sid: Option<String>,
    /// Environment only (`TWILIO_AUTH_TOKEN`).
    #[serde(skip)]
    pub auth_token: Option<String>,
    /// Sender: E.164 number or Messaging Service SID (`MG…`).
    #[serde(default)]
    pub from: Option<String>,
    /// Most requests in flight at once.
    #[serde(default = "default_twilio_max_concurrency")]
    pub max_concurrency: u32,
    /// Requests per second, account-wide (all classes together).
    #[serde(default = "default_twilio_rate_per_sec")]
    pub rate_per_sec: f64,
    /// Per-request timeout.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// Cost of one SMS segment, for `herald_cost_usd_total`.
    #[serde(default = "default_cost_per_segment_usd")]
    pub cost_per_segment_usd: f64,
}

/// `[providers.resend]`: the email provider.
#[derive(Clone, Deserialize)]
pub struct ResendConfig {
    /// API root: `https://api.resend.com`, a proxy or a fake.
    #[serde(default = "default_resend_base_url")]
    pub base_url: String,
    /// Environment only (`RESEND_API_KEY`).
    #[serde(skip)]
    pub api_key: Option<String>,
    /// The Svix signing secret of Resend's webhooks (`whsec_...`).
    /// Environment only (`RESEND_WEBHOOK_SECRET`); without it
    /// `/webhooks/resend` refuses every request.
    #[serde(skip)]
    pub webhook_secret: Option<String>,
    /// Sender address, optionally with a name (`Herald <n@example.com>`).
    #[serde(default)]
    pub from: Option<String>,
    /// Most requests in flight at once.
    #[serde(default = "default_resend_max_concurrency")]
    pub max_concurrency: u32,
    /// Requests per second, team-wide (Resend's default limit is 2).
    #[serde(default = "default_resend_rate_per_sec")]
    pub rate_per_sec: f64,
    /// Per-request timeout.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// Cost of one email, for `herald_cost_usd_total`.
    #[serde(default = "default_cost_per_message_usd")]
    pub cost_per_message_usd: f64,
}

/// `[quiet_hours]`: the window in which SMS to a recipient is held.
#[derive(Clone, Debug, Deserialize)]
pub struct QuietHoursConfig {
    /// Hold SMS inside the window (`false`: never; for benchmarks and tests
    /// that must not depend on the time of day).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `HH:MM`, recipient's local time.
    #[serde(default = "default_quiet_start")]
    pub start: String,
    /// `HH:MM`; may be earlier than `start` (the window wraps past midnight).
    #[serde(default = "default_quiet_end")]
    pub end: String,
    /// IANA zone for recipients without `to.timezone`.
    #[serde(default = "default_timezone")]
    pub default_timezone: String,
}

/// `[supervisor]`: actor health checks.
#[derive(Clone, Debug, Deserialize)]
pub struct SupervisorConfig {
    /// How often each actor is pinged.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long an actor may take to answer a ping before it is restarted.
    #[serde(default = "default_ping_timeout_ms")]
    pub ping_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long open sends may take to finish before the
    /// rest is returned to the broker and herald exits.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: f64,
}

/// `[templates.NAME]`: a named template.
#[derive(Clone, Debug, Deserialize)]
pub struct TemplateConfig {
    /// The SMS text or email body, with `{placeholders}`.
    pub body: String,
    /// Email subject, with `{placeholders}`.
    #[serde(default)]
    pub subject: Option<String>,
}

/// `[classes.NAME]`: one message class.
#[derive(Clone, Debug, Deserialize)]
pub struct ClassConfig {
    /// 1 (most urgent) ..= 10: who gets a shared provider's capacity first.
    pub priority: u8,
    /// Where the message goes first. Always `Some` once validated; use
    /// [`ClassConfig::channel`].
    #[serde(default)]
    pub channel: Option<Channel>,
    /// The other channel, tried when the first fails for good.
    #[serde(default)]
    pub fallback: Option<Channel>,
    /// Sends per minute on each channel.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Retries after the first attempt.
    pub retries: u32,
    /// First retry delay; doubles per retry, with jitter.
    pub base_delay_secs: f64,
    /// Cap on one retry delay.
    #[serde(default = "default_max_delay_secs")]
    pub max_delay_secs: f64,
    /// Send SMS even inside quiet hours.
    #[serde(default)]
    pub quiet_hours_exempt: bool,
    /// Default email subject when the event has none.
    #[serde(default)]
    pub subject: Option<String>,
    /// Default template (a named template or the text itself) for events
    /// that carry none.
    #[serde(default)]
    pub template: Option<String>,
    /// `"HH:MM"`: every event of the class is held until this time of day
    /// in the recipient's time zone (the next such time), as daily
    /// notifications are.
    #[serde(default)]
    pub deliver_at_local: Option<String>,
    /// `"HH:MM"`: the same on Saturdays and Sundays; `deliver_at_local`
    /// when unset.
    #[serde(default)]
    pub deliver_at_local_weekend: Option<String>,
    /// At most `max` sends per user of this class per rolling window; the
    /// rest are recorded `suppressed` with reason `frequency_cap`.
    #[serde(default)]
    pub frequency_cap: Option<FrequencyCapConfig>,
}

/// `[[schedules]]`: one recurring event.
#[derive(Clone, Debug, Deserialize)]
pub struct ScheduleConfig {
    /// `[a-z0-9_]+`; with the occurrence's time, the events' ids.
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), names and
    /// ranges allowed (`45 6 * * MON-FRI`).
    pub cron: String,
    /// The zone the pattern is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The class it is published to.
    pub class: String,
    /// The event, without `id` (herald sets it per occurrence).
    pub event: serde_json::Value,
}

impl ScheduleConfig {
    /// The pattern. Panics on an unvalidated config.
    pub fn parsed_cron(&self) -> croner::Cron {
        self.cron
            .parse()
            .expect("schedules.cron is checked by Config::validate")
    }

    /// The zone. Panics on an unvalidated config.
    pub fn tz(&self) -> Tz {
        self.timezone
            .parse()
            .expect("schedules.timezone is checked by Config::validate")
    }
}

/// `frequency_cap = { max = N, window_secs = S }`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct FrequencyCapConfig {
    pub max: u32,
    pub window_secs: f64,
}

impl ClassConfig {
    /// `(weekday, weekend)` local delivery times, if the class has them.
    /// Panics on an unvalidated config.
    pub fn local_delivery(&self) -> Option<(NaiveTime, NaiveTime)> {
        let weekday = parse_hhmm(self.deliver_at_local.as_deref()?)
            .expect("deliver_at_local is checked by Config::validate");
        let weekend = self
            .deliver_at_local_weekend
            .as_deref()
            .map_or(Some(weekday), parse_hhmm)
            .expect("deliver_at_local_weekend is checked by Config::validate");
        Some((weekday, weekend))
    }
}

/// `rate_limit = { sms = N, email = N }`: sends per minute; 0 = never.
/// `i64` so that a negative number reaches `validate` and is reported with its
/// key path instead of stopping deserialization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub sms: i64,
    #[serde(default)]
    pub email: i64,
}

// --- defaults -------------------------------------------------------------

fn default_amqp_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()
}
fn default_prefetch() -> u16 {
    64
}
fn default_heartbeat_secs() -> u16 {
    10
}
fn default_queue_poll_secs() -> f64 {
    5.0
}
fn default_http_addr() -> String {
    "127.0.0.1:9464".to_owned()
}
fn default_retention_delivered_days() -> u32 {
    90
}
fn default_retention_failed_days() -> u32 {
    30
}
fn default_retention_interval_secs() -> f64 {
    3600.0
}
fn default_retention_batch() -> u32 {
    1000
}
fn default_store_url() -> String {
    "sqlite://data/herald.db".to_owned()
}
fn default_sandbox_outbox() -> String {
    "data/sandbox-outbox.jsonl".to_owned()
}
fn default_twilio_base_url() -> String {
    "https://api.twilio.com".to_owned()
}
fn default_twilio_max_concurrency() -> u32 {
    16
}
fn default_twilio_rate_per_sec() -> f64 {
    100.0
}
fn default_timeout_secs() -> f64 {
    10.0
}
fn default_cost_per_segment_usd() -> f64 {
    0.0075
}
fn default_resend_base_url() -> String {
    "https://api.resend.com".to_owned()
}
fn default_resend_max_concurrency() -> u32 {
    8
}
fn default_resend_rate_per_sec() -> f64 {
    2.0
}
fn default_cost_per_message_usd() -> f64 {
    0.0001
}
fn default_true() -> bool {
    true
}
fn default_quiet_start() -> String {
    "21:00".to_owned()
}
fn default_quiet_end() -> String {
    "08:00".to_owned()
}
fn default_timezone() -> String {
    "UTC".to_owned()
}
fn default_shutdown_grace_secs() -> f64 {
    20.0
}
fn default_heartbeat_ms() -> u64 {
    500
}
fn default_ping_timeout_ms() -> u64 {
    5000
}
fn default_max_delay_secs() -> f64 {
    3600.0
}
fn default_instances() -> u32 {
    1
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: default_amqp_url(),
            prefetch: default_prefetch(),
            heartbeat_secs: default_heartbeat_secs(),
            queue_poll_secs: default_queue_poll_secs(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: default_http_addr(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
            retention_delivered_days: default_retention_delivered_days(),
            retention_failed_days: default_retention_failed_days(),
            retention_interval_secs: default_retention_interval_secs(),
            retention_batch: default_retention_batch(),
        }
    }
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        ProvidersConfig {
            mode: ProviderMode::default(),
            sandbox_outbox: default_sandbox_outbox(),
            twilio: TwilioConfig::default(),
            resend: ResendConfig::default(),
        }
    }
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            base_url: default_twilio_base_url(),
            account_sid: None,
            auth_token: None,
            from: None,
            max_concurrency: default_twilio_max_concurrency(),
            rate_per_sec: default_twilio_rate_per_sec(),
            timeout_secs: default_timeout_secs(),
            cost_per_segment_usd: default_cost_per_segment_usd(),
        }
    }
}

impl Default for ResendConfig {
    fn default() -> Self {
        ResendConfig {
            base_url: default_resend_base_url(),
            api_key: None,
            webhook_secret: None,
            from: None,
            max_concurrency: default_resend_max_concurrency(),
            rate_per_sec: default_resend_rate_per_sec(),
            timeout_secs: default_timeout_secs(),
            cost_per_message_usd: default_cost_per_message_usd(),
        }
    }
}

impl Default for QuietHoursConfig {
    fn default() -> Self {
        QuietHoursConfig {
            enabled: true,
            start: default_quiet_start(),
            end: default_quiet_end(),
            default_timezone: default_timezone(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            instances: default_instances(),
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            heartbeat_ms: default_heartbeat_ms(),
            ping_timeout_ms: default_ping_timeout_ms(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
        }
    }
}

// --- accessors for validated values ---------------------------------------

/// Seconds as a `Duration`; non-finite or negative values (rejected by
/// validation) become zero rather than panicking.
fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

impl AmqpConfig {
    /// `queue_poll_secs` as a `Duration`.
    pub fn queue_poll_interval(&self) -> Duration {
        secs(self.queue_poll_secs)
    }
}

impl TwilioConfig {
    /// `timeout_secs` as a `Duration`.
    pub fn timeout(&self) -> Duration {
        secs(self.timeout_secs)
    }
}

impl ResendConfig {
    /// `timeout_secs` as a `Duration`.
    pub fn timeout(&self) -> Duration {
        secs(self.timeout_secs)
    }
}

impl QuietHoursConfig {
    /// The window's start. Panics on an unvalidated config.
    pub fn start_time(&self) -> NaiveTime {
        parse_hhmm(&self.start).expect("quiet_hours.start is checked by Config::validate")
    }

    /// The window's end. Panics on an unvalidated config.
    pub fn end_time(&self) -> NaiveTime {
        parse_hhmm(&self.end).expect("quiet_hours.end is checked by Config::validate")
    }

    /// The zone for recipients without one. Panics on an unvalidated config.
    pub fn default_tz(&self) -> Tz {
        self.default_timezone
            .parse()
            .expect("quiet_hours.default_timezone is checked by Config::validate")
    }
}

impl SupervisorConfig {
    /// `heartbeat_ms` as a `Duration`.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// `ping_timeout_ms` as a `Duration`.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }
}

impl ClassConfig {
    /// The class's first channel. Panics on an unvalidated config (where it
    /// may be missing); every `Config` this module hands out is validated.
    pub fn channel(&self) -> Channel {
        self.channel
            .expect("classes.*.channel is checked by Config::validate")
    }

    /// Sends per minute allowed on `ch` (0 = never), clamped into `u32`.
    pub fn rate_per_min(&self, ch: Channel) -> u32 {
        let rate = match ch {
            Channel::Sms => self.rate_limit.sms,
            Channel::Email => self.rate_limit.email,
        };
        u32::try_from(rate.max(0)).unwrap_or(u32::MAX)
    }

    /// Whether the class sends on `ch`, as its channel or its fallback.
    pub fn uses(&self, ch: Channel) -> bool {
        self.channel == Some(ch) || self.fallback == Some(ch)
    }

    /// `base_delay_secs` as a `Duration`.
    pub fn base_delay(&self) -> Duration {
        secs(self.base_delay_secs)
    }

    /// `max_delay_secs` as a `Duration`.
    pub fn max_delay(&self) -> Duration {
        secs(self.max_delay_secs)
    }
}

// --- problems ---------------------------------------------------------------

/// One thing wrong with the configuration, at one key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`classes.payment_reminder.rate_limit.sms`), or
    /// `env.VAR` for a problem with an environment variable.
    pub path: String,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything wrong with a configuration; never empty. `Display` prints one
/// problem per line, which is what `herald check-config` shows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    fn single(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![Problem::new(path, message)],
        }
    }

    /// The key paths of all problems, in report order.
    pub fn paths(&self) -> Vec<&str> {
        self.problems.iter().map(|p| p.path.as_str()).collect()
    }
}

// --- loading ----------------------------------------------------------------

impl Config {
    /// Reads the file, applies environment overrides, validates. If `path`
    /// is [`DEFAULT_CONFIG_PATH`] and the file does not exist, uses
    /// [`SHIPPED_CONFIG`]; an explicit path that does not exist is a problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let is_default = path == Path::new(DEFAULT_CONFIG_PATH);
        let text = read_config_text(path, is_default)?;
        Config::from_toml_str(&text, &|name| std::env::var(name).ok())
    }

    /// What `herald check-config` runs: the same as [`Config::load`]. Print
    /// the error's `Display` (one problem per line) and exit 1 on `Err`.
    pub fn check(path: &Path) -> Result<Config, ConfigError> {
        Config::load(path)
    }

    /// Parses `text`, applies the overrides `env` returns, validates.
    /// `env` stands in for `std::env::var` so tests can inject variables.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigError::single("toml", syntax_message(text, &e)))?;

        let mut problems = Vec::new();
        let mut unknown = Vec::new();
        let parsed: Result<Config, toml::de::Error> =
            serde_ignored::deserialize(deserializer, |path| unknown.push(ignored_path(&path)));
        problems.extend(unknown.iter().map(|path| unknown_key(path)));
        let mut config = match parsed {
            Ok(config) => config,
            Err(e) => {
                problems.push(type_problem(text, &e));
                return Err(ConfigError { problems });
            }
        };

        let origins = config.apply_env(env, &mut problems);
        let mut checker = Checker {
            problems,
            origins: &origins,
        };
        config.check_all(&mut checker);
        if checker.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: checker.problems,
            })
        }
    }

    /// The shipped config with no environment: what tests and tools start
    /// from. Panics if the shipped file is invalid (a unit test guards it).
    pub fn shipped() -> Config {
        Config::from_toml_str(SHIPPED_CONFIG, &|_| None)
            .unwrap_or_else(|e| panic!("the shipped config is invalid:\n{e}"))
    }

    /// The path to use: `--config` if given, else `HERALD_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`].
    pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
        let env = std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from);
        resolve_path_from(cli, env)
    }

    /// Every semantic problem with this config (not unknown keys, which only
    /// the parser can see). Useful after changing a loaded config in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let origins = BTreeMap::new();
        let mut checker = Checker {
            problems: Vec::new(),
            origins: &origins,
        };
        self.check_all(&mut checker);
        if checker.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: checker.problems,
            })
        }
    }

    /// Applies the environment overrides; returns which key paths they set
    /// (so problems there name the variable).
    fn apply_env(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<Problem>,
    ) -> BTreeMap<&'static str, &'static str> {
        let mut origins = BTreeMap::new();
        let mut take = |var: &'static str, path: &'static str| -> Option<String> {
            let value = env(var)?.trim().to_owned();
            if value.is_empty() {
                return None;
            }
            origins.insert(path, var);
            Some(value)
        };

        if let Some(v) = take("HERALD_AMQP_URL", "amqp.url") {
            self.amqp.url = v;
        }
        if let Some(v) = take("HERALD_HTTP_ADDR", "http.addr") {
            self.http.addr = v;
        }
        if let Some(v) = take("HERALD_PROVIDER_MODE", "providers.mode") {
            match ProviderMode::parse(&v) {
                Some(mode) => self.providers.mode = mode,
                None => problems.push(Problem::new(
                    "env.HERALD_PROVIDER_MODE",
                    format!("must be \"sandbox\" or \"live\", got {v:?}"),
                )),
            }
        }
        if let Some(v) = take("HERALD_STORE_URL", "store.url") {
            self.store.url = v;
        }
        if let Some(v) = take("HERALD_REDIS_URL", "redis_url") {
            self.redis_url = Some(v);
        }
        if let Some(v) = take("HERALD_ADMIN_TOKEN", "admin_token") {
            self.admin_token = Some(v);
        }
        if let Some(v) = take("HERALD_PUBLIC_URL", "public_url") {
            self.public_url = Some(v);
        }
        let twilio = &mut self.providers.twilio;
        if let Some(v) = take("TWILIO_ACCOUNT_SID", "providers.twilio.account_sid") {
            twilio.account_sid = Some(v);
        }
        if let Some(v) = take("TWILIO_AUTH_TOKEN", "providers.twilio.auth_token") {
            twilio.auth_token = Some(v);
        }
        if let Some(v) = take("TWILIO_PHONE_NUMBER", "providers.twilio.from") {
            twilio.from = Some(v);
        }
        if let Some(v) = take("TWILIO_BASE_URL", "providers.twilio.base_url") {
            twilio.base_url = v;
        }
        let resend = &mut self.providers.resend;
        if let Some(v) = take("RESEND_API_KEY", "providers.resend.api_key") {
            resend.api_key = Some(v);
        }
        if let Some(v) = take("RESEND_FROM", "providers.resend.from") {
            resend.from = Some(v);
        }
        if let Some(v) = take("RESEND_BASE_URL", "providers.resend.base_url") {
            resend.base_url = v;
        }
        if let Some(v) = take("RESEND_WEBHOOK_SECRET", "providers.resend.webhook_secret") {
            resend.webhook_secret = Some(v);
        }
        origins
    }
}

/// Reads the config file; the default path falls back to the shipped config
/// when it does not exist.
fn read_config_text(path: &Path, is_default: bool) -> Result<String, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if is_default && e.kind() == std::io::ErrorKind::NotFound => {
            Ok(SHIPPED_CONFIG.to_owned())
        }
        Err(e) => Err(ConfigError::single(
            path.display().to_string(),
            format!("cannot read config file: {e}"),
        )),
    }
}

fn resolve_path_from(cli: Option<&Path>, env: Option<PathBuf>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or(env.filter(|p| !p.as_os_str().is_empty()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

// --- key paths ----------------------------------------------------------------

/// One key as written in a path: bare if TOML allows it, quoted otherwise
/// (`classes."Bad Name"`).
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn join_path(keys: &[String]) -> String {
    keys.iter()
        .map(|k| key_segment(k))
        .collect::<Vec<_>>()
        .join(".")
}

/// A `serde_ignored` path as a dotted key path (without its `?` markers for
/// options and newtypes).
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    fn collect(path: &serde_ignored::Path<'_>, keys: &mut Vec<String>) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                collect(parent, keys);
                keys.push(index.to_string());
            }
            serde_ignored::Path::Map { parent, key } => {
                collect(parent, keys);
                keys.push(key.clone());
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => collect(parent, keys),
        }
    }
    let mut keys = Vec::new();
    collect(path, &mut keys);
    join_path(&keys)
}

fn unknown_key(path: &str) -> Problem {
    match ENV_ONLY.iter().find(|(key, _)| *key == path) {
        Some((_, var)) => Problem::new(
            path,
            format!("unknown key (secrets come only from the environment: set {var})"),
        ),
        None => Problem::new(path, "unknown key"),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("syntax error at line {line}, column {col}: {}", e.message())
        }
        None => format!("syntax error: {}", e.message()),
    }
}

/// A serde error (wrong type, missing field, unknown variant) as a problem at
/// the deepest key whose value contains the error's position.
fn type_problem(text: &str, e: &toml::de::Error) -> Problem {
    let Some(span) = e.span() else {
        return Problem::new("toml", e.message());
    };
    let (line, _) = line_col(text, span.start);
    let path = toml::de::DeTable::parse(text)
        .ok()
        .map(|table| {
            let mut best = Vec::new();
            path_at_table(table.get_ref(), span.start, &mut Vec::new(), &mut best);
            best
        })
        .filter(|keys| !keys.is_empty())
        .map_or_else(|| "toml".to_owned(), |keys| join_path(&keys));
    Problem::new(path, format!("{} (line {line})", e.message()))
}

/// Finds the deepest key whose key or value span contains `offset`. Every
/// entry is searched: a `[table]`'s span covers only its header, not the keys
/// under it, so spans cannot be used to prune the search.
fn path_at_table(
    table: &toml::de::DeTable<'_>,
    offset: usize,
    prefix: &mut Vec<String>,
    best: &mut Vec<String>,
) {
    for (key, value) in table.iter() {
        prefix.push(key.get_ref().to_string());
        if (key.span().contains(&offset) || value.span().contains(&offset))
            && prefix.len() > best.len()
        {
            best.clone_from(prefix);
        }
        path_at_value(value, offset, prefix, best);
        prefix.pop();
    }
}

fn path_at_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    offset: usize,
    prefix: &mut Vec<String>,
    best: &mut Vec<String>,
) {
    match value.get_ref() {
        toml::de::DeValue::Table(table) => path_at_table(table, offset, prefix, best),
        toml::de::DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                prefix.push(index.to_string());
                if item.span().contains(&offset) && prefix.len() > best.len() {
                    best.clone_from(prefix);
                }
                path_at_value(item, offset, prefix, best);
                prefix.pop();
            }
        }
        _ => {}
    }
}

// --- validation -----------------------------------------------------------------

/// Collects problems; a problem at a key an environment variable set names
/// the variable.
struct Checker<'a> {
    problems: Vec<Problem>,
    origins: &'a BTreeMap<&'static str, &'static str>,
}

impl Checker<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let mut message = message.into();
        if let Some(var) = self.origins.get(path.as_str()) {
            message.push_str(&format!(" (set by {var})"));
        }
        self.problems.push(Problem::new(path, message));
    }

    /// A strictly positive, finite number.
    fn positive(&mut self, path: &str, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.push(path, format!("must be > 0, got {value}"));
        }
    }

    /// A finite number >= 0.
    fn non_negative(&mut self, path: &str, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            self.push(path, format!("must be >= 0, got {value}"));
        }
    }

    /// A 24-hour time of day, `HH:MM`; parsed, or `None` with the problem
    /// noted.
    fn hhmm(&mut self, path: impl Into<String>, value: &str) -> Option<NaiveTime> {
        let time = parse_hhmm(value);
        if time.is_none() {
            self.push(path, format!("must be a 24-hour time HH:MM, got {value:?}"));
        }
        time
    }

    /// An absolute `http://` or `https://` URL.
    fn http_url(&mut self, path: &str, value: &str) {
        match url::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(_) => self.push(
                path,
                format!("must be an http:// or https:// URL, got {value:?}"),
            ),
            Err(e) => self.push(path, format!("not a URL ({e}): {value:?}")),
        }
    }
}

impl Config {
    fn check_all(&self, c: &mut Checker<'_>) {
        self.check_edges(c);
        self.check_providers(c);
        self.check_quiet_hours(c);
        self.check_supervisor(c);
        self.check_templates(c);
        self.check_classes(c);
        self.check_schedules(c);
        self.check_credentials(c);
    }

    /// `[[schedules]]`: names, patterns, zones, classes, and that each
    /// event would be accepted as published.
    fn check_schedules(&self, c: &mut Checker<'_>) {
        let mut names = BTreeSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            let base = format!("schedules[{i}]");
            if let Err(why) = check_name(&s.name) {
                c.push(format!("{base}.name"), format!("schedule name {why}"));
            }
            if !names.insert(s.name.as_str()) {
                c.push(
                    format!("{base}.name"),
                    format!("{:?} is used twice", s.name),
                );
            }
            if let Err(e) = s.cron.parse::<croner::Cron>() {
                c.push(format!("{base}.cron"), format!("not a cron pattern: {e}"));
            }
            if s.timezone.parse::<Tz>().is_err() {
                c.push(
                    format!("{base}.timezone"),
                    format!("{:?} is not an IANA time zone", s.timezone),
                );
            }
            if !self.classes.contains_key(&s.class) {
                c.push(
                    format!("{base}.class"),
                    format!("no class named {:?}", s.class),
                );
                continue;
            }
            let (_, body) =
                crate::recurring::occurrence_event(&s.name, &s.event, chrono::Utc::now());
            let envelope = crate::event::Envelope {
                class: s.class.clone(),
                ..Default::default()
            };
            if let Err(r) = crate::event::decode(self, &envelope, &body) {
                c.push(
                    format!("{base}.event"),
                    format!("{}: {}", r.reason, r.detail),
                );
            }
        }
    }

    /// Broker, HTTP, store, Redis and the instance count, public URL.
    fn check_edges(&self, c: &mut Checker<'_>) {
        let amqp = &self.amqp;
        if !(amqp.url.starts_with("amqp://") || amqp.url.starts_with("amqps://")) {
            c.push(
                "amqp.url",
                format!(
                    "must start with amqp:// or amqps://, got {:?}",
                    redact_url(&amqp.url)
                ),
            );
        } else if let Err(e) = url::Url::parse(&amqp.url) {
            c.push("amqp.url", format!("not a URL: {e}"));
        }
        if amqp.prefetch == 0 {
            c.push("amqp.prefetch", "must be > 0 (0 would mean unlimited)");
        }
        c.positive("amqp.queue_poll_secs", amqp.queue_poll_secs);

        if let Err(e) = self.http.addr.parse::<SocketAddr>() {
            c.push(
                "http.addr",
                format!(
                    "must be a socket address like 127.0.0.1:9464 ({e}), got {:?}",
                    self.http.addr
                ),
            );
        }

        let store = &self.store.url;
        if let Some(file) = store.strip_prefix("sqlite://") {
            if file.is_empty() {
                c.push(
                    "store.url",
                    "sqlite:// needs a file path, e.g. sqlite://data/herald.db",
                );
            }
        } else if store.starts_with("postgres://") || store.starts_with("postgresql://") {
            if let Err(e) = url::Url::parse(store) {
                c.push("store.url", format!("not a URL: {e}"));
            }
        } else {
            c.push(
                "store.url",
                format!(
                    "must start with sqlite://, postgres:// or postgresql://, got {:?}",
                    redact_url(store)
                ),
            );
        }

        let st = &self.store;
        if st.retention_delivered_days == 0 {
            c.push("store.retention_delivered_days", "must be > 0, got 0");
        }
        if st.retention_failed_days == 0 {
            c.push("store.retention_failed_days", "must be > 0, got 0");
        }
        if !(st.retention_interval_secs.is_finite() && st.retention_interval_secs > 0.0) {
            c.push(
                "store.retention_interval_secs",
                format!("must be > 0, got {}", st.retention_interval_secs),
            );
        }
        if st.retention_batch == 0 {
            c.push("store.retention_batch", "must be > 0, got 0");
        }

        if let Some(redis) = &self.redis_url {
            match url::Url::parse(redis) {
                Ok(url) if url.scheme() == "rediss" => c.push(
                    "redis_url",
                    "rediss:// (TLS) is not supported by this build; use redis://",
                ),
                Ok(url) if url.scheme() == "redis" => {
                    // The driver's own parse: host, port, database number.
                    if let Err(e) = redis::Client::open(redis.as_str()) {
                        c.push("redis_url", format!("not a valid Redis URL: {e}"));
                    }
                }
                Ok(_) => c.push(
                    "redis_url",
                    format!("must start with redis://, got {:?}", redact_url(redis)),
                ),
                Err(e) => c.push("redis_url", format!("not a URL: {e}")),
            }
        }
        if self.limits.instances == 0 {
            c.push("limits.instances", "must be >= 1, got 0");
        }
        if let Some(public) = &self.public_url {
            c.http_url("public_url", public);
        }
    }

    fn check_providers(&self, c: &mut Checker<'_>) {
        let p = &self.providers;
        if p.sandbox_outbox.trim().is_empty() {
            c.push("providers.sandbox_outbox", "must not be empty");
        }

        let t = &p.twilio;
        c.http_url("providers.twilio.base_url", &t.base_url);
        if t.max_concurrency == 0 {
            c.push("providers.twilio.max_concurrency", "must be > 0, got 0");
        }
        c.positive("providers.twilio.rate_per_sec", t.rate_per_sec);
        c.positive("providers.twilio.timeout_secs", t.timeout_secs);
        if t.timeout_secs >= MAX_PROVIDER_TIMEOUT_SECS {
            c.push(
                "providers.twilio.timeout_secs",
                format!(
                    "must be below RabbitMQ's consumer timeout ({MAX_PROVIDER_TIMEOUT_SECS} s), got {}",
                    t.timeout_secs
                ),
            );
        }
        c.non_negative(
            "providers.twilio.cost_per_segment_usd",
            t.cost_per_segment_usd,
        );
        if let Some(from) = &t.from {
            if !(is_e164(from) || is_sid(from, "MG")) {
                c.push(
                    "providers.twilio.from",
                    format!(
                        "must be an E.164 number (+15551234567) or a Messaging Service SID (MG...), got {from:?}"
                    ),
                );
            }
        }
        if let Some(sid) = &t.account_sid {
            if !is_sid(sid, "AC") {
                c.push("env.TWILIO_ACCOUNT_SID", "must match ^AC[0-9a-fA-F]{32}$");
            }
        }

        let r = &p.resend;
        c.http_url("providers.resend.base_url", &r.base_url);
        if let Some(secret) = &r.webhook_secret {
            if crate::webhooks::signature::SvixSecret::parse(secret).is_none() {
                c.push(
                    "env.RESEND_WEBHOOK_SECRET",
                    "must be whsec_ followed by base64",
                );
            }
        }
        if r.max_concurrency == 0 {
            c.push("providers.resend.max_concurrency", "must be > 0, got 0");
        }
        c.positive("providers.resend.rate_per_sec", r.rate_per_sec);
        c.positive("providers.resend.timeout_secs", r.timeout_secs);
        if r.timeout_secs >= MAX_PROVIDER_TIMEOUT_SECS {
            c.push(
                "providers.resend.timeout_secs",
                format!(
                    "must be below RabbitMQ's consumer timeout ({MAX_PROVIDER_TIMEOUT_SECS} s), got {}",
                    r.timeout_secs
                ),
            );
        }
        c.non_negative(
            "providers.resend.cost_per_message_usd",
            r.cost_per_message_usd,
        );
        if let Some(from) = &r.from {
            if !looks_like_sender(from) {
                c.push(
                    "providers.resend.from",
                    format!(
                        "must be an email address, optionally named (\"Herald <n@example.com>\"), got {from:?}"
                    ),
                );
            }
        }
    }

    fn check_quiet_hours(&self, c: &mut Checker<'_>) {
        let q = &self.quiet_hours;
        let start = c.hhmm("quiet_hours.start", &q.start);
        let end = c.hhmm("quiet_hours.end", &q.end);
        if start.is_some() && start == end {
            c.push(
                "quiet_hours.end",
                "must differ from quiet_hours.start (an empty window is ambiguous)",
            );
        }
        if q.default_timezone.parse::<Tz>().is_err() {
            c.push(
                "quiet_hours.default_timezone",
                format!(
                    "must be an IANA time zone like \"America/New_York\", got {:?}",
                    q.default_timezone
                ),
            );
        }
    }

    fn check_supervisor(&self, c: &mut Checker<'_>) {
        if self.supervisor.heartbeat_ms == 0 {
            c.push("supervisor.heartbeat_ms", "must be > 0, got 0");
        }
        if self.supervisor.ping_timeout_ms == 0 {
            c.push("supervisor.ping_timeout_ms", "must be > 0, got 0");
        }
        let grace = self.supervisor.shutdown_grace_secs;
        if !(grace.is_finite() && grace > 0.0) {
            c.push(
                "supervisor.shutdown_grace_secs",
                format!("must be > 0, got {grace}"),
            );
        }
    }

    fn check_templates(&self, c: &mut Checker<'_>) {
        for (name, template) in &self.templates {
            let base = format!("templates.{}", key_segment(name));
            if let Err(why) = check_name(name) {
                c.push(&base, format!("template name {why}"));
            }
            if template.body.trim().is_empty() {
                c.push(format!("{base}.body"), "must not be empty");
            }
            if template
                .subject
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
            {
                c.push(
                    format!("{base}.subject"),
                    "must not be empty (leave the key out for none)",
                );
            }
        }
    }

    fn check_classes(&self, c: &mut Checker<'_>) {
        if self.classes.is_empty() {
            c.push("classes", "at least one class must be defined");
        }
        for (name, class) in &self.classes {
            let base = format!("classes.{}", key_segment(name));
            if let Err(why) = check_name(name) {
                c.push(
                    &base,
                    format!("class name {why} (it becomes a queue name and a metric label)"),
                );
            }
            for (key, value) in [
                ("deliver_at_local", &class.deliver_at_local),
                ("deliver_at_local_weekend", &class.deliver_at_local_weekend),
            ] {
                if let Some(v) = value {
                    c.hhmm(format!("{base}.{key}"), v);
                }
            }
            if let Some(cap) = &class.frequency_cap {
                if cap.max == 0 {
                    c.push(
                        format!("{base}.frequency_cap.max"),
                        "must be > 0 (a class that may never send has rate_limit 0)",
                    );
                }
                c.positive(
                    &format!("{base}.frequency_cap.window_secs"),
                    cap.window_secs,
                );
            }
            if class.deliver_at_local.is_none() && class.deliver_at_local_weekend.is_some() {
                c.push(
                    format!("{base}.deliver_at_local_weekend"),
                    "needs deliver_at_local (the weekday time)",
                );
            }
            if !(1..=10).contains(&class.priority) {
                c.push(
                    format!("{base}.priority"),
                    format!(
                        "must be between 1 (most urgent) and 10, got {}",
                        class.priority
                    ),
                );
            }

            for ch in Channel::ALL {
                let rate = match ch {
                    Channel::Sms => class.rate_limit.sms,
                    Channel::Email => class.rate_limit.email,
                };
                let path = format!("{base}.rate_limit.{ch}");
                if rate < 0 {
                    c.push(path, format!("must be >= 0, got {rate}"));
                } else if rate > i64::from(u32::MAX) {
                    c.push(path, format!("must be <= {}, got {rate}", u32::MAX));
                } else if rate == 0 && class.channel == Some(ch) {
                    c.push(
                        path,
                        format!("must be > 0 because the class's channel is {ch} (0 = never send)"),
                    );
                } else if rate == 0 && class.fallback == Some(ch) && class.channel != Some(ch) {
                    c.push(
                        path,
                        format!(
                            "must be > 0 because the class falls back to {ch} (0 = never send)"
                        ),
                    );
                }
            }

            match class.channel {
                None => c.push(format!("{base}.channel"), "missing (\"sms\" or \"email\")"),
                Some(ch) if class.fallback == Some(ch) => c.push(
                    format!("{base}.fallback"),
                    format!("must differ from channel ({ch})"),
                ),
                // Fallback turns a failed SMS into an email; there is no
                // email-to-SMS path (an email carries no phone number).
                Some(_) if class.fallback == Some(Channel::Sms) => c.push(
                    format!("{base}.fallback"),
                    "must be \"email\" (herald falls back from SMS to email only)",
                ),
                Some(_) => {}
            }

            if class.retries > MAX_RETRIES {
                c.push(
                    format!("{base}.retries"),
                    format!("must be <= {MAX_RETRIES}, got {}", class.retries),
                );
            }
            let base_ok = class.base_delay_secs.is_finite() && class.base_delay_secs > 0.0;
            if !base_ok {
                c.push(
                    format!("{base}.base_delay_secs"),
                    format!("must be > 0, got {}", class.base_delay_secs),
                );
            }
            if !class.max_delay_secs.is_finite() {
                c.push(
                    format!("{base}.max_delay_secs"),
                    format!("must be a finite number, got {}", class.max_delay_secs),
                );
            } else if base_ok && class.max_delay_secs < class.base_delay_secs {
                c.push(
                    format!("{base}.max_delay_secs"),
                    format!(
                        "must be >= base_delay_secs ({}), got {}",
                        class.base_delay_secs, class.max_delay_secs
                    ),
                );
            }
            for (key, value) in [("subject", &class.subject), ("template", &class.template)] {
                if value.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    c.push(
                        format!("{base}.{key}"),
                        "must not be empty (leave the key out for none)",
                    );
                }
            }
        }
    }

    /// In live mode, each channel some class uses (as channel or fallback)
    /// needs its provider's credentials and sender.
    fn check_credentials(&self, c: &mut Checker<'_>) {
        if self.providers.mode != ProviderMode::Live {
            return;
        }
        let used: BTreeSet<Channel> = Channel::ALL
            .into_iter()
            .filter(|ch| self.classes.values().any(|class| class.uses(*ch)))
            .collect();
        let t = &self.providers.twilio;
        if used.contains(&Channel::Sms) {
            if t.account_sid.is_none() {
                c.push(
                    "env.TWILIO_ACCOUNT_SID",
                    "required in live mode (a class sends sms)",
                );
            }
            if t.auth_token.is_none() {
                c.push(
                    "env.TWILIO_AUTH_TOKEN",
                    "required in live mode (a class sends sms)",
                );
            }
            if t.from.is_none() {
                c.push(
                    "env.TWILIO_PHONE_NUMBER",
                    "required in live mode (a class sends sms); or set providers.twilio.from",
                );
            }
        }
        let r = &self.providers.resend;
        if used.contains(&Channel::Email) {
            if r.api_key.is_none() {
                c.push(
                    "env.RESEND_API_KEY",
                    "required in live mode (a class sends email)",
                );
            }
            if r.from.is_none() {
                c.push(
                    "env.RESEND_FROM",
                    "required in live mode (a class sends email); or set providers.resend.from",
                );
            }
        }
    }
}

/// `^[a-z0-9_]+$`, at most [`MAX_NAME_LEN`] bytes.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Err(format!("{name:?} must match ^[a-z0-9_]+$"))
    } else if name.len() > MAX_NAME_LEN {
        Err(format!(
            "{name:?} must be at most {MAX_NAME_LEN} characters, got {}",
            name.len()
        ))
    } else {
        Ok(())
    }
}

/// Strict `HH:MM`, 24-hour clock.
fn parse_hhmm(s: &str) -> Option<NaiveTime> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    if !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// `+` then 2 to 15 digits, no leading zero.
fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// `PREFIX` then 32 hex digits (Twilio SIDs: `AC…`, `MG…`).
fn is_sid(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `a@b.c` or `Name <a@b.c>`.
fn looks_like_sender(s: &str) -> bool {
    let addr = match (s.rfind('<'), s.strip_suffix('>')) {
        (Some(open), Some(rest)) => &rest[open + 1..],
        _ => s,
    };
    match addr.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !addr.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

// --- Debug without secrets ------------------------------------------------

/// Prints `Some("***")` or `None`.
struct Secret<'a>(&'a Option<String>);

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some(\"***\")"),
            None => f.write_str("None"),
        }
    }
}

/// A URL with its password replaced by `***` (also for logs).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            if url.set_password(Some("***")).is_ok() {
                url.to_string()
            } else {
                "***".to_owned()
            }
        }
        _ => raw.to_owned(),
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("amqp", &self.amqp)
            .field("http", &self.http)
            .field("store", &self.store)
            .field("providers", &self.providers)
            .field("quiet_hours", &self.quiet_hours)
            .field("supervisor", &self.supervisor)
            .field("templates", &self.templates)
            .field("classes", &self.classes)
            .field("admin_token", &Secret(&self.admin_token))
            .field("public_url", &self.public_url)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("limits", &self.limits)
            .finish()
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("prefetch", &self.prefetch)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("queue_poll_secs", &self.queue_poll_secs)
            .finish()
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &Secret(&self.account_sid))
            .field("auth_token", &Secret(&self.auth_token))
            .field("from", &self.from)
            .field("max_concurrency", &self.max_concurrency)
            .field("rate_per_sec", &self.rate_per_sec)
            .field("timeout_secs", &self.timeout_secs)
            .field("cost_per_segment_usd", &self.cost_per_segment_usd)
            .finish()
    }
}

impl fmt::Debug for ResendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &Secret(&self.api_key))
            .field("webhook_secret", &Secret(&self.webhook_secret))
            .field("from", &self.from)
            .field("max_concurrency", &self.max_concurrency)
            .field("rate_per_sec", &self.rate_per_sec)
            .field("timeout_secs", &self.timeout_secs)
            .field("cost_per_message_usd", &self.cost_per_message_usd)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// The smallest valid config: one SMS class.
    const MINIMAL: &str = r#"
[classes.alerts]
priority = 1
channel = "sms"
rate_limit = { sms = 10 }
retries = 2
base_delay_secs = 30
"#;

    #[test]
    fn schedules_are_checked_down_to_their_event() {
        let text = format!(
            r#"{MINIMAL}
[[schedules]]
name = "morning"
cron = "45 6 * * MON-FRI"
timezone = "Europe/Berlin"
class = "alerts"
event = {{ user_id = "u", to = {{ phone = "+15551234567" }}, template = "hi" }}

[[schedules]]
name = "Bad Name"
cron = "61 * * * *"
timezone = "Mars/Olympus"
class = "alerts"
event = {{ user_id = "u", template = "hi" }}

[[schedules]]
name = "morning"
cron = "0 9 * * *"
class = "nope"
event = {{}}
"#
        );
        let p = problems(&text);
        let at = |path: &str| p.iter().filter(|l| l.starts_with(path)).count();
        assert_eq!(at("schedules[0]"), 0, "{p:#?}");
        assert_eq!(at("schedules[1].name"), 1, "{p:#?}");
        assert_eq!(at("schedules[1].cron"), 1, "{p:#?}");
        assert_eq!(at("schedules[1].timezone"), 1, "{p:#?}");
        assert!(
            p.iter()
                .any(|l| l.starts_with("schedules[1].event: missing_recipient")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("schedules[2].name: \"morning\" is used twice")),
            "{p:#?}"
        );
        assert_eq!(at("schedules[2].class"), 1, "{p:#?}");
    }

    /// The problems (as `path: message` lines) for `text`, which must be
    /// invalid.
    fn problems(text: &str) -> Vec<String> {
        problems_with(text, &no_env)
    }

    fn problems_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        match Config::from_toml_str(text, env) {
            Ok(_) => panic!("expected problems, config loaded:\n{text}"),
            Err(e) => e.problems.iter().map(Problem::to_string).collect(),
        }
    }

    /// Asserts exactly one problem at `path`, whose message starts with `message`.
    fn assert_problem(problems: &[String], path: &str, message: &str) {
        let at_path: Vec<&String> = problems
            .iter()
            .filter(|p| p.starts_with(&format!("{path}: ")))
            .collect();
        assert_eq!(at_path.len(), 1, "one problem at {path} in {problems:#?}");
        assert!(
            at_path[0].starts_with(&format!("{path}: {message}")),
            "{path}: expected {message:?}, got {:?}",
            at_path[0]
        );
    }

    #[test]
    fn provider_timeouts_stay_below_the_consumer_timeout() {
        let p = problems(&format!(
            "{MINIMAL}\n[providers.twilio]\ntimeout_secs = 3600\n"
        ));
        assert_problem(
            &p,
            "providers.twilio.timeout_secs",
            "must be below RabbitMQ's consumer timeout",
        );
    }

    fn with_class(body: &str) -> String {
        format!("[classes.c]\n{body}\n")
    }

    /// One row of SPEC.md's class table: class, priority, channel, fallback,
    /// sms/min, email/min, retries, base delay in seconds.
    type SpecRow = (
        &'static str,
        u8,
        Channel,
        Option<Channel>,
        u32,
        u32,
        u32,
        f64,
    );

    #[test]
    fn shipped_config_loads_with_spec_classes() {
        let config = Config::from_toml_str(SHIPPED_CONFIG, &no_env).expect("shipped config");
        use Channel::{Email, Sms};
        // class, priority, channel, fallback, sms/m, email/m, retries, base delay secs
        let expected: [SpecRow; 8] = [
            ("critical_financial", 1, Sms, Some(Email), 10, 5, 3, 60.0),
            ("payment_reminder", 2, Sms, Some(Email), 20, 10, 2, 300.0),
            ("weekly_checkin", 3, Sms, None, 50, 25, 2, 600.0),
            ("milestone_reminder", 4, Sms, None, 30, 15, 1, 900.0),
            ("monthly_report", 5, Email, None, 0, 10, 2, 1800.0),
            ("career_insights", 6, Email, None, 0, 20, 2, 1800.0),
            ("educational_content", 7, Email, None, 0, 30, 2, 1800.0),
            ("onboarding_sequence", 8, Email, None, 100, 50, 3, 900.0),
        ];
        assert_eq!(config.classes.len(), expected.len());
        for (name, priority, channel, fallback, sms, email, retries, delay) in expected {
            let class = &config.classes[name];
            assert_eq!(class.priority, priority, "{name}");
            assert_eq!(class.channel(), channel, "{name}");
            assert_eq!(class.fallback, fallback, "{name}");
            assert_eq!(class.rate_per_min(Sms), sms, "{name}");
            assert_eq!(class.rate_per_min(Email), email, "{name}");
            assert_eq!(class.retries, retries, "{name}");
            assert_eq!(class.base_delay_secs, delay, "{name}");
            assert_eq!(class.max_delay_secs, 3600.0, "{name}");
            assert_eq!(
                class.quiet_hours_exempt,
                name == "critical_financial",
                "{name}"
            );
        }
        assert_eq!(config.providers.mode, ProviderMode::Sandbox);
        assert_eq!(config.providers.twilio.cost_per_segment_usd, 0.0075);
        assert_eq!(config.providers.resend.cost_per_message_usd, 0.0001);
        assert_eq!(
            config.quiet_hours.start_time(),
            NaiveTime::from_hms_opt(21, 0, 0).unwrap()
        );
        assert_eq!(
            config.quiet_hours.end_time(),
            NaiveTime::from_hms_opt(8, 0, 0).unwrap()
        );
        assert_eq!(config.quiet_hours.default_tz(), chrono_tz::UTC);
        let bill_due = &config.templates["bill_due"];
        assert!(bill_due.body.contains("{bill_name}"));
        assert!(bill_due.subject.is_some());
        assert_eq!(config.admin_token, None);
    }

    #[test]
    fn shipped_values_equal_the_defaults() {
        // The shipped file spells out every default; an empty section must
        // give the same values.
        let shipped = Config::shipped();
        let minimal = Config::from_toml_str(MINIMAL, &no_env).unwrap();
        assert_eq!(format!("{:?}", shipped.amqp), format!("{:?}", minimal.amqp));
        assert_eq!(format!("{:?}", shipped.http), format!("{:?}", minimal.http));
        assert_eq!(
            format!("{:?}", shipped.store),
            format!("{:?}", minimal.store)
        );
        assert_eq!(
            format!("{:?}", shipped.providers),
            format!("{:?}", minimal.providers)
        );
        assert_eq!(
            format!("{:?}", shipped.quiet_hours),
            format!("{:?}", minimal.quiet_hours)
        );
        assert_eq!(
            format!("{:?}", shipped.supervisor),
            format!("{:?}", minimal.supervisor)
        );
        assert_eq!(
            format!("{:?}", shipped.limits),
            format!("{:?}", minimal.limits)
        );
        assert_eq!(minimal.amqp.prefetch, 64);
        assert_eq!(minimal.amqp.heartbeat_secs, 10);
        assert_eq!(minimal.amqp.queue_poll_interval(), Duration::from_secs(5));
        assert_eq!(minimal.http.addr, "127.0.0.1:9464");
        assert_eq!(minimal.store.url, "sqlite://data/herald.db");
        assert_eq!(minimal.providers.twilio.max_concurrency, 16);
        assert_eq!(minimal.providers.twilio.rate_per_sec, 100.0);
        assert_eq!(minimal.providers.resend.max_concurrency, 8);
        assert_eq!(minimal.providers.resend.rate_per_sec, 2.0);
        assert_eq!(minimal.providers.resend.timeout(), Duration::from_secs(10));
        assert_eq!(minimal.supervisor.heartbeat(), Duration::from_millis(500));
        assert_eq!(minimal.supervisor.ping_timeout(), Duration::from_secs(5));
        let class = &minimal.classes["alerts"];
        assert_eq!(class.rate_per_min(Channel::Email), 0);
        assert_eq!(class.base_delay(), Duration::from_secs(30));
        assert_eq!(class.max_delay(), Duration::from_secs(3600));
        assert!(!class.quiet_hours_exempt);
    }

    #[test]
    fn env_overrides_apply() {
        let env = env_of(&[
            ("HERALD_AMQP_URL", "amqps://u:p@broker:5671/prod"),
            ("HERALD_HTTP_ADDR", "0.0.0.0:8080"),
            ("HERALD_PROVIDER_MODE", "live"),
            ("HERALD_STORE_URL", "postgres://herald@db/herald"),
            ("HERALD_REDIS_URL", "redis://cache:6379"),
            ("HERALD_ADMIN_TOKEN", "admin-secret"),
            ("HERALD_PUBLIC_URL", "https://herald.example.com"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "twilio-secret"),
            ("TWILIO_PHONE_NUMBER", "+15550001234"),
            ("TWILIO_BASE_URL", "http://127.0.0.1:4010"),
            ("RESEND_API_KEY", "re_secret"),
            ("RESEND_FROM", "Herald <n@example.com>"),
            ("RESEND_BASE_URL", "http://127.0.0.1:4011"),
        ]);
        let config = Config::from_toml_str(SHIPPED_CONFIG, &env).expect("valid");
        assert_eq!(config.amqp.url, "amqps://u:p@broker:5671/prod");
        assert_eq!(config.http.addr, "0.0.0.0:8080");
        assert_eq!(config.providers.mode, ProviderMode::Live);
        assert_eq!(config.store.url, "postgres://herald@db/herald");
        assert_eq!(config.redis_url.as_deref(), Some("redis://cache:6379"));
        assert_eq!(config.admin_token.as_deref(), Some("admin-secret"));
        assert_eq!(
            config.public_url.as_deref(),
            Some("https://herald.example.com")
        );
        let t = &config.providers.twilio;
        assert_eq!(
            t.account_sid.as_deref(),
            Some("AC0123456789abcdef0123456789abcdef")
        );
        assert_eq!(t.auth_token.as_deref(), Some("twilio-secret"));
        assert_eq!(t.from.as_deref(), Some("+15550001234"));
        assert_eq!(t.base_url, "http://127.0.0.1:4010");
        let r = &config.providers.resend;
        assert_eq!(r.api_key.as_deref(), Some("re_secret"));
        assert_eq!(r.from.as_deref(), Some("Herald <n@example.com>"));
        assert_eq!(r.base_url, "http://127.0.0.1:4011");
    }

    #[test]
    fn empty_env_values_are_ignored() {
        let env = env_of(&[("HERALD_AMQP_URL", ""), ("HERALD_PROVIDER_MODE", "  ")]);
        let config = Config::from_toml_str(MINIMAL, &env).unwrap();
        assert_eq!(config.amqp.url, default_amqp_url());
        assert_eq!(config.providers.mode, ProviderMode::Sandbox);
    }

    #[test]
    fn bad_provider_mode_is_an_env_problem() {
        let p = problems_with(MINIMAL, &env_of(&[("HERALD_PROVIDER_MODE", "prod")]));
        assert_eq!(
            p,
            ["env.HERALD_PROVIDER_MODE: must be \"sandbox\" or \"live\", got \"prod\""]
        );
    }

    #[test]
    fn problems_at_env_set_keys_name_the_variable() {
        let p = problems_with(MINIMAL, &env_of(&[("HERALD_HTTP_ADDR", "localhost")]));
        assert_problem(&p, "http.addr", "must be a socket address");
        assert!(p[0].ends_with("(set by HERALD_HTTP_ADDR)"), "{p:?}");
    }

    #[test]
    fn debug_hides_secrets() {
        let env = env_of(&[
            ("HERALD_AMQP_URL", "amqp://herald:amqp-pass@broker:5672/%2f"),
            ("HERALD_STORE_URL", "postgres://herald:db-pass@db/herald"),
            ("HERALD_REDIS_URL", "redis://:redis-pass@cache:6379"),
            ("HERALD_ADMIN_TOKEN", "admin-secret"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "twilio-secret"),
            ("RESEND_API_KEY", "re_secret"),
        ]);
        let config = Config::from_toml_str(SHIPPED_CONFIG, &env).unwrap();
        let debug = format!("{config:?}");
        for secret in [
            "amqp-pass",
            "db-pass",
            "redis-pass",
            "admin-secret",
            "AC0123456789abcdef0123456789abcdef",
            "twilio-secret",
            "re_secret",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(debug.contains("admin_token: Some(\"***\")"), "{debug}");
        assert!(debug.contains("auth_token: Some(\"***\")"), "{debug}");
        assert!(debug.contains("api_key: Some(\"***\")"), "{debug}");
        assert!(
            debug.contains("amqp://herald:***@broker:5672/%2f"),
            "{debug}"
        );
        let pretty = format!("{:#?}", config.providers.twilio);
        assert!(!pretty.contains("twilio-secret"));
    }

    #[test]
    fn secrets_in_the_file_are_rejected() {
        let text = format!(
            "admin_token = \"x\"\n{MINIMAL}\n[providers.twilio]\nauth_token = \"x\"\naccount_sid = \"x\"\n[providers.resend]\napi_key = \"x\"\n"
        );
        let p = problems(&text);
        assert_problem(
            &p,
            "admin_token",
            "unknown key (secrets come only from the environment: set HERALD_ADMIN_TOKEN)",
        );
        assert_problem(
            &p,
            "providers.twilio.auth_token",
            "unknown key (secrets come only from the environment: set TWILIO_AUTH_TOKEN)",
        );
        assert_problem(
            &p,
            "providers.twilio.account_sid",
            "unknown key (secrets come only from the environment: set TWILIO_ACCOUNT_SID)",
        );
        assert_problem(
            &p,
            "providers.resend.api_key",
            "unknown key (secrets come only from the environment: set RESEND_API_KEY)",
        );
        assert_eq!(p.len(), 4, "{p:#?}");
    }

    #[test]
    fn unknown_keys_everywhere_are_reported_together() {
        let text = format!(
            "colour = 1\n[amqp]\nprefech = 64\n[amqpp]\nurl = \"x\"\n[providers.twilio]\nrate = 1\n[quiet_hours]\nbegin = \"21:00\"\n[templates.t]\nbody = \"b\"\nsubj = \"s\"\n{MINIMAL}rate_limit_sms = 3\n"
        );
        let p = problems(&text);
        for path in [
            "colour",
            "amqp.prefech",
            "amqpp",
            "providers.twilio.rate",
            "quiet_hours.begin",
            "templates.t.subj",
            "classes.alerts.rate_limit_sms",
        ] {
            assert_problem(&p, path, "unknown key");
        }
        assert_eq!(p.len(), 7, "{p:#?}");
    }

    #[test]
    fn unknown_key_in_inline_rate_limit() {
        let text = MINIMAL.replace("{ sms = 10 }", "{ sms = 10, fax = 1 }");
        assert_eq!(
            problems(&text),
            ["classes.alerts.rate_limit.fax: unknown key"]
        );
    }

    #[test]
    fn type_errors_name_their_key() {
        let text = format!("{MINIMAL}\n[amqp]\nprefetch = \"sixty\"\n");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("amqp.prefetch: invalid type: string \"sixty\""),
            "{p:?}"
        );
        assert!(p[0].ends_with("(line 10)"), "{p:?}");

        let p = problems(&MINIMAL.replace("\"sms\"", "\"fax\""));
        assert!(
            p[0].starts_with("classes.alerts.channel: unknown variant `fax`"),
            "{p:?}"
        );

        let p = problems(&MINIMAL.replace("retries = 2\n", ""));
        assert!(
            p[0].starts_with("classes.alerts: missing field `retries`"),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_keys_before_a_type_error_are_kept() {
        let text = format!("[amqp]\nprefech = 1\nprefetch = -1\n{MINIMAL}");
        let p = problems(&text);
        assert_problem(&p, "amqp.prefech", "unknown key");
        assert_problem(&p, "amqp.prefetch", "invalid value");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let p = problems("[amqp\nurl = 1\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("toml: syntax error at line 1"), "{p:?}");
    }

    #[test]
    fn class_without_channel() {
        let p = problems(&with_class(
            "priority = 1\nrate_limit = { sms = 1 }\nretries = 0\nbase_delay_secs = 1",
        ));
        assert_eq!(p, ["classes.c.channel: missing (\"sms\" or \"email\")"]);
    }

    #[test]
    fn negative_rates() {
        let p = problems(&with_class(
            "priority = 1\nchannel = \"sms\"\nrate_limit = { sms = 5, email = -5 }\nretries = 0\nbase_delay_secs = 1",
        ));
        assert_eq!(p, ["classes.c.rate_limit.email: must be >= 0, got -5"]);
    }

    #[test]
    fn channel_rate_zero_cannot_send() {
        let p = problems(&with_class(
            "priority = 1\nchannel = \"email\"\nrate_limit = { sms = 5 }\nretries = 0\nbase_delay_secs = 1",
        ));
        assert_eq!(
            p,
            ["classes.c.rate_limit.email: must be > 0 because the class's channel is email (0 = never send)"]
        );
    }

    #[test]
    fn fallback_rate_zero_cannot_send() {
        let p = problems(&with_class(
            "priority = 1\nchannel = \"sms\"\nfallback = \"email\"\nrate_limit = { sms = 5 }\nretries = 0\nbase_delay_secs = 1",
        ));
        assert_problem(
            &p,
            "classes.c.rate_limit.email",
            "must be > 0 because the class falls back to email",
        );
    }

    #[test]
    fn fallback_equal_to_channel() {
        let p = problems(&with_class(
            "priority = 1\nchannel = \"sms\"\nfallback = \"sms\"\nrate_limit = { sms = 5 }\nretries = 0\nbase_delay_secs = 1",
        ));
        assert_eq!(p, ["classes.c.fallback: must differ from channel (sms)"]);
    }

    #[test]
    fn fallback_only_from_sms_to_email() {
        let p = problems(&with_class(
            "priority = 1\nchannel = \"email\"\nfallback = \"sms\"\nrate_limit = { sms = 5, email = 5 }\nretries = 0\nbase_delay_secs = 1",
        ));
        assert_eq!(
            p,
            ["classes.c.fallback: must be \"email\" (herald falls back from SMS to email only)"]
        );
    }

    #[test]
    fn priority_range() {
        for (priority, ok) in [(0, false), (1, true), (10, true), (11, false)] {
            let text = MINIMAL.replace("priority = 1", &format!("priority = {priority}"));
            let result = Config::from_toml_str(&text, &no_env);
            assert_eq!(result.is_ok(), ok, "priority {priority}");
            if !ok {
                assert_eq!(
                    result.unwrap_err().to_string(),
                    format!("classes.alerts.priority: must be between 1 (most urgent) and 10, got {priority}")
                );
            }
        }
    }

    #[test]
    fn retries_and_delays() {
        let text = MINIMAL
            .replace("retries = 2", "retries = 21")
            .replace("base_delay_secs = 30", "base_delay_secs = 0");
        let p = problems(&text);
        assert_problem(&p, "classes.alerts.retries", "must be <= 20, got 21");
        assert_problem(&p, "classes.alerts.base_delay_secs", "must be > 0, got 0");
        assert_eq!(p.len(), 2, "{p:#?}");

        let text = MINIMAL.replace(
            "base_delay_secs = 30",
            "base_delay_secs = 30\nmax_delay_secs = 10.5",
        );
        assert_eq!(
            problems(&text),
            ["classes.alerts.max_delay_secs: must be >= base_delay_secs (30), got 10.5"]
        );
        let text = MINIMAL.replace("base_delay_secs = 30", "base_delay_secs = -1.0");
        assert_eq!(
            problems(&text),
            ["classes.alerts.base_delay_secs: must be > 0, got -1"]
        );
    }

    #[test]
    fn class_and_template_names() {
        let text = format!(
            "{}\n[classes.Payment-Reminder]\npriority = 1\nchannel = \"sms\"\nrate_limit = {{ sms = 1 }}\nretries = 0\nbase_delay_secs = 1\n[classes.\"a b\"]\npriority = 1\nchannel = \"sms\"\nrate_limit = {{ sms = 1 }}\nretries = 0\nbase_delay_secs = 1\n[templates.\"Bad\"]\nbody = \"x\"\n",
            MINIMAL
        );
        let p = problems(&text);
        assert_problem(
            &p,
            "classes.Payment-Reminder",
            "class name \"Payment-Reminder\" must match ^[a-z0-9_]+$",
        );
        assert_problem(
            &p,
            "classes.\"a b\"",
            "class name \"a b\" must match ^[a-z0-9_]+$",
        );
        assert_problem(
            &p,
            "templates.Bad",
            "template name \"Bad\" must match ^[a-z0-9_]+$",
        );
        assert_eq!(p.len(), 3, "{p:#?}");

        let long = "x".repeat(MAX_NAME_LEN + 1);
        let p = problems(&MINIMAL.replace("alerts", &long));
        assert_problem(&p, &format!("classes.{long}"), "class name");
    }

    #[test]
    fn empty_classes() {
        assert_eq!(
            problems(""),
            ["classes: at least one class must be defined"]
        );
    }

    #[test]
    fn empty_template_body_and_subjects() {
        let text =
            format!("{MINIMAL}subject = \"\"\n[templates.t]\nbody = \" \"\nsubject = \"\"\n");
        let p = problems(&text);
        assert_problem(&p, "classes.alerts.subject", "must not be empty");
        assert_problem(&p, "templates.t.body", "must not be empty");
        assert_problem(&p, "templates.t.subject", "must not be empty");
        assert_eq!(p.len(), 3, "{p:#?}");
    }

    #[test]
    fn quiet_hours() {
        let text = format!(
            "{MINIMAL}\n[quiet_hours]\nstart = \"9:00\"\nend = \"24:00\"\ndefault_timezone = \"Mars/Olympus\"\n"
        );
        let p = problems(&text);
        assert_problem(
            &p,
            "quiet_hours.start",
            "must be a 24-hour time HH:MM, got \"9:00\"",
        );
        assert_problem(
            &p,
            "quiet_hours.end",
            "must be a 24-hour time HH:MM, got \"24:00\"",
        );
        assert_problem(
            &p,
            "quiet_hours.default_timezone",
            "must be an IANA time zone",
        );
        assert_eq!(p.len(), 3, "{p:#?}");

        let text = format!("{MINIMAL}\n[quiet_hours]\nstart = \"22:00\"\nend = \"22:00\"\n");
        assert_problem(&problems(&text), "quiet_hours.end", "must differ");

        let text = format!(
            "{MINIMAL}\n[quiet_hours]\nstart = \"22:30\"\nend = \"06:15\"\ndefault_timezone = \"America/New_York\"\n"
        );
        let config = Config::from_toml_str(&text, &no_env).unwrap();
        assert_eq!(
            config.quiet_hours.default_tz(),
            chrono_tz::America::New_York
        );
        assert_eq!(
            config.quiet_hours.end_time(),
            NaiveTime::from_hms_opt(6, 15, 0).unwrap()
        );
    }

    #[test]
    fn edges() {
        let text = format!(
            "public_url = \"not a url\"\nredis_url = \"http://cache\"\n{MINIMAL}\n[amqp]\nurl = \"http://guest:hunter2@broker\"\nprefetch = 0\nqueue_poll_secs = 0\n[http]\naddr = \"localhost:80\"\n[store]\nurl = \"mysql://db\"\n"
        );
        let p = problems(&text);
        assert_problem(&p, "amqp.url", "must start with amqp:// or amqps://");
        assert!(
            !p.iter().any(|l| l.contains("hunter2")),
            "password leaked: {p:?}"
        );
        assert_problem(&p, "amqp.prefetch", "must be > 0");
        assert_problem(&p, "amqp.queue_poll_secs", "must be > 0, got 0");
        assert_problem(&p, "http.addr", "must be a socket address");
        assert_problem(
            &p,
            "store.url",
            "must start with sqlite://, postgres:// or postgresql://",
        );
        assert_problem(&p, "public_url", "not a URL");
        assert_problem(&p, "redis_url", "must start with redis://");
        assert_eq!(p.len(), 7, "{p:#?}");

        let p = problems(&format!("{MINIMAL}\n[store]\nurl = \"sqlite://\"\n"));
        assert_problem(&p, "store.url", "sqlite:// needs a file path");
        let ok = format!("{MINIMAL}\n[store]\nurl = \"postgresql://u@db:5432/herald\"\n");
        assert!(Config::from_toml_str(&ok, &no_env).is_ok());
    }

    #[test]
    fn redis_urls_and_the_instance_count() {
        let minimal = Config::from_toml_str(MINIMAL, &no_env).unwrap();
        assert_eq!(minimal.limits.instances, 1);
        assert_eq!(minimal.redis_url, None);
        let text = format!(
            "redis_url = \"redis://:pw@cache:6379/2\"\n{MINIMAL}\n[limits]\ninstances = 3\n"
        );
        let config = Config::from_toml_str(&text, &no_env).expect("valid");
        assert_eq!(config.limits.instances, 3);

        let p = problems(&format!(
            "redis_url = \"rediss://:pw@cache\"\n{MINIMAL}\n[limits]\ninstances = 0\ninstance = 2\n"
        ));
        assert_eq!(
            p,
            [
                "limits.instance: unknown key",
                "redis_url: rediss:// (TLS) is not supported by this build; use redis://",
                "limits.instances: must be >= 1, got 0",
            ]
        );
        let p = problems_with(
            MINIMAL,
            &env_of(&[("HERALD_REDIS_URL", "redis://:hunter2@cache/notadb")]),
        );
        assert_problem(&p, "redis_url", "not a valid Redis URL");
        assert!(p[0].ends_with("(set by HERALD_REDIS_URL)"), "{p:?}");
        assert!(!p[0].contains("hunter2"), "{p:?}");
    }

    #[test]
    fn provider_numbers() {
        let text = format!(
            "{MINIMAL}\n[providers]\nsandbox_outbox = \"\"\n[providers.twilio]\nbase_url = \"ftp://x\"\nmax_concurrency = 0\nrate_per_sec = 0\ntimeout_secs = -1\ncost_per_segment_usd = -0.01\nfrom = \"5550001234\"\n[providers.resend]\nmax_concurrency = 0\nrate_per_sec = -2\ntimeout_secs = 0\ncost_per_message_usd = -1\nfrom = \"nobody\"\n"
        );
        let p = problems(&text);
        assert_problem(&p, "providers.sandbox_outbox", "must not be empty");
        assert_problem(
            &p,
            "providers.twilio.base_url",
            "must be an http:// or https:// URL",
        );
        assert_problem(&p, "providers.twilio.max_concurrency", "must be > 0, got 0");
        assert_problem(&p, "providers.twilio.rate_per_sec", "must be > 0, got 0");
        assert_problem(&p, "providers.twilio.timeout_secs", "must be > 0, got -1");
        assert_problem(
            &p,
            "providers.twilio.cost_per_segment_usd",
            "must be >= 0, got -0.01",
        );
        assert_problem(&p, "providers.twilio.from", "must be an E.164 number");
        assert_problem(&p, "providers.resend.max_concurrency", "must be > 0, got 0");
        assert_problem(&p, "providers.resend.rate_per_sec", "must be > 0, got -2");
        assert_problem(&p, "providers.resend.timeout_secs", "must be > 0, got 0");
        assert_problem(
            &p,
            "providers.resend.cost_per_message_usd",
            "must be >= 0, got -1",
        );
        assert_problem(&p, "providers.resend.from", "must be an email address");
        assert_eq!(p.len(), 12, "{p:#?}");
    }

    #[test]
    fn supervisor_zero() {
        let text = format!("{MINIMAL}\n[supervisor]\nheartbeat_ms = 0\nping_timeout_ms = 0\n");
        let p = problems(&text);
        assert_problem(&p, "supervisor.heartbeat_ms", "must be > 0");
        assert_problem(&p, "supervisor.ping_timeout_ms", "must be > 0");
    }

    #[test]
    fn live_mode_requires_credentials_for_used_channels_only() {
        // MINIMAL only sends SMS: Resend credentials are not required.
        let p = problems_with(MINIMAL, &env_of(&[("HERALD_PROVIDER_MODE", "live")]));
        assert_eq!(
            p,
            [
                "env.TWILIO_ACCOUNT_SID: required in live mode (a class sends sms)",
                "env.TWILIO_AUTH_TOKEN: required in live mode (a class sends sms)",
                "env.TWILIO_PHONE_NUMBER: required in live mode (a class sends sms); or set providers.twilio.from",
            ]
        );

        // A fallback counts as use.
        let text = MINIMAL.replace(
            "{ sms = 10 }",
            "{ sms = 10, email = 1 }\nfallback = \"email\"",
        );
        let env = env_of(&[
            ("HERALD_PROVIDER_MODE", "live"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_PHONE_NUMBER", "MG0123456789abcdef0123456789abcdef"),
        ]);
        let p = problems_with(&text, &env);
        assert_eq!(
            p,
            [
                "env.RESEND_API_KEY: required in live mode (a class sends email)",
                "env.RESEND_FROM: required in live mode (a class sends email); or set providers.resend.from",
            ]
        );

        // Sandbox mode needs nothing.
        assert!(Config::from_toml_str(&text, &no_env).is_ok());
    }

    #[test]
    fn account_sid_format() {
        let p = problems_with(MINIMAL, &env_of(&[("TWILIO_ACCOUNT_SID", "AC123")]));
        assert_eq!(
            p,
            ["env.TWILIO_ACCOUNT_SID: must match ^AC[0-9a-fA-F]{32}$"]
        );
    }

    #[test]
    fn every_problem_in_one_run() {
        let text = r#"
typo = true
[amqp]
url = "http://broker"
[classes.payment_reminder]
priority = 0
rate_limit = { sms = -5, email = 10 }
retries = 99
base_delay_secs = 0
"#;
        let err = Config::from_toml_str(text, &no_env).unwrap_err();
        assert_eq!(
            err.paths(),
            [
                "typo",
                "amqp.url",
                "classes.payment_reminder.priority",
                "classes.payment_reminder.rate_limit.sms",
                "classes.payment_reminder.channel",
                "classes.payment_reminder.retries",
                "classes.payment_reminder.base_delay_secs",
            ]
        );
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), 7, "{shown}");
        assert!(shown.contains("classes.payment_reminder.rate_limit.sms: must be >= 0, got -5"));
    }

    #[test]
    fn rate_per_min_clamps() {
        let mut class = Config::shipped().classes["payment_reminder"].clone();
        class.rate_limit.sms = -3;
        assert_eq!(class.rate_per_min(Channel::Sms), 0);
        class.rate_limit.sms = i64::MAX;
        assert_eq!(class.rate_per_min(Channel::Sms), u32::MAX);
        assert!(class.uses(Channel::Email));
    }

    #[test]
    fn validate_after_edit() {
        let mut config = Config::shipped();
        assert!(config.validate().is_ok());
        config.classes.get_mut("weekly_checkin").unwrap().channel = None;
        assert_eq!(
            config.validate().unwrap_err().paths(),
            ["classes.weekly_checkin.channel"]
        );
    }

    #[test]
    fn load_reads_files_and_falls_back_only_for_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert_eq!(read_config_text(&missing, true).unwrap(), SHIPPED_CONFIG);
        let err = read_config_text(&missing, false).unwrap_err();
        assert_eq!(err.paths(), [missing.display().to_string().as_str()]);
        assert!(err.to_string().contains("cannot read config file"));

        let err = Config::load(&missing).unwrap_err();
        assert_eq!(err.problems.len(), 1);

        let file = dir.path().join("herald.toml");
        std::fs::write(&file, MINIMAL).unwrap();
        assert_eq!(read_config_text(&file, false).unwrap(), MINIMAL);
    }

    #[test]
    fn resolve_path_order() {
        let cli = Path::new("cli.toml");
        let env = Some(PathBuf::from("env.toml"));
        assert_eq!(resolve_path_from(Some(cli), env.clone()), cli);
        assert_eq!(resolve_path_from(None, env), Path::new("env.toml"));
        assert_eq!(
            resolve_path_from(None, Some(PathBuf::new())),
            Path::new(DEFAULT_CONFIG_PATH)
        );
        assert_eq!(
            resolve_path_from(None, None),
            Path::new(DEFAULT_CONFIG_PATH)
        );
    }

    #[test]
    fn env_override_table_matches_apply_env() {
        // Every documented override really sets its key.
        for (var, path) in ENV_OVERRIDES {
            let value = match *var {
                "HERALD_PROVIDER_MODE" => "live",
                "HERALD_AMQP_URL" => "amqp://x:5672",
                "HERALD_HTTP_ADDR" => "127.0.0.1:1",
                "HERALD_STORE_URL" => "sqlite://x.db",
                "HERALD_REDIS_URL" => "redis://x",
                "TWILIO_ACCOUNT_SID" => "AC0123456789abcdef0123456789abcdef",
                "TWILIO_PHONE_NUMBER" => "+15550001234",
                "RESEND_FROM" => "a@b.co",
                v if v.ends_with("_URL") => "http://x",
                _ => "value",
            };
            let mut config = Config::shipped();
            let mut problems = Vec::new();
            let origins = config.apply_env(
                &|name| (name == *var).then(|| value.to_owned()),
                &mut problems,
            );
            assert!(problems.is_empty(), "{var}: {problems:?}");
            assert_eq!(origins.get(path), Some(var), "{var}");
        }
    }
}
