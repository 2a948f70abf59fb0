//! A flag one side sets and one task waits for: an atomic flag and an atomic waker, without a
//! lock. The task that waits is a connection's, which polls what it waits for at every wake, so
//! a poll must cost a load or two (a `Notify` takes its lock at every poll).

use atomic_waker::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// A flag and the one task to wake when it is set. Held in an `Arc`, it is also a waker of its
/// own ([`Wake`]): waking it sets it, so a future polled with it tells whether it was woken.
#[derive(Debug, Default)]
pub struct Signal {
    set: AtomicBool,
    task: AtomicWaker,
}

impl Signal {
    /// A signal that is set already.
    pub fn new_set() -> Signal {
        let s = Signal::default();
        s.set.store(true, Ordering::Relaxed);
        s
    }

    /// Sets the flag and wakes the task that waits for it.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Makes `cx`'s task the one a later [`Signal::set`] wakes.
    pub fn register(&self, cx: &Context<'_>) {
        self.task.register(cx.waker());
    }

    /// Clears the flag, telling whether it was set.
    pub fn take(&self) -> bool {
        self.set.swap(false, Ordering::AcqRel)
    }

    /// Ready once the flag is set (it stays set); until then `cx`'s task is woken when it is.
    pub fn poll_set(&self, cx: &Context<'_>) -> Poll<()> {
        if self.set.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.register(cx);
        // Set between the load and the registration: its wake found no task.
        match self.set.load(Ordering::Acquire) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.set();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set();
    }
}

/// A waker that sets `signal` when woken.
pub fn waker(signal: &Arc<Signal>) -> Waker {
    Waker::from(signal.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_set_signal_wakes_its_task_once_and_stays_set_until_taken() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let cx = Context::from_waker(&task);
        let s = Signal::default();
        assert_eq!(s.poll_set(&cx), Poll::Pending);
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        s.set();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // It stays set for every later poll, and wakes nobody again on its own.
        assert_eq!(s.poll_set(&cx), Poll::Ready(()));
        assert_eq!(s.poll_set(&cx), Poll::Ready(()));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(s.take());
        assert!(!s.take());
        assert_eq!(s.poll_set(&cx), Poll::Pending);
    }

    #[test]
    fn waking_its_waker_sets_it_and_wakes_the_registered_task() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let s = Arc::new(Signal::new_set());
        assert!(s.take(), "made set");
        s.register(&Context::from_waker(&task));
        let w = waker(&s);
        w.wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(s.take());
        // A wake is spent on the task registered: it is woken again only once registered again.
        w.wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(s.take());
        s.register(&Context::from_waker(&task));
        w.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(s.take());
    }
}
