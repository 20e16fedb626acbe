//! The connection workers: single-threaded runtimes, one per core. Each connection a sandbox opens is
//! handed, when it is accepted, to its sandbox's worker, one of the first half, and lives there until it
//! closes, together with the upstream connections its requests use (`upstream` keeps one pool per
//! worker). A request therefore never wakes another thread: on a multi-threaded runtime the handoffs
//! between the client's task, the upstream connection's task and idle workers cost more CPU than the
//! proxying itself.
//!
//! The exception is an HTTP/1.1 connection that starts moving bulk data (`intercept`): it claims a
//! `BulkSlot` on the worker with the fewest such connections, any of them, and if that is another, moves
//! there between two responses, its socket (`MovableStream`) and TLS state with it.
//!
//! A worker with at most one request in flight is latency-bound: each step of the request waits for a
//! peer, and sleeping in the kernel between steps (then being woken on an idle core) costs more than the
//! step itself. Such a worker keeps polling its sockets for `SPIN` after its last request event instead of
//! sleeping. A busier worker never spins: it sleeps and handles events in batches, and the core it would
//! burn is worth more to its peers. "Busier" includes having had two requests in flight within the last
//! `CONCURRENT_HOLD`: a client that keeps several streams going passes through one in flight each time a
//! batch of responses ends, and spinning then takes the CPU from the very peers it waits for (measured:
//! HTTP/2 with 10 streams was 8% slower with it). At most one worker spins at a time, and none on a
//! single core.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

type Job = Box<dyn FnOnce() + Send>;

/// How long a lightly loaded worker polls after its last request event before it sleeps: longer than
/// one step of a kept-alive request (the upstream answering, the client sending the next one) takes.
const SPIN: Duration = Duration::from_micros(100);

/// How long after having two or more requests in flight a worker still counts as concurrent (and does not
/// spin): far longer than the gap between the batches of a client that keeps several requests going.
const CONCURRENT_HOLD: Duration = Duration::from_millis(10);

/// Whether some worker is spinning now.
static SPINNING: AtomicBool = AtomicBool::new(false);

/// What a worker's thread knows about itself.
struct Local {
    index: usize,
    shared: Arc<Shared>,
    may_spin: bool,
    in_flight: Cell<usize>,
    last_event: Cell<Instant>,
    concurrent_until: Cell<Instant>,
    spinning: Cell<bool>,
    wake_spinner: Arc<Notify>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// A request being proxied on this worker, from its head until its response ends (or is dropped).
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        LOCAL.with(|local| {
            if let Some(local) = &*local.borrow() {
                local.in_flight.set(local.in_flight.get() + 1);
                local.event();
            }
        });
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        LOCAL.with(|local| {
            if let Some(local) = &*local.borrow() {
                local.in_flight.set(local.in_flight.get().saturating_sub(1));
                local.event();
            }
        });
    }
}

impl Local {
    fn event(&self) {
        let now = Instant::now();
        self.last_event.set(now);
        if self.in_flight.get() > 1 {
            self.concurrent_until.set(now + CONCURRENT_HOLD);
        }
        if self.may_spin
            && !self.spinning.get()
            && self.latency_bound(now)
            && SPINNING
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.spinning.set(true);
            self.wake_spinner.notify_one();
        }
    }

    fn latency_bound(&self, now: Instant) -> bool {
        self.in_flight.get() <= 1 && now >= self.concurrent_until.get()
    }

    fn keep_spinning(&self) -> bool {
        let now = Instant::now();
        self.latency_bound(now) && now.duration_since(self.last_event.get()) < SPIN
    }

    fn stop_spinning(&self) {
        self.spinning.set(false);
        SPINNING.store(false, Ordering::Release);
    }
}

/// Yielding makes the runtime poll its sockets without blocking (epoll with a zero timeout) before it
/// runs this task again; so while this loops, the worker never sleeps.
async fn spinner(wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let spin =
                LOCAL.with(|local| local.borrow().as_ref().is_some_and(Local::keep_spinning));
            if !spin {
                break;
            }
            tokio::task::yield_now().await;
        }
        LOCAL.with(|local| {
            if let Some(local) = &*local.borrow() {
                local.stop_spinning();
            }
        });
    }
}

