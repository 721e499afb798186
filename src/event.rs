//! Decoding a published event (SPEC.md "The event") into a [`Job`], or
//! into a [`Rejection`] with the reason it is dead-lettered for.

use std::sync::Arc;

use herald_actors::model::{Channel, Job};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::template;

/// The largest event body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The longest event id accepted.
pub const MAX_ID_CHARS: usize = 128;
/// Twilio refuses bodies longer than this (error 21617).
pub const MAX_SMS_CHARS: usize = 1600;
/// The subject used when neither the event, its template nor its class has one.
pub const DEFAULT_SUBJECT: &str = "Notification";

/// Why an event cannot be delivered. `reason` is a fixed code (metric label,
/// `x-herald-reason`); `detail` explains it without personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    fn new(reason: &'static str, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// What the broker says about a delivery, beside its body.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The routing key the event was published with: its class.
    pub class: String,
    /// `x-herald-attempt`: provider attempts already made (retries only).
    pub attempt: u32,
    /// `x-herald-channel`: the channel a retry is for, when not the class's own.
    pub channel: Option<Channel>,
    /// `x-herald-fallback-from`: set on a fallback's retries.
    pub fallback_from: Option<Channel>,
    pub priority: u8,
    pub published_at_ms: Option<u64>,
    /// Published again from the schedule (`x-herald-due`).
    pub released: bool,
}

#[derive(Deserialize)]
struct Wire {
    id: Option<Value>,
    user_id: Option<Value>,
    class: Option<String>,
    #[serde(default)]
    to: Recipient,
    template: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    data: Map<String, Value>,
    send_at: Option<String>,
}

#[derive(Deserialize, Default)]
struct Recipient {
    phone: Option<String>,
    email: Option<String>,
    timezone: Option<String>,
    name: Option<String>,
}

/// Decodes, validates and renders one event for its channel.
pub fn decode(cfg: &Config, env: &Envelope, body: &[u8]) -> Result<Job, Rejection> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::new(
            "body_too_large",
            format!(
                "body is {} bytes; the limit is {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| Rejection::new("invalid_utf8", format!("body is not UTF-8: {e}")))?;
    let wire: Wire = serde_json::from_str(text)
        .map_err(|e| Rejection::new("malformed_json", format!("body is not a valid event: {e}")))?;

    let class_cfg = cfg.classes.get(&env.class).ok_or_else(|| {
        Rejection::new(
            "unknown_class",
            format!("no class named {:?} is configured", env.class),
        )
    })?;
    if let Some(c) = &wire.class {
        if c != &env.class {
            return Err(Rejection::new(
                "class_mismatch",
                format!(
                    "event says class {c:?} but was published as {:?}",
                    env.class
                ),
            ));
        }
    }
    let id = key_field(wire.id, "id", "missing_id", "invalid_id")?;
    if id.chars().count() > MAX_ID_CHARS {
        return Err(Rejection::new(
            "id_too_long",
            format!("id is longer than {MAX_ID_CHARS} characters"),
        ));
    }
    let user_id = key_field(
        wire.user_id,
        "user_id",
        "missing_user_id",
        "invalid_user_id",
    )?;

    let channel = env.channel.unwrap_or_else(|| class_cfg.channel());
    let phone = non_empty(wire.to.phone);
    let email = non_empty(wire.to.email);
    if let Some(p) = &phone {
        if !is_e164(p) {
            return Err(Rejection::new(
                "invalid_phone",
                "to.phone is not an E.164 number (+ and 8 to 15 digits)",
            ));
        }
    }
    if let Some(e) = &email {
        if !is_email(e) {
            return Err(Rejection::new(
                "invalid_email",
                "to.email is not an email address",
            ));
        }
    }
    let address_for = |ch: Channel| match ch {
        Channel::Sms => phone.is_some(),
        Channel::Email => email.is_some(),
    };
    let mut channel = channel;
    let mut fallback_from = env.fallback_from;
    if !address_for(channel) {
        // A first attempt with no address on the class's channel goes
        // straight to the fallback channel, when the class has one and the
        // event has that address.
        match class_cfg
            .fallback
            .filter(|fb| env.channel.is_none() && address_for(*fb))
        {
            Some(fb) => {
                fallback_from = Some(channel);
                channel = fb;
            }
            None => {
                let field = match channel {
                    Channel::Sms => "to.phone",
                    Channel::Email => "to.email",
                };
                return Err(Rejection::new(
                    "missing_recipient",
                    format!(
                        "class {} sends by {channel} but the event has no {field}",
                        env.class
                    ),
                ));
            }
        }
    }
    if let Some(tz) = &wire.to.timezone {
        if tz.parse::<chrono_tz::Tz>().is_err() {
            return Err(Rejection::new(
                "invalid_timezone",
                format!("to.timezone {tz:?} is not an IANA time zone"),
            ));
        }
    }
    let send_at_ms = match &wire.send_at {
        None => None,
        Some(at) => match chrono::DateTime::parse_from_rfc3339(at) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => {
                return Err(Rejection::new(
                    "invalid_send_at",
                    "send_at is not an RFC 3339 time",
                ))
            }
        },
    };

    let template_ref = wire
        .template
        .or_else(|| class_cfg.template.clone())
        .ok_or_else(|| {
            Rejection::new(
                "missing_template",
                "the event has no template and its class has no default",
            )
        })?;
    let named = cfg.templates.get(&template_ref);
    let body_template = named.map_or(template_ref.as_str(), |t| t.body.as_str());
    let subject_template = wire
        .subject
        .as_deref()
        .or_else(|| named.and_then(|t| t.subject.as_deref()))
        .or(class_cfg.subject.as_deref())
        .unwrap_or(DEFAULT_SUBJECT);
    let name = wire.to.name.clone().unwrap_or_default();
    let extra = [("name", name.as_str())];
    let missing = |e: template::TemplateError| Rejection::new("missing_placeholder", e.to_string());
    let rendered = template::render(body_template, &wire.data, &extra).map_err(missing)?;
    let subject = template::render(subject_template, &wire.data, &extra).map_err(missing)?;
    if channel == Channel::Sms && rendered.chars().count() > MAX_SMS_CHARS {
        return Err(Rejection::new(
            "body_too_long",
            format!("the rendered SMS is longer than {MAX_SMS_CHARS} characters"),
        ));
    }

    Ok(Job {
        event_id: id.into(),
        user_id: user_id.into(),
        class: Arc::from(env.class.as_str()),
        channel,
        to_phone: phone,
        to_email: email,
        to_name: wire.to.name,
        body: rendered,
        subject,
        attempt: env.attempt,
        fallback_from,
        amqp_priority: env.priority,
        raw: Arc::from(body),
        published_at_ms: env.published_at_ms,
        send_at_ms,
        timezone: wire.to.timezone.as_deref().map(Arc::from),
    })
}

