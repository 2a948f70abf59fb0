//! Worker threads: a single-threaded runtime per CPU, each serving the client connections the
//! listeners hand it.
//!
//! tokio's default scheduler shares every task among its threads (work stealing): a request's
//! task may run on one thread while its sockets' readiness arrives on another, and each wakeup
//! pays for the queues and atomics that sharing needs. The workers here share nothing but the
//! proxy's state: a client connection stays on the worker it was handed to, with its requests
//! and their upstream exchanges, and the upstream connections a worker opens go back to its
//! own idle set (found by [`index`]), as nginx and HAProxy keep a connection on one worker.
//! The listeners accept on a thread of their own and hand each new connection to the worker
//! with the fewest open; control work (configuration, scaling, discovery, admin) stays on the
//! runtime the role runs on.
//!
//! The price: one connection never uses more than one CPU, which matters to an HTTP/2 client
//! that sends everything over one connection. `--work-stealing` keeps tokio's shared
//! scheduler for such loads.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker number; none on any other thread.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The process's workers, once [`install`]ed.
static INSTALLED: OnceLock<Arc<Workers>> = OnceLock::new();

/// This thread's worker number (none on a thread that is not a worker), for state kept per
/// worker.
pub fn index() -> Option<usize> {
    INDEX.get()
}

/// The process's workers, if any are installed.
pub fn installed() -> Option<&'static Arc<Workers>> {
    INSTALLED.get()
}

/// Makes `workers` the process's: the listeners made from now on hand their connections to
/// them. Once per process; a second call is refused and returns what it was given.
pub fn install(workers: Arc<Workers>) -> Result<(), Arc<Workers>> {
    INSTALLED.set(workers)
}

/// A thread of the set: what tells it to stop, and the thread.
type Running = (oneshot::Sender<()>, std::thread::JoinHandle<()>);

/// One worker: its runtime, and the client connections open on it.
struct Worker {
    handle: Handle,
    open: Arc<AtomicUsize>,
}

/// A set of worker threads, each with a single-threaded runtime. Dropping it stops them and
/// drops the tasks still on them.
pub struct Workers {
    workers: Box<[Worker]>,
    /// The listeners' accept loops run here: not on a worker, where they would wait behind
    /// its requests, nor on the role's runtime, where they would wait behind a reload or a
    /// burst of Kubernetes events.
    acceptor: Handle,
    /// Each thread's stop, and the thread.
    threads: Mutex<Vec<Running>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Starts `n` workers (at least 1), named `rouse-worker-0` and on, and the thread that
    /// accepts for them, `rouse-accept`.
    pub fn start(n: usize) -> std::io::Result<Arc<Workers>> {
        let mut workers = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1) + 1);
        for i in 0..n.max(1) {
            let (handle, thread) = runtime_thread(format!("rouse-worker-{i}"), Some(i))?;
            workers.push(Worker {
                handle,
                open: Arc::default(),
            });
            threads.push(thread);
        }
        let (acceptor, thread) = runtime_thread("rouse-accept".to_owned(), None)?;
        threads.push(thread);
        Ok(Arc::new(Workers {
            workers: workers.into_boxed_slice(),
            acceptor,
            threads: Mutex::new(threads),
        }))
    }

    /// Runs a listener's accept loop, `accept`, on the accepting thread.
    pub fn accept<F>(&self, accept: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.acceptor.spawn(accept)
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Never: a set has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Client connections open on each worker, in worker order.
    pub fn open(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs one client connection, `conn`, on the worker with the fewest open (the first of
    /// them on a tie), counted there until it ends.
    pub fn spawn<F>(&self, conn: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
            .expect("a set has at least one worker");
        // Counted from here, not from when the worker first polls it: the next connection,
        // accepted before that, must see this one.
        let open = Open::new(&w.open);
        w.handle.spawn(Counted { conn, _open: open });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let threads = std::mem::take(self.threads.get_mut().unwrap_or_else(|p| p.into_inner()));
        let mut running = Vec::with_capacity(threads.len());
        for (stop, thread) in threads {
            let _ = stop.send(());
            running.push(thread);
        }
        // A worker's runtime drops its tasks as its thread ends; not waited for from inside a
        // runtime, where blocking would stall that runtime's other tasks.
        if Handle::try_current().is_err() {
            for thread in running {
                let _ = thread.join();
            }
        }
    }
}

/// A thread named `name` running a single-threaded runtime until told to stop; `index` is
/// its worker number, if it is a worker.
fn runtime_thread(name: String, index: Option<usize>) -> std::io::Result<(Handle, Running)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        INDEX.set(index);
        // Until told to stop (or the set is dropped): the runtime drives its tasks' sockets
        // and timers while it waits here.
        let _ = rt.block_on(stopped);
    })?;
    Ok((handle, (stop, thread)))
}

