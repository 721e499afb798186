//! Webhook signatures, as the providers compute them: Twilio's
//! `X-Twilio-Signature` and Svix's (Resend's) `svix-signature`. Pure
//! functions; both compare in constant time. The fake providers sign with
//! the same functions, and the providers' published examples are the tests.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a Svix timestamp may be from our clock.
pub const SVIX_TOLERANCE_SECS: i64 = 5 * 60;

/// Twilio's signature of a form POST to `url`: base64 of HMAC-SHA1 keyed by
/// the auth token over the full URL followed by every parameter's name and
/// value, sorted by name (then value).
pub fn twilio_sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    B64.encode(mac.finalize().into_bytes())
}

/// Whether `signature` (the `X-Twilio-Signature` header) is Twilio's for
/// this request.
pub fn twilio_verify(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let expected = twilio_sign(auth_token, url, params);
    expected
        .as_bytes()
        .ct_eq(signature.trim().as_bytes())
        .into()
}

/// Why a Svix-signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SvixError {
    #[error("missing or malformed svix headers")]
    Malformed,
    #[error("timestamp outside the 5-minute tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// A Svix signing secret (`whsec_` + base64 key).
#[derive(Clone)]
pub struct SvixSecret(Vec<u8>);

impl SvixSecret {
    /// Parses `whsec_...` (the prefix is optional, as in Svix's libraries).
    pub fn parse(secret: &str) -> Option<SvixSecret> {
        let key = secret.strip_prefix("whsec_").unwrap_or(secret);
        B64.decode(key)
            .ok()
            .filter(|k| !k.is_empty())
            .map(SvixSecret)
    }

    /// The `v1,<base64>` signature of `body` sent with this id and timestamp.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// Checks a request's `svix-id`, `svix-timestamp` and `svix-signature`
    /// (space-separated `v1,<base64>` entries, any of which may match)
    /// against `body`, with the timestamp within
    /// [`SVIX_TOLERANCE_SECS`] of `now_secs`.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), SvixError> {
        let ts: i64 = timestamp.trim().parse().map_err(|_| SvixError::Malformed)?;
        if id.is_empty() || signatures.trim().is_empty() {
            return Err(SvixError::Malformed);
        }
        if (now_secs - ts).abs() > SVIX_TOLERANCE_SECS {
            return Err(SvixError::Stale);
        }
        let expected = self.sign(id, ts, body);
        let matched = signatures
            .split_whitespace()
            .filter(|s| s.starts_with("v1,"))
            .fold(false, |any, s| {
                any | bool::from(expected.as_bytes().ct_eq(s.as_bytes()))
            });
        if matched {
            Ok(())
        } else {
            Err(SvixError::Mismatch)
        }
    }
}

impl std::fmt::Debug for SvixSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SvixSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Twilio's published example.
    #[test]
    fn twilio_published_example_verifies() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        // Given out of order: the signature sorts them.
        let p = params(&[
            ("To", "+18005551212"),
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("Caller", "+12349013030"),
        ]);
        assert_eq!(
            twilio_sign("12345", url, &p),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(twilio_verify(
            "12345",
            url,
            &p,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!twilio_verify(
            "12346",
            url,
            &p,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        let mut tampered = p.clone();
        tampered[2].1 = "1235".into();
        assert!(!twilio_verify(
            "12345",
            url,
            &tampered,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!twilio_verify(
            "12345",
            "https://mycompany.com/myapp.php",
            &p,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!twilio_verify("12345", url, &p, ""));
    }

    /// Svix's published example.
    #[test]
    fn svix_published_example_verifies() {
        let secret = SvixSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(secret.sign(id, ts, body), sig);
        assert_eq!(secret.verify(id, "1614265330", sig, body, ts), Ok(()));
        // Several signatures (a key rotation): any one may match.
        let several = format!("v1,bm90IGl0 {sig} v2,other");
        assert_eq!(
            secret.verify(id, "1614265330", &several, body, ts + 299),
            Ok(())
        );
        assert_eq!(
            secret.verify(id, "1614265330", sig, body, ts + 301),
            Err(SvixError::Stale)
        );
        assert_eq!(
            secret.verify(id, "1614265330", sig, body, ts - 301),
            Err(SvixError::Stale)
        );
        assert_eq!(
            secret.verify(id, "1614265330", sig, br#"{"test": 2432232315}"#, ts),
            Err(SvixError::Mismatch)
        );
        assert_eq!(
            secret.verify("msg_other", "1614265330", sig, body, ts),
            Err(SvixError::Mismatch)
        );
        assert_eq!(
            secret.verify(id, "soon", sig, body, ts),
            Err(SvixError::Malformed)
        );
        assert_eq!(
            secret.verify(id, "1614265330", "", body, ts),
            Err(SvixError::Malformed)
        );
        assert!(SvixSecret::parse("whsec_!!").is_none());
        assert_eq!(format!("{secret:?}"), "SvixSecret(***)");
    }
}
