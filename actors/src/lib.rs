//! herald's actors.
//!
//! # Layout
//! - [`model`]: channels, jobs, receipts, provider errors and the client trait.
//! - [`mask`]: masking of phone numbers and emails for logs and headers.
//! - [`ticket`]: the settle-once handle for a broker delivery.
//! - [`ports`]: what the actors need from the edges (broker publishes, queue stats).
//! - [`rate_limiter`]: GCRA, the limiter behind every class and provider rate.
//! - [`pace`]: a limit as the actors obey it: local, or shared by every
//!   instance through Redis with a local fallback.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`segments`]: SMS segment counting (GSM-7 / UCS-2) for cost.
//! - [`metrics`]: the Prometheus families SPEC.md names.
//! - [`messages`]: every message the actors exchange.
//! - [`registry`]: where actors find each other's current address.
//! - Actors, one file each: [`supervisor`] (`Supervisor`), [`class_sender`]
//!   (`ClassSender`), [`provider`] (`Provider`), [`fallback`] (`Fallback`),
//!   [`journal`] (`Journal`), [`metrics_actor`] (`MetricsActor`).

pub mod backoff;
pub mod class_sender;
pub mod fallback;
pub mod journal;
pub mod mask;
pub mod messages;
pub mod metrics;
pub mod metrics_actor;
pub mod model;
pub mod pace;
pub mod ports;
pub mod provider;
pub mod rate_limiter;
pub mod registry;
pub mod segments;
pub mod supervisor;
pub mod ticket;