/// All connections of a sandbox go to one worker, so they share its upstream pools (a name the sandbox
/// calls often keeps its connections warm), and sandboxes in turn take the workers in turn: a sandbox's
/// slot is its /30 (IPv4) or its /64 (IPv6).
fn worker_of(source: IpAddr, workers: usize) -> usize {
    let slot = match source {
        IpAddr::V4(v4) => u64::from(u32::from(v4) >> 2),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    };
    (slot % workers.max(1) as u64) as usize
}

/// What every worker knows of all of them.
struct Shared {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    /// How many bulk connections (`BulkSlot`) each worker has.
    bulk: Vec<AtomicUsize>,
}

pub struct Workers {
    shared: Arc<Shared>,
    /// Connections are placed, when accepted, on the first `placed` workers; the others take only bulk
    /// connections.
    placed: usize,
}

impl Workers {
    /// One worker per two cores for the connections as they are accepted: about half the CPU of a
    /// proxied request is spent by the sandboxed program that makes it, on this same machine, and a
    /// daemon with a busy thread on every core would starve the programs whose requests it waits for.
    /// Bulk connections may use a thread per core: the peers of a 1 MiB download leave a core idle about
    /// an eighth of the time, which a second daemon thread fills (measured on 2 cores: 1 MiB bodies
    /// 0.47-0.48x -> 0.50-0.51x of direct), while small requests are cheapest batched on one thread.
    pub fn start() -> io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let placed = cores.div_ceil(2);
        let mut queues = Vec::with_capacity(cores);
        let mut inboxes = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (queue, jobs) = mpsc::unbounded_channel::<Job>();
            queues.push(queue);
            inboxes.push(jobs);
        }
        let shared = Arc::new(Shared {
            queues,
            bulk: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
        });
        for (index, mut jobs) in inboxes.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("sandbox-conn-{index}"))
                .spawn(move || {
                    let wake_spinner = Arc::new(Notify::new());
                    LOCAL.with(|local| {
                        *local.borrow_mut() = Some(Local {
                            index,
                            shared,
                            // A bulk worker's requests are never latency-bound.
                            may_spin: cores > 1 && index < placed,
                            in_flight: Cell::new(0),
                            last_event: Cell::new(Instant::now()),
                            concurrent_until: Cell::new(Instant::now()),
                            spinning: Cell::new(false),
                            wake_spinner: wake_spinner.clone(),
                        })
                    });
                    runtime.block_on(async move {
                        tokio::spawn(spinner(wake_spinner));
                        while let Some(job) = jobs.recv().await {
                            job();
                        }
                    });
                })?;
        }
        Ok(Workers { shared, placed })
    }

    /// Runs `make()` on the worker of the sandbox at `source` and spawns the future it returns there.
    /// `make` runs on the worker's thread, so sockets it registers belong to that worker's reactor.
    pub fn spawn<F, Fut>(&self, source: IpAddr, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let index = worker_of(source, self.placed);
        let job: Job = Box::new(move || {
            tokio::spawn(make());
        });
        if self.shared.queues[index].send(job).is_err() {
            tracing::error!(worker = index, "a connection worker has stopped");
        }
    }
}

/// A connection counted as moving bulk data, on the worker it lives on or is to move to.
pub struct BulkSlot {
    shared: Arc<Shared>,
    worker: usize,
}

/// Counts the calling task's connection as a bulk one, on the worker that has the fewest (this one
/// when it is among them). None off the workers' threads.
pub fn claim_bulk() -> Option<BulkSlot> {
    LOCAL.with(|local| {
        let local = local.borrow();
        let local = local.as_ref()?;
        let counts: Vec<usize> = local
            .shared
            .bulk
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        let worker = least_busy(local.index, &counts);
        local.shared.bulk[worker].fetch_add(1, Ordering::Relaxed);
        Some(BulkSlot {
            shared: local.shared.clone(),
            worker,
        })
    })
}

/// The worker with the fewest bulk connections, `here` on a tie.
fn least_busy(here: usize, counts: &[usize]) -> usize {
    let Some(&fewest) = counts.iter().min() else {
        return here;
    };
    if counts.get(here) == Some(&fewest) {
        return here;
    }
    counts
        .iter()
        .position(|&count| count == fewest)
        .unwrap_or(here)
}

impl BulkSlot {
    /// Whether the slot is on the calling thread's worker.
    pub fn is_here(&self) -> bool {
        LOCAL.with(|local| {
            local
                .borrow()
                .as_ref()
                .is_some_and(|local| local.index == self.worker)
        })
    }

