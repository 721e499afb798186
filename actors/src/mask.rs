//! Masking of personal data for logs, headers and error details:
//! `+1555***4567`, `j***@example.com`.

/// Masks a phone number, keeping the first five and last four characters
/// when it is long enough to still be unidentifiable.
pub fn phone(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    if chars.len() >= 11 {
        let head: String = chars[..5].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}***{tail}")
    } else if chars.len() > 4 {
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("***{tail}")
    } else {
        "***".to_owned()
    }
}

/// Masks an email address, keeping the first character of the local part and
/// the domain.
pub fn email(e: &str) -> String {
    match e.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Masks a channel's address: a phone number for SMS, an email address for
/// email.
pub fn address(channel: crate::model::Channel, a: &str) -> String {
    match channel {
        crate::model::Channel::Sms => phone(a),
        crate::model::Channel::Email => email(a),
    }
}

/// Masks whatever in free text looks like a phone number (a run of 7+ digits,
/// optionally led by `+`) or an email address. For provider error messages,
/// which often quote the address they refused.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&scrub_word(word));
    }
    out
}

fn scrub_word(word: &str) -> String {
    let trimmed = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '+');
    if trimmed.is_empty() {
        return word.to_owned();
    }
    let masked = if trimmed.contains('@') {
        email(trimmed)
    } else if trimmed.chars().filter(|c| c.is_ascii_digit()).count() >= 7
        && trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || "+-().".contains(c))
    {
        phone(trimmed)
    } else {
        return word.to_owned();
    };
    word.replacen(trimmed, &masked, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phone_like_the_style_guide() {
        assert_eq!(phone("+15551234567"), "+1555***4567");
        assert_eq!(phone("12345"), "***45");
        assert_eq!(phone("123"), "***");
    }

    #[test]
    fn masks_email_like_the_style_guide() {
        assert_eq!(email("jane@example.com"), "j***@example.com");
        assert_eq!(email("nope"), "***");
    }

    #[test]
    fn scrub_masks_addresses_inside_text() {
        let s = scrub("The 'To' number +15005550001 is not valid, nor is 'jane@example.com'.");
        assert!(!s.contains("15005550001"), "{s}");
        assert!(!s.contains("jane@"), "{s}");
        assert!(s.contains("+1500***0001"), "{s}");
        assert!(s.contains("j***@example.com"), "{s}");
        assert_eq!(scrub("error 21211 at step 3"), "error 21211 at step 3");
    }
}
