//! Webhook requests signed as the providers sign them, for tests: Twilio's
//! form POSTs with `X-Twilio-Signature`, Resend's JSON events with Svix's
//! headers. The signing is [`crate::webhooks::signature`]'s, whose tests
//! pin it to the providers' published examples.

use crate::webhooks::signature::{twilio_sign, SvixSecret};

/// A Svix secret for tests (`whsec_` + base64 of 24 bytes).
pub const TEST_SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A request body with the headers that sign it.
#[derive(Clone, Debug)]
pub struct Signed {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// `application/x-www-form-urlencoded` or `application/json`.
    pub content_type: &'static str,
}

impl Signed {
    /// The same signature over another body (a tampered request).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Signed {
        self.body = body.into();
        self
    }
}

/// An inbound SMS as Twilio posts it to `public_url` + `path`.
pub fn twilio_inbound(
    public_url: &str,
    path: &str,
    auth_token: &str,
    from: &str,
    text: &str,
    message_sid: &str,
) -> Signed {
    let params = [
        ("MessageSid", message_sid),
        ("AccountSid", crate::fakes::TWILIO_SID),
        ("From", from),
        ("To", "+15005550006"),
        ("Body", text),
        ("NumMedia", "0"),
    ];
    twilio_form(public_url, path, auth_token, &params)
}

/// A status callback for a message Twilio accepted, as Twilio posts it.
pub fn twilio_status(
    public_url: &str,
    path: &str,
    auth_token: &str,
    message_sid: &str,
    status: &str,
    error_code: Option<&str>,
) -> Signed {
    let mut params = vec![
        ("MessageSid", message_sid),
        ("AccountSid", crate::fakes::TWILIO_SID),
        ("MessageStatus", status),
        ("From", "+15005550006"),
    ];
    params.extend(error_code.map(|code| ("ErrorCode", code)));
    twilio_form(public_url, path, auth_token, &params)
}

/// Any form POST to `public_url` + `path`, signed as Twilio signs it.
pub fn twilio_form(
    public_url: &str,
    path: &str,
    auth_token: &str,
    params: &[(&str, &str)],
) -> Signed {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let signature = twilio_sign(auth_token, &format!("{public_url}{path}"), &params);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    Signed {
        body: body.into_bytes(),
        headers: vec![("x-twilio-signature", signature)],
        content_type: "application/x-www-form-urlencoded",
    }
}

/// A Resend event as Svix delivers it, signed at `timestamp` (seconds).
pub fn resend_event(secret: &str, id: &str, timestamp: i64, event: &serde_json::Value) -> Signed {
    let secret = SvixSecret::parse(secret).expect("a whsec_ secret");
    let body = serde_json::to_vec(event).expect("json");
    let signature = secret.sign(id, timestamp, &body);
    Signed {
        headers: vec![
            ("svix-id", id.to_owned()),
            ("svix-timestamp", timestamp.to_string()),
            ("svix-signature", signature),
        ],
        body,
        content_type: "application/json",
    }
}