pin_project_lite::pin_project! {
    /// A connection's future and its place in its worker's count, which ends when the future
    /// is dropped (as soon as it is done). The future is polled where it lies: an `async` block
    /// that awaited it kept it twice, once as what the block captured and once as what it
    /// awaited, and a connection's task is most of what a held HTTP/1.1 request costs (7.2 KB
    /// a held request with two workers against 4.8 KB with one, before).
    struct Counted<F> {
        #[pin]
        conn: F,
        _open: Open,
    }
}

impl<F: Future<Output = ()>> Future for Counted<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().conn.poll(cx)
    }
}

/// One open connection counted on its worker, until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task holds its future once, beside its count.
    #[test]
    fn a_counted_connection_is_its_future_and_a_pointer() {
        let conn = async {
            let held = [7u8; 4096];
            std::future::pending::<()>().await;
            std::hint::black_box(&held);
        };
        let size = std::mem::size_of_val(&conn);
        let count = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            conn,
            _open: Open::new(&count),
        };
        assert!(std::mem::size_of_val(&counted) <= size + 16, "{size}");
        assert_eq!(count.load(Ordering::Relaxed), 1);
        drop(counted);
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }

    /// Each connection goes to the worker with the fewest open, counted from the moment it is
    /// handed over until its future ends, and runs on that worker's thread.
    #[test]
    fn connections_go_to_the_least_busy_worker_and_are_counted_until_they_end() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let (ran, threads) = std::sync::mpsc::channel();
        let mut ends = Vec::new();
        for _ in 0..3 {
            let (end, ended) = oneshot::channel::<()>();
            ends.push(end);
            let ran = ran.clone();
            workers.spawn(async move {
                let me = std::thread::current().name().map(str::to_owned);
                ran.send((me, index())).unwrap();
                let _ = ended.await;
            });
        }
        assert_eq!(workers.open(), [2, 1]);
        let mut seen: Vec<_> = (0..3).map(|_| threads.recv().unwrap()).collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                (Some("rouse-worker-0".to_owned()), Some(0)),
                (Some("rouse-worker-0".to_owned()), Some(0)),
                (Some("rouse-worker-1".to_owned()), Some(1)),
            ]
        );
        // The first connection (on worker 0) ends: the next goes to worker 0 again, the one
        // with the fewest open now that both have one.
        ends.remove(0).send(()).unwrap();
        for _ in 0..5000 {
            if workers.open() == [1, 1] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(workers.open(), [1, 1]);
        let (end, ended) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _ = ended.await;
        });
        assert_eq!(workers.open(), [2, 1]);
        drop(end);
        drop(ends);
    }

    /// Dropping the set stops its threads, and the connections still on them are dropped
    /// (and uncounted) with their runtimes.
    #[test]
    fn dropping_the_set_stops_its_threads() {
        let workers = Workers::start(2).unwrap();
        let counts: Vec<_> = workers.workers.iter().map(|w| w.open.clone()).collect();
        let (_end, ended) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _ = ended.await;
        });
        assert_eq!(workers.open(), [1, 0]);
        drop(workers);
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn off_the_workers_there_is_no_index() {
        assert_eq!(index(), None);
        // No test installs workers.
        assert!(installed().is_none());
    }
}
