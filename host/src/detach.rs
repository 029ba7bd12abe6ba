//! Runs a call in its caller's task, and finishes it on the runtime if the
//! caller stops waiting.
//!
//! A call dropped between the provider's rotation of the refresh token and
//! the durable write of the result would lose the grant, so an unfinished
//! call is never cancelled: dropping [`Detached`] hands it to the runtime.
//! Spawning every call as a task up front did the same but cost a task
//! hand-off per call (~15 µs of a ~20 µs loopback request in the bench).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::runtime::Handle;

/// A `'static` future polled in place until it completes; if dropped
/// before that, spawned on the runtime it was started on.
pub(crate) struct Detached<F: Future<Output: Send> + Send + 'static> {
    future: Option<Pin<Box<F>>>,
    runtime: Handle,
}

impl<F: Future<Output: Send> + Send + 'static> Detached<F> {
    /// `None` outside a tokio runtime.
    pub(crate) fn new(future: F) -> Option<Self> {
        Some(Detached {
            runtime: Handle::try_current().ok()?,
            future: Some(Box::pin(future)),
        })
    }
}

impl<F: Future<Output: Send> + Send + 'static> Future for Detached<F> {
    type Output = F::Output;

    /// Panics if polled again after it completed, as futures may.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let future = self.future.as_mut().expect("polled after completion");
        let done = future.as_mut().poll(cx);
        if done.is_ready() {
            self.future = None;
        }
        done
    }
}

impl<F: Future<Output: Send> + Send + 'static> Drop for Detached<F> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            drop(self.runtime.spawn(future));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Detached;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn a_dropped_future_still_completes() {
        let (started_tx, started) = oneshot::channel();
        let (go_tx, go) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        let detached = Detached::new(async move {
            started_tx.send(()).unwrap();
            go.await.unwrap();
            done_tx.send(()).unwrap();
        })
        .unwrap();
        let waiting = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                () = detached => panic!("must not finish before it is let go"),
                _ = started => {}
            }
        });
        waiting.await.expect("the future started");
        // The select dropped the unfinished future; it must still finish.
        go_tx.send(()).unwrap();
        done.await.expect("the dropped future ran to its end");
    }

    #[tokio::test]
    async fn a_finished_future_is_not_run_again() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        Detached::new(async move { tx.send(()).unwrap() })
            .unwrap()
            .await;
        assert!(rx.recv().await.is_some());
        assert!(
            rx.recv().await.is_none(),
            "ran once, and the sender is gone"
        );
    }
}
