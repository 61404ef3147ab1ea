//! The NATS part of a subscription: its own NATS subscription, read in the subscriber's task,
//! taking turns with the subscription's local part.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use aether_core::Event;
use futures::StreamExt;
use futures::task::AtomicWaker;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::Receiving;
use crate::filter::EventFilter;
use crate::local::{Merged, PollLocal};
use crate::pattern::Pattern;

/// A NATS subscription's pattern in [`Receiving::interests`], for as long as it lives.
pub(super) struct Interest {
    id: u64,
    receiving: Arc<Receiving>,
}

impl Interest {
    pub(super) fn new(receiving: &Arc<Receiving>, pattern: Pattern) -> Self {
        let id = receiving.next_interest.fetch_add(1, Ordering::Relaxed);
        let _changing = receiving
            .interest_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut interests = Vec::clone(&receiving.interests.load_full());
        interests.push((id, pattern));
        receiving.interests.store(Arc::new(interests));
        Self {
            id,
            receiving: receiving.clone(),
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let receiving = &self.receiving;
        let _changing = receiving
            .interest_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut interests = Vec::clone(&receiving.interests.load_full());
        interests.retain(|(id, _)| *id != self.id);
        receiving.interests.store(Arc::new(interests));
    }
}

/// Set when the local part of a subscription may have an event: its buffer woke it, or it last
/// returned one. Reading an idle local buffer costs a lock, so the local part is asked only then.
struct LocalSignal {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for LocalSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A subscription's NATS part and the turns it takes with the local part: they alternate in
/// being asked first, so neither starves the other; the stream ends when both have ended.
pub(crate) struct RemotePart {
    /// `None` once ended (dropping it unsubscribes).
    remote: Option<Remote>,
    signal: Arc<LocalSignal>,
    /// Wakes through `signal`: the waker the local part is polled with.
    local_waker: Waker,
    remote_first: bool,
    local_done: bool,
}

impl Merged for RemotePart {
    fn poll_with_local(
        &mut self,
        cx: &mut Context<'_>,
        local: &mut PollLocal<'_>,
    ) -> Poll<Option<Event>> {
        self.signal.task.register(cx.waker());
        self.remote_first = !self.remote_first;
        if self.remote_first {
            if let Poll::Ready(Some(event)) = self.poll_remote(cx) {
                return Poll::Ready(Some(event));
            }
            if let Poll::Ready(Some(event)) = self.poll_local(local) {
                return Poll::Ready(Some(event));
            }
        } else {
            if let Poll::Ready(Some(event)) = self.poll_local(local) {
                return Poll::Ready(Some(event));
            }
            if let Poll::Ready(Some(event)) = self.poll_remote(cx) {
                return Poll::Ready(Some(event));
            }
        }
        if self.remote.is_none() && self.local_done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl RemotePart {
    pub(super) fn new(remote: Remote) -> Self {
        let signal = Arc::new(LocalSignal {
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            remote: Some(remote),
            local_waker: Waker::from(signal.clone()),
            signal,
            remote_first: false,
            local_done: false,
        }
    }

    fn poll_remote(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let Some(remote) = self.remote.as_mut() else {
            return Poll::Ready(None);
        };
        let next = remote.poll_next(cx);
        if let Poll::Ready(None) = next {
            self.remote = None;
        }
        next
    }

    fn poll_local(&mut self, local: &mut PollLocal<'_>) -> Poll<Option<Event>> {
        if self.local_done || !self.signal.ready.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        match local(&mut Context::from_waker(&self.local_waker)) {
            Poll::Ready(Some(event)) => {
                // There may be more.
                self.signal.ready.store(true, Ordering::Release);
                Poll::Ready(Some(event))
            }
            Poll::Ready(None) => {
                self.local_done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The part of a [`Subscription`] that reads other nodes' events: its own NATS subscription,
/// read and decoded in the subscriber's task.
pub(super) struct Remote {
    pub(super) messages: async_nats::Subscriber,
    pub(super) stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    pub(super) receiving: Arc<Receiving>,
    pub(super) filter: EventFilter,
    /// Dropped with the NATS subscription.
    pub(super) _interest: Interest,
}

impl Remote {
    /// The next event from another node; `None` once the bus is stopped or dropped (or the
    /// client is closed).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if self.receiving.stopped.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            match self.messages.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    if let Some(event) = self.receiving.accept(&msg)
                        && self.filter.matches(&event)
                    {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                // Only when idle: be woken by a stop too (polling the token takes a lock).
                Poll::Pending => {
                    return match self.stopped.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
