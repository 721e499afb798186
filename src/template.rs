//! `{placeholder}` rendering for bodies and subjects.
//!
//! `{name}` is replaced by `data["name"]` (names are letters, digits, `_`,
//! `.` and `-`); `{{` and `}}` stand for literal braces; a `{` that does not
//! open a placeholder is kept as it is. A placeholder with no value is an
//! error: herald never sends a message that says `{bill_name}`.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("placeholder {{{0}}} has no value in data")]
    Missing(String),
}

/// Renders `template` with `data`, falling back to `extra` for names `data`
/// lacks (e.g. the recipient's `name`).
pub fn render(
    template: &str,
    data: &Map<String, Value>,
    extra: &[(&str, &str)],
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        match placeholder(&tail[1..]) {
            Some(name) => {
                out.push_str(&lookup(name, data, extra)?);
                rest = &tail[name.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholder name at the start of `s` if `s` is `name}...`.
fn placeholder(s: &str) -> Option<&str> {
    let end = s.find('}')?;
    let name = &s[..end];
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    valid.then_some(name)
}

fn lookup(
    name: &str,
    data: &Map<String, Value>,
    extra: &[(&str, &str)],
) -> Result<String, TemplateError> {
    match data.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => extra
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .ok_or_else(|| TemplateError::Missing(name.to_owned())),
        Some(other) => Ok(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn renders_the_spec_example() {
        let d = data(
            json!({"bill_name": "Electric Bill", "due_date": "2025-01-15", "amount": "125.50"}),
        );
        assert_eq!(
            render("Reminder: {bill_name} due {due_date} - ${amount}", &d, &[]).unwrap(),
            "Reminder: Electric Bill due 2025-01-15 - $125.50"
        );
    }

    #[test]
    fn a_missing_placeholder_is_an_error() {
        let d = data(json!({}));
        assert_eq!(
            render("Hi {bill_name}", &d, &[]),
            Err(TemplateError::Missing("bill_name".into()))
        );
        let d = data(json!({"bill_name": null}));
        assert!(render("Hi {bill_name}", &d, &[]).is_err());
    }

    #[test]
    fn numbers_escapes_and_stray_braces() {
        let d = data(json!({"n": 3, "ok": true}));
        assert_eq!(render("{n} {ok}", &d, &[]).unwrap(), "3 true");
        assert_eq!(render("{{n}} { n } {", &d, &[]).unwrap(), "{n} { n } {");
        assert_eq!(render("a}b", &d, &[]).unwrap(), "a}b");
        assert_eq!(
            render("Hi {name}", &d, &[("name", "Jane")]).unwrap(),
            "Hi Jane"
        );
    }

    proptest! {
        /// Text without braces renders to itself.
        #[test]
        fn brace_free_text_is_unchanged(s in "[^{}]{0,200}") {
            prop_assert_eq!(render(&s, &Map::new(), &[]).unwrap(), s);
        }

        /// With every placeholder supplied, no placeholder survives and each
        /// value appears.
        #[test]
        fn supplied_placeholders_are_all_replaced(
            parts in proptest::collection::vec(("[a-z ]{0,10}", "[a-z_]{1,8}", "[A-Za-z0-9 ]{0,10}"), 1..8)
        ) {
            let mut template = String::new();
            let mut d = Map::new();
            for (text, name, value) in &parts {
                template.push_str(text);
                template.push('{');
                template.push_str(name);
                template.push('}');
                d.entry(name.clone()).or_insert_with(|| Value::String(value.clone()));
            }
            let out = render(&template, &d, &[]).unwrap();
            prop_assert!(!out.contains('{'), "a brace survived: {}", out);
            for name in d.keys() {
                let v = d[name].as_str().unwrap();
                prop_assert!(out.contains(v));
            }
        }
    }
}
