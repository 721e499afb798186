//! `herald check-config` in one run: every problem, each with its key path.
//!
//! The CLI is wired elsewhere; this drives the same code path
//! (`Config::from_toml_str`, which `Config::check` uses after reading the
//! file) with a config holding three different kinds of mistake, and checks
//! that all three are reported together.

use herald::config::{Config, ConfigError, SHIPPED_CONFIG};

/// A config with an unknown key (a typo), a negative rate and a class with no
/// channel.
const BROKEN: &str = r#"
[amqp]
prefech = 32

[classes.payment_reminder]
priority = 2
channel = "sms"
fallback = "email"
rate_limit = { sms = -5, email = 10 }
retries = 2
base_delay_secs = 300

[classes.monthly_report]
priority = 5
rate_limit = { sms = 0, email = 10 }
retries = 2
base_delay_secs = 1800
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn check(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, &no_env)
}

#[test]
fn reports_every_problem_with_its_key_path() {
    let err = check(BROKEN).expect_err("the broken config must not load");
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "amqp.prefech: unknown key",
            "classes.monthly_report.channel: missing (\"sms\" or \"email\")",
            "classes.payment_reminder.rate_limit.sms: must be >= 0, got -5",
        ]
    );
}

#[test]
fn display_prints_one_problem_per_line() {
    let shown = check(BROKEN).unwrap_err().to_string();
    assert_eq!(
        shown,
        "amqp.prefech: unknown key\n\
         classes.monthly_report.channel: missing (\"sms\" or \"email\")\n\
         classes.payment_reminder.rate_limit.sms: must be >= 0, got -5"
    );
}

#[test]
fn fixing_the_problems_makes_it_load() {
    let fixed = BROKEN
        .replace("prefech = 32", "prefetch = 32")
        .replace("sms = -5", "sms = 5")
        .replace("priority = 5\n", "priority = 5\nchannel = \"email\"\n");
    let config = check(&fixed).expect("fixed config loads");
    assert_eq!(config.amqp.prefetch, 32);
    assert_eq!(config.classes.len(), 2);
}

#[test]
fn the_shipped_config_is_clean() {
    if let Err(e) = check(SHIPPED_CONFIG) {
        panic!("config/herald.toml has problems:\n{e}");
    }
}
