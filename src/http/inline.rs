//! The executor rouse gives hyper's HTTP/2 connections: what a connection hands it (on the
//! server side each stream's request, on the client side each request's body and response)
//! runs inside the connection's own task, beside the connection, instead of in a tokio task
//! of its own.
//!
//! Why: a tokio task is one allocation aligned to 128 bytes, which glibc's allocator serves
//! by its slow aligned path (carving an aligned block out of a larger one and freeing the
//! rest), about 1,400 instructions each; hyper spawns one for each stream it serves and two
//! for each request it sends, so an HTTP/2 request proxied to an HTTP/2 backend paid for three.
//! Here each is an ordinary box in a [`FuturesUnordered`], which polls only the futures whose
//! wakers fired. A stream that panics ends alone, as its task would have.

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Hands hyper's futures to the [`drive`] of the connection it was made for; on tokio's
/// work-stealing runtime (`--work-stealing`), to tokio as tasks of their own instead, so that
/// the streams of one connection still spread over the CPUs, which is what that runtime is
/// chosen for.
#[derive(Clone)]
pub struct Inline(Arc<Inbox>);

#[derive(Default)]
struct Inbox {
    /// Each future a tokio task (the work-stealing runtime).
    spawn: bool,
    /// Handed over and not yet taken by the drive.
    jobs: Mutex<Vec<Job>>,
    /// The connection's task, woken when a job is handed over.
    waker: atomic_waker::AtomicWaker,
    /// The drive is being polled, and takes what is handed over before that poll ends: no
    /// wakeup is needed (hyper hands over nearly everything from inside that poll, and each
    /// wakeup cost a second poll of the whole connection).
    polling: AtomicBool,
}

impl Inline {
    /// For a connection served on the runtime this is called on.
    pub fn new() -> Self {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let spawn =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        Inline(Arc::new(Inbox {
            spawn,
            ..Inbox::default()
        }))
    }

    /// Anything handed over and not yet taken.
    fn pending(&self) -> bool {
        !self
            .0
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn take(&self, into: &mut FuturesUnordered<Job>) -> bool {
        let mut jobs = self.0.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let any = !jobs.is_empty();
        into.extend(jobs.drain(..));
        any
    }
}

impl Default for Inline {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> hyper::rt::Executor<F> for Inline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        if self.0.spawn {
            tokio::spawn(fut);
            return;
        }
        // The box first, then the job made into it, rather than made on the stack and copied
        // in (a stream's future is a few KB).
        let slot = Box::new_uninit();
        let job = Box::write(
            slot,
            AssertUnwindSafe(fut).catch_unwind().map(|r| {
                if r.is_err() {
                    tracing::error!(
                        "a future of an HTTP/2 connection panicked; the connection goes on"
                    );
                }
            }),
        );
        self.0
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::into_pin(job));
        if !self.0.polling.load(Ordering::SeqCst) {
            self.0.waker.wake();
        }
    }
}