    /// Runs `make(self)` on the slot's worker and spawns the future it returns there; if that worker
    /// has stopped, `make` is dropped unrun.
    pub fn move_there<F, Fut>(self, make: F)
    where
        F: FnOnce(BulkSlot) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shared = self.shared.clone();
        let worker = self.worker;
        let job: Job = Box::new(move || {
            tokio::spawn(make(self));
        });
        if shared.queues[worker].send(job).is_err() {
            tracing::error!(worker, "a connection worker has stopped");
        }
    }
}

impl Drop for BulkSlot {
    fn drop(&mut self) {
        self.shared.bulk[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's TCP stream, which can leave its worker's reactor (`detach`) and join another's
/// (`attach`) between uses.
pub enum MovableStream {
    Registered(TcpStream),
    Detached(std::net::TcpStream),
    Gone,
}

impl MovableStream {
    /// Takes the stream out of this thread's reactor.
    pub fn detach(&mut self) -> io::Result<()> {
        if let MovableStream::Registered(stream) = std::mem::replace(self, MovableStream::Gone) {
            *self = MovableStream::Detached(stream.into_std()?);
        }
        Ok(())
    }

    /// Registers a detached stream with the calling thread's reactor.
    pub fn attach(&mut self) -> io::Result<()> {
        if let MovableStream::Detached(stream) = std::mem::replace(self, MovableStream::Gone) {
            *self = MovableStream::Registered(TcpStream::from_std(stream)?);
        }
        Ok(())
    }

    fn registered(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match self.get_mut() {
            MovableStream::Registered(stream) => Ok(Pin::new(stream)),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection is moving between workers",
            )),
        }
    }
}

impl AsyncRead for MovableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.registered()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for MovableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.registered()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.registered()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_keeps_its_worker_and_neighbours_take_the_next() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            worker_of(v4("10.233.0.6"), 3),
            worker_of(v4("10.233.0.5"), 3)
        );
        let first = worker_of(v4("10.233.0.6"), 3);
        assert_eq!(worker_of(v4("10.233.0.10"), 3), (first + 1) % 3);
        assert_eq!(worker_of(v4("10.233.0.14"), 3), (first + 2) % 3);
        assert_eq!(
            worker_of(v4("fd00:5ba:d:1::2"), 2),
            worker_of(v4("fd00:5ba:d:1::1234"), 2)
        );
        assert_ne!(
            worker_of(v4("fd00:5ba:d:1::2"), 2),
            worker_of(v4("fd00:5ba:d:2::2"), 2)
        );
        assert_eq!(worker_of(v4("10.233.0.6"), 1), 0);
    }

    #[test]
    fn a_bulk_connection_goes_to_the_worker_with_fewest_and_stays_on_a_tie() {
        assert_eq!(least_busy(0, &[0, 0]), 0);
        assert_eq!(least_busy(0, &[1, 0]), 1);
        assert_eq!(least_busy(1, &[1, 1]), 1);
        assert_eq!(least_busy(0, &[2, 1, 1]), 1);
        assert_eq!(least_busy(2, &[2, 1, 1]), 2);
        assert_eq!(least_busy(0, &[0]), 0);
        assert_eq!(least_busy(0, &[]), 0);
    }

    #[test]
    fn a_worker_spins_only_while_it_has_been_serving_one_request_at_a_time() {
        let local = Local {
            index: 0,
            shared: Arc::new(Shared {
                queues: Vec::new(),
                bulk: Vec::new(),
            }),
            may_spin: false,
            in_flight: Cell::new(1),
            last_event: Cell::new(Instant::now()),
            concurrent_until: Cell::new(Instant::now()),
            spinning: Cell::new(false),
            wake_spinner: Arc::new(Notify::new()),
        };
        assert!(local.keep_spinning());
        local.in_flight.set(2);
        local.event();
        assert!(
            !local.keep_spinning(),
            "two requests in flight: batch instead"
        );
        local.in_flight.set(1);
        local.event();
        assert!(
            !local.keep_spinning(),
            "back to one, but a batch just ended: the next one is coming, let the peers run"
        );
        local
            .concurrent_until
            .set(Instant::now() - Duration::from_millis(1));
        assert!(local.keep_spinning(), "one at a time for CONCURRENT_HOLD");
        local.in_flight.set(0);
        local.last_event.set(Instant::now() - SPIN * 2);
        assert!(!local.keep_spinning(), "idle for longer than SPIN: sleep");
    }
}
