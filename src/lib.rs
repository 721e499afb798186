//! herald: an actor-based notification engine.
//!
//! # Layout
//! - [`config`]: the TOML config, environment overrides and `check-config`.
//! - [`event`]: decoding and validating a published event into a job.
//! - [`template`]: `{placeholder}` rendering.
//! - [`amqp`]: the broker edge: topology, consumers, the confirmed publisher.
//! - [`providers`]: the Twilio, Resend and sandbox clients.
//! - [`fakes`]: local fake Twilio and Resend servers for tests and `herald bench`.
//! - [`store`]: the delivery store (SQLite or PostgreSQL): claims, outcomes, retention.
//! - [`journal`]: the delivery store behind the actors' journal port.
//! - [`limits`]: rate limits shared by every instance, in Redis (the actors'
//!   shared-limits port).
//! - [`bench`]: `herald bench`, the benchmark harness.
//! - [`api`]: the admin API under `/api` (bearer token) and its OpenAPI document.
//! - [`controls`]: what operators change live: pause/resume, rate limits, reload.
//! - [`dashboard`]: the live dashboard page at `/`.
//! - [`http`]: the one HTTP listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`webhooks`]: the providers' callbacks (opt-outs), signatures checked.
//! - [`schedule`]: when an event may go out (send_at, local time, quiet hours).
//! - [`scheduler`]: holds events in the store until then, and publishes them back.
//! - [`recurring`]: `[[schedules]]`, recurring events on a cron pattern.
//! - [`engine`]: wires everything together and runs it.
//! - [`dlq`]: listing, replaying and purging dead letters (CLI and API).
//! - [`telemetry`]: logging set-up.
//!
//! The actors themselves live in the `herald-actors` crate.

pub mod amqp;
pub mod api;
pub mod bench;
pub mod config;
pub mod controls;
pub mod dashboard;
pub mod dlq;
pub mod engine;
pub mod event;
pub mod fakes;
pub mod http;
pub mod journal;
pub mod limits;
pub mod offload;
pub mod providers;
pub mod recurring;
pub mod schedule;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod webhooks;