/// Runs `main` (the connection) and the futures handed to `exec` beside it, until `main` and
/// every one of them has finished: a stream still answering when its connection ends is let
/// finish, as a task of its own would have been.
pub async fn drive<F: Future>(exec: Inline, main: F) -> F::Output {
    // Dropped as soon as it ends: a client connection gives back the requests still queued
    // for it only when dropped.
    let mut main = std::pin::pin!(Some(main));
    let mut out = None;
    // With a future that never ends and is never woken among the jobs: FuturesUnordered
    // wakes its task again whenever it has polled every future it holds in one go, to let
    // other tasks run, and with the one job a client connection mostly has (its reading and
    // writing), that was every time, each wakeup costing a second poll of the connection.
    // With this one there, it has never polled them all.
    let mut jobs: FuturesUnordered<Job> = FuturesUnordered::new();
    jobs.push(Box::pin(std::future::pending()));
    // Its one poll done here, where the set's wakeup of its task (it has polled all it
    // holds) goes nowhere.
    let _ = jobs.poll_next_unpin(&mut Context::from_waker(std::task::Waker::noop()));
    std::future::poll_fn(|cx: &mut Context<'_>| {
        exec.0.waker.register(cx.waker());
        exec.0.polling.store(true, Ordering::SeqCst);
        // The jobs first: on the client side one of them is the connection's reading and
        // writing, and a connection the backend has closed must be seen closed before the
        // dispatch (`main`) starts a queued request on it; that request is then handed back
        // unsent, to go out on a new connection, instead of failing.
        while let Poll::Ready(Some(())) = jobs.poll_next_unpin(cx) {}
        if let Some(m) = main.as_mut().as_pin_mut()
            && let Poll::Ready(v) = m.poll(cx)
        {
            out = Some(v);
            main.set(None);
        }
        // Jobs handed over by the connection's poll (or by another job's) are polled before
        // this poll ends: each must be polled before it can ask to be woken. The connection
        // is not polled again for them: what a job needs of it, it asks for with a wakeup.
        while exec.take(&mut jobs) {
            while let Poll::Ready(Some(())) = jobs.poll_next_unpin(cx) {}
        }
        exec.0.polling.store(false, Ordering::SeqCst);
        // A job handed over from another thread after the last look, while `polling` was
        // still set, woke no one: this poll is its wakeup.
        if exec.pending() {
            cx.waker().wake_by_ref();
        }
        // Only the future that never ends is left.
        if jobs.len() == 1
            && let Some(v) = out.take()
        {
            return Poll::Ready(v);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn jobs_run_beside_the_connection_and_outlive_it() {
        let exec = Inline::new();
        let done = Arc::new(AtomicUsize::new(0));
        let (release, held) = oneshot::channel::<()>();
        let (tx, rx) = oneshot::channel();
        let main = {
            let (exec, done) = (exec.clone(), done.clone());
            async move {
                // A job that ends at once, and one that waits past the connection's end.
                let d = done.clone();
                exec.execute(async move {
                    d.fetch_add(1, Ordering::SeqCst);
                });
                let d = done.clone();
                exec.execute(async move {
                    let _ = held.await;
                    d.fetch_add(10, Ordering::SeqCst);
                });
                tokio::task::yield_now().await;
                tx.send(done.load(Ordering::SeqCst)).unwrap();
                "connection ended"
            }
        };
        let drive = tokio::spawn(drive(exec, main));
        // The first job ran before the connection ended; the second still waits.
        assert_eq!(rx.await.unwrap(), 1);
        tokio::task::yield_now().await;
        assert!(!drive.is_finished(), "the drive waits for the held job");
        release.send(()).unwrap();
        assert_eq!(drive.await.unwrap(), "connection ended");
        assert_eq!(done.load(Ordering::SeqCst), 11);
    }

    /// A connection whose future has ended, and tells when it is dropped.
    struct Ended(Arc<std::sync::atomic::AtomicBool>);

    impl Future for Ended {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_connection_is_dropped_when_it_ends_not_with_the_last_job() {
        let exec = Inline::new();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (release, held) = oneshot::channel::<()>();
        exec.execute(async move {
            let _ = held.await;
        });
        let drive = tokio::spawn(drive(exec, Ended(dropped.clone())));
        tokio::task::yield_now().await;
        assert!(!drive.is_finished());
        assert!(
            dropped.load(Ordering::SeqCst),
            "still kept while a job runs"
        );
        release.send(()).unwrap();
        drive.await.unwrap();
    }

    /// The connection's future, counting its polls; on its first it hands over a job that
    /// ends at once, and it ends when `end` is sent.
    struct Counted {
        exec: Inline,
        polls: Arc<AtomicUsize>,
        end: oneshot::Receiver<()>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
                self.exec.execute(async {});
            }
            Pin::new(&mut self.end).poll(cx).map(|_| ())
        }
    }

    #[tokio::test]
    async fn the_connection_is_polled_again_only_when_woken() {
        let exec = Inline::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let (end, rx) = oneshot::channel();
        let main = Counted {
            exec: exec.clone(),
            polls: polls.clone(),
            end: rx,
        };
        let drive = tokio::spawn(drive(exec, main));
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        // Neither the job handed over nor its end made the drive poll the connection again.
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        end.send(()).unwrap();
        drive.await.unwrap();
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_work_stealing_runtime_each_job_is_a_task() {
        let exec = Inline::new();
        let (tx, rx) = oneshot::channel();
        let main = {
            let exec = exec.clone();
            async move {
                exec.execute(async move {
                    let _ = tx.send(());
                });
            }
        };
        // The drive ends with its connection: the job is tokio's, and runs all the same.
        drive(exec.clone(), main).await;
        assert!(exec.0.jobs.lock().unwrap().is_empty());
        rx.await.unwrap();
    }

    #[tokio::test]
    async fn a_job_that_panics_ends_alone() {
        let exec = Inline::new();
        let done = Arc::new(AtomicUsize::new(0));
        let main = {
            let (exec, done) = (exec.clone(), done.clone());
            async move {
                exec.execute(async { panic!("one stream's fault") });
                let d = done.clone();
                exec.execute(async move {
                    tokio::task::yield_now().await;
                    d.fetch_add(1, Ordering::SeqCst);
                });
                tokio::task::yield_now().await;
            }
        };
        drive(exec, main).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
