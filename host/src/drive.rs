//! Who polls a call: its caller, and a task of its own once it refreshes.
//!
//! A call that spends a refresh token must reach the durable write of the
//! rotated one whatever its caller does: drops the `send` future, or keeps
//! it without polling it. A task per call guarantees that, but on an idle
//! machine each hand-off between the caller's task and the call's wakes a
//! halted CPU: measured here, a warm request took 166 µs instead of 33. So
//! a call is polled in its caller's task until it begins a refresh (the
//! host saw `acquire-refresh-lease`); then a task of its own takes over
//! polling it, and the caller waits for the result. A caller that drops the
//! future before that point drops the call (no refresh token has left; a
//! lease taken is released by the call's state when dropped).

use crate::error::Error;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::runtime::Handle;

/// A call's result: a `send`'s response, a `keepalive`'s outcome.
type Outcome<T> = Result<T, Error>;
type Call<T> = Pin<Box<dyn Future<Output = Outcome<T>> + Send>>;

/// Set by the call when it begins a refresh: from then on it must finish.
#[derive(Clone, Default)]
pub(crate) struct MustFinish(Arc<AtomicBool>);

impl MustFinish {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Polls `call` in the caller's task; see the module's comment.
pub(crate) async fn drive<T: Send + 'static>(
    call: impl Future<Output = Outcome<T>> + Send + 'static,
    must_finish: MustFinish,
) -> Outcome<T> {
    let Ok(runtime) = Handle::try_current() else {
        return Err(Error::Component(
            "rekey calls run on a tokio runtime".into(),
        ));
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State::Running(Box::pin(call))),
        caller: Mutex::new(None),
        helper_started: AtomicBool::new(false),
    });
    CallerSide {
        shared,
        must_finish,
        runtime,
    }
    .await
}

struct Shared<T> {
    state: Mutex<State<T>>,
    caller: Mutex<Option<Waker>>,
    helper_started: AtomicBool,
}

enum State<T> {
    Running(Call<T>),
    Done(Option<Outcome<T>>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while these are held (the call's panics are caught).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Shared<T> {
    /// Polls the call with `waker` (only the latest poll's waker is woken:
    /// the caller's until the helper starts, then the helper's), unless the
    /// other side is polling it at this moment. Ready once it is done.
    fn poll_call(&self, waker: &Waker, by_helper: bool) -> Poll<()> {
        let Ok(mut state) = self.state.try_lock() else {
            return Poll::Pending;
        };
        let State::Running(call) = &mut *state else {
            return Poll::Ready(());
        };
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            call.as_mut().poll(&mut Context::from_waker(waker))
        }));
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => outcome,
            Err(_) => Err(Error::Component("the call panicked".into())),
        };
        *state = State::Done(Some(outcome));
        drop(state);
        if by_helper {
            // Done by the helper: tell the caller. (Not when the caller is
            // the poller: waking the running task would have it scheduled
            // again, on another core, for nothing.)
            if let Some(w) = lock(&self.caller).as_ref() {
                w.wake_by_ref();
            }
        }
        Poll::Ready(())
    }
}

struct CallerSide<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    must_finish: MustFinish,
    runtime: Handle,
}

impl<T: Send + 'static> CallerSide<T> {
    fn start_helper(&self) {
        if !self.shared.helper_started.swap(true, Ordering::AcqRel) {
            drop(self.runtime.spawn(HelperSide(self.shared.clone())));
        }
    }
}

impl<T: Send + 'static> Future for CallerSide<T> {
    type Output = Outcome<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        *lock(&self.shared.caller) = Some(cx.waker().clone());
        // Once the helper drives the call, the caller only waits for it.
        if !self.shared.helper_started.load(Ordering::Acquire)
            && self.shared.poll_call(cx.waker(), false).is_pending()
        {
            if self.must_finish.is_set() {
                self.start_helper();
            }
            return Poll::Pending;
        }
        match &mut *lock(&self.shared.state) {
            State::Done(outcome) => Poll::Ready(
                outcome
                    .take()
                    .unwrap_or_else(|| Err(Error::Component("the call's result was taken".into()))),
            ),
            State::Running(_) => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for CallerSide<T> {
    fn drop(&mut self) {
        *lock(&self.shared.caller) = None;
        // A call that began a refresh finishes without its caller. (Locked:
        // the helper is polling it, so it has started.)
        let running = self
            .shared
            .state
            .try_lock()
            .is_ok_and(|s| matches!(*s, State::Running(_)));
        if running && self.must_finish.is_set() {
            self.start_helper();
        }
    }
}

/// The call's own task, from the start of a refresh: polls until it is done.
struct HelperSide<T>(Arc<Shared<T>>);

impl<T> Future for HelperSide<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_call(cx.waker(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::{MustFinish, drive};
    use crate::error::Error;
    use std::time::Duration;
    use tokio::sync::oneshot;

    fn ok() -> super::Outcome<crate::Response> {
        Err(Error::Component("done".into()))
    }

    #[tokio::test]
    async fn a_call_that_must_finish_finishes_without_its_caller() {
        let must = MustFinish::default();
        let (go_tx, go) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        let (set_tx, set) = oneshot::channel();
        let flag = must.clone();
        let caller = drive(
            async move {
                flag.set();
                set_tx.send(()).unwrap();
                go.await.unwrap();
                done_tx.send(()).unwrap();
                ok()
            },
            must,
        );
        tokio::pin!(caller);
        tokio::select! {
            _ = &mut caller => panic!("finished before it was let go"),
            _ = set => {}
        }
        // The caller keeps the future and never polls it again.
        go_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(60), done)
            .await
            .expect("finished by its own task")
            .unwrap();
    }

    #[tokio::test]
    async fn a_call_that_need_not_finish_is_dropped_with_its_caller() {
        let (tx, rx) = oneshot::channel::<()>();
        let caller = drive(
            async move {
                let _keep = tx;
                std::future::pending::<()>().await;
                ok()
            },
            MustFinish::default(),
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(1), caller)
                .await
                .is_err()
        );
        // Dropped: its sender went with it.
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_an_unwind() {
        let out = drive(
            async {
                if true {
                    panic!("boom");
                }
                ok()
            },
            MustFinish::default(),
        )
        .await;
        assert!(matches!(out, Err(Error::Component(m)) if m.contains("panicked")));
    }
}
