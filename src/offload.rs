//! The I/O runtime: provider HTTP calls and delivery-store statements run on
//! their own worker threads, so the actor thread (actix's single-threaded
//! system) only decides and routes. Profiling `herald bench` showed the
//! actor thread saturated while the process used under one core: a third of
//! it went to building and parsing HTTP requests, a sixth to binding store
//! rows.
//!
//! One runtime per process, built on first use and never dropped (dropping
//! a runtime inside another one panics; the process exit ends its threads).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_actors::model::{FailureKind, Outbound, ProviderClient, Receipt, SendError};
use tokio::runtime::{Builder, Handle, Runtime};

static IO: OnceLock<Runtime> = OnceLock::new();

/// The I/O runtime's handle: one worker per core, at most four.
pub fn handle() -> &'static Handle {
    IO.get_or_init(|| {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get().clamp(1, 4))
            .unwrap_or(2);
        Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("herald-io")
            .enable_all()
            .build()
            .expect("the I/O runtime starts")
    })
    .handle()
}

/// Runs `fut` on the I/O runtime; `None` if it panicked.
pub async fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
    handle().spawn(fut).await.ok()
}

/// A provider client whose calls run on the I/O runtime.
pub struct Offloaded(pub Arc<dyn ProviderClient>);

impl ProviderClient for Offloaded {
    fn send(&self, msg: Outbound) -> BoxFuture<'static, Result<Receipt, SendError>> {
        let call = self.0.send(msg);
        async move {
            run(call).await.unwrap_or_else(|| {
                // The call may have reached the provider before it failed.
                Err(SendError::new(
                    FailureKind::Timeout,
                    "the provider call failed inside herald",
                ))
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn work_runs_on_the_io_threads_and_a_panic_is_none() {
        let name = run(async { std::thread::current().name().map(str::to_owned) }).await;
        assert_eq!(name.flatten().as_deref(), Some("herald-io"));
        let panicked: Option<()> = run(async { panic!("boom") }).await;
        assert!(panicked.is_none());
    }
}