/// A required identifier: a non-empty string (a number is accepted and
/// turned into its decimal text).
fn string_field(v: Option<Value>, name: &str, reason: &'static str) -> Result<String, Rejection> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(Rejection::new(reason, format!("the event has no {name}"))),
    }
}

/// A key the store files the event under: text without control characters
/// (PostgreSQL cannot store U+0000 at all, and the others only make logs and
/// lookups lie).
fn key_field(
    v: Option<Value>,
    name: &str,
    missing: &'static str,
    invalid: &'static str,
) -> Result<String, Rejection> {
    let key = string_field(v, name, missing)?;
    if key.chars().any(char::is_control) {
        return Err(Rejection::new(
            invalid,
            format!("{name} holds a control character"),
        ));
    }
    Ok(key)
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `+` then 8 to 15 digits, the first not 0.
pub fn is_e164(p: &str) -> bool {
    let Some(digits) = p.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A plausible address: `local@domain.tld`, no spaces, at most 254 bytes.
pub fn is_email(e: &str) -> bool {
    let Some((local, domain)) = e.rsplit_once('@') else {
        return false;
    };
    e.len() <= 254
        && !local.is_empty()
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_toml_str(crate::config::SHIPPED_CONFIG, &|_| None)
            .expect("shipped config is valid")
    }

    fn env(class: &str) -> Envelope {
        Envelope {
            class: class.into(),
            priority: 5,
            ..Envelope::default()
        }
    }

    fn event(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn spec_event() -> serde_json::Value {
        serde_json::json!({
            "id": "evt-7f3a", "user_id": "user_123",
            "to": {"phone": "+15551234567", "email": "jane@example.com", "timezone": "America/New_York", "name": "Jane"},
            "template": "Reminder: {bill_name} due {due_date} - ${amount}",
            "subject": "Your bill",
            "data": {"bill_name": "Electric Bill", "due_date": "2025-01-15", "amount": "125.50"}
        })
    }

    #[test]
    fn decodes_the_spec_example() {
        let job = decode(&cfg(), &env("payment_reminder"), &event(spec_event())).unwrap();
        assert_eq!(&*job.event_id, "evt-7f3a");
        assert_eq!(job.channel, Channel::Sms);
        assert_eq!(job.body, "Reminder: Electric Bill due 2025-01-15 - $125.50");
        assert_eq!(job.subject, "Your bill");
        assert_eq!(job.to_phone.as_deref(), Some("+15551234567"));
    }

    fn reason(class: &str, body: &[u8]) -> &'static str {
        decode(&cfg(), &env(class), body).unwrap_err().reason
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert_eq!(reason("payment_reminder", b"{not json"), "malformed_json");
        assert_eq!(
            reason("payment_reminder", &[0xff, 0xfe, b'{']),
            "invalid_utf8"
        );
        assert_eq!(
            reason("payment_reminder", &vec![b' '; MAX_BODY_BYTES + 1]),
            "body_too_large"
        );
        assert_eq!(
            reason("no_such_class", &event(spec_event())),
            "unknown_class"
        );
        let mut e = spec_event();
        e.as_object_mut().unwrap().remove("id");
        assert_eq!(reason("payment_reminder", &event(e)), "missing_id");
        let mut e = spec_event();
        e["to"].as_object_mut().unwrap().remove("phone");
        assert_eq!(reason("weekly_checkin", &event(e)), "missing_recipient");
        let mut e = spec_event();
        e["to"]["phone"] = "555-1234".into();
        assert_eq!(reason("payment_reminder", &event(e)), "invalid_phone");
        let mut e = spec_event();
        e["data"].as_object_mut().unwrap().remove("bill_name");
        assert_eq!(reason("payment_reminder", &event(e)), "missing_placeholder");
        let mut e = spec_event();
        e["class"] = "weekly_checkin".into();
        assert_eq!(reason("payment_reminder", &event(e)), "class_mismatch");
        let mut e = spec_event();
        e["id"] = "x".repeat(129).into();
        assert_eq!(reason("payment_reminder", &event(e)), "id_too_long");
        let mut e = spec_event();
        e["id"] = "evt\u{0}7f3a".into();
        assert_eq!(reason("payment_reminder", &event(e)), "invalid_id");
        let mut e = spec_event();
        e["user_id"] = "user\n123".into();
        assert_eq!(reason("payment_reminder", &event(e)), "invalid_user_id");
    }

    #[test]
    fn details_carry_no_personal_data() {
        let mut e = spec_event();
        e["to"]["phone"] = "5551234567".into();
        let r = decode(&cfg(), &env("payment_reminder"), &event(e)).unwrap_err();
        assert!(!r.detail.contains("5551234567"), "{}", r.detail);
    }

    #[test]
    fn no_phone_but_an_email_goes_straight_to_the_fallback() {
        let mut e = spec_event();
        e["to"].as_object_mut().unwrap().remove("phone");
        let job = decode(&cfg(), &env("payment_reminder"), &event(e.clone())).unwrap();
        assert_eq!(job.channel, Channel::Email);
        assert_eq!(job.fallback_from, Some(Channel::Sms));
        // No fallback class: dead letter.
        assert_eq!(reason("weekly_checkin", &event(e)), "missing_recipient");
    }

    #[test]
    fn the_class_default_template_applies_when_the_event_has_none() {
        let mut e = spec_event();
        e.as_object_mut().unwrap().remove("template");
        let job = decode(&cfg(), &env("payment_reminder"), &event(e)).unwrap();
        assert_eq!(job.body, "Reminder: Electric Bill due 2025-01-15 - $125.50");
    }

    #[test]
    fn email_classes_need_an_email() {
        let mut e = spec_event();
        e["to"].as_object_mut().unwrap().remove("email");
        assert_eq!(reason("monthly_report", &event(e)), "missing_recipient");
        let job = decode(&cfg(), &env("monthly_report"), &event(spec_event())).unwrap();
        assert_eq!(job.channel, Channel::Email);
    }

    #[test]
    fn phone_and_email_checks() {
        assert!(is_e164("+15551234567"));
        assert!(!is_e164("15551234567"));
        assert!(!is_e164("+0551234567"));
        assert!(!is_e164("+1555"));
        assert!(is_email("jane@example.com"));
        assert!(!is_email("jane@example"));
        assert!(!is_email("ja ne@example.com"));
    }
}
