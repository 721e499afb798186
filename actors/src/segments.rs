//! SMS segments as Twilio bills them: a GSM-7 body fits 160 characters in
//! one segment and 153 per segment when split; any character outside GSM-7
//! makes the whole body UCS-2: 70, and 67 per segment when split.

/// The GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: each costs two septets (escape + char).
const GSM7_EXTENDED: &str = "^{}\\[~]|€\x0c";

/// The encoding Twilio will use for a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// How a body will be encoded and how many segments it takes.
pub fn count(body: &str) -> (Encoding, u32) {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in body.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    if gsm {
        (Encoding::Gsm7, parts(septets, 160, 153))
    } else {
        // UCS-2 counts UTF-16 code units: an emoji is two.
        let units = body.encode_utf16().count();
        (Encoding::Ucs2, parts(units, 70, 67))
    }
}

/// Segments only.
pub fn segments(body: &str) -> u32 {
    count(body).1
}

fn parts(len: usize, single: usize, multi: usize) -> u32 {
    if len <= single {
        1
    } else {
        len.div_ceil(multi) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_bodies() {
        assert_eq!(count(""), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(200)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(307)), (Encoding::Gsm7, 3));
        // Extension characters take two septets.
        assert_eq!(count(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"€".repeat(81)), (Encoding::Gsm7, 2));
    }

    #[test]
    fn one_emoji_makes_it_ucs2() {
        let body = format!("{}👍", "a".repeat(69));
        assert_eq!(body.chars().count(), 70);
        // 69 + 2 UTF-16 units = 71 > 70: two segments.
        assert_eq!(count(&body), (Encoding::Ucs2, 2));
        assert_eq!(count("hi 👍"), (Encoding::Ucs2, 1));
        assert_eq!(count(&format!("{}👍", "a".repeat(70))), (Encoding::Ucs2, 2));
    }
}
