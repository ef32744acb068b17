//! [`Exchange`]: many channels watched at once (pprocess's `Exchange`).

use std::fmt;
use std::time::Duration;

use super::{Channel, ChannelError, PEER_CHECK};
use crate::codec::Message;
use crate::wait::{self, Deadline, Step};

/// Watches many channels at once (pprocess's `Exchange`), optionally keeping
/// at most `limit` of them active.
///
/// Waiting sleeps on all the channels' rings together (`futex_waitv`): idle
/// channels cost nothing. Channels whose child has ended and whose messages
/// were all received are removed (and their processes reaped). Every wait
/// has a timed form; `Duration::MAX` is no deadline.
pub struct Exchange<S, R> {
    channels: Vec<Option<Channel<S, R>>>,
    limit: Option<usize>,
}

impl<S, R> fmt::Debug for Exchange<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange").field("active", &self.active()).field("limit", &self.limit).finish()
    }
}

impl<S, R> Default for Exchange<S, R> {
    fn default() -> Self {
        Exchange { channels: Vec::new(), limit: None }
    }
}

/// Identifies a channel in an [`Exchange`].
pub type ChannelId = usize;

impl<S, R> Exchange<S, R> {
    /// An exchange with no limit on active channels.
    pub fn new() -> Self {
        Exchange::default()
    }

    /// An exchange that keeps at most `limit` channels active ([`Exchange::add_wait`]).
    pub fn with_limit(limit: usize) -> Self {
        Exchange { channels: Vec::new(), limit: Some(limit.max(1)) }
    }

    /// Channels being watched.
    pub fn active(&self) -> usize {
        self.channels.iter().flatten().count()
    }

    /// The channel `id`, while it is watched.
    pub fn channel(&self, id: ChannelId) -> Option<&Channel<S, R>> {
        self.channels.get(id).and_then(Option::as_ref)
    }

    fn watched(&self) -> impl Iterator<Item = (ChannelId, &Channel<S, R>)> {
        self.channels.iter().enumerate().filter_map(|(id, c)| c.as_ref().map(|c| (id, c)))
    }

    fn ready_now(&self) -> Vec<ChannelId> {
        self.watched().filter(|(_, c)| c.is_ready()).map(|(id, _)| id).collect()
    }

    /// Drops (and reaps) channels whose child ended cleanly and whose
    /// messages were all received. A child that panicked or died stays until
    /// a receive has reported it.
    fn remove_ended(&mut self) {
        for slot in &mut self.channels {
            if slot.as_ref().is_some_and(Channel::finished_cleanly) {
                if let Some(c) = slot.take() {
                    c.join();
                }
            }
        }
    }
}

impl<S: Message, R: Message> Exchange<S, R> {
    /// Watches `channel`; returns its id.
    pub fn add(&mut self, channel: Channel<S, R>) -> ChannelId {
        self.channels.push(Some(channel));
        self.channels.len() - 1
    }

    /// Adds `channel` once fewer than `limit` channels are active, handing
    /// every message received meanwhile to `store(id, message)`.
    pub fn add_wait(
        &mut self,
        channel: Channel<S, R>,
        store: impl FnMut(ChannelId, Result<R, ChannelError>),
    ) -> ChannelId {
        match self.add_wait_timeout(channel, Duration::MAX, store) {
            Ok(id) => id,
            // No deadline: only reached if the limit never freed up, which
            // the wait does not return for.
            Err(channel) => self.add(channel),
        }
    }

    /// [`Exchange::add_wait`], waiting at most `timeout` for a place
    /// (`Duration::MAX`: no deadline); `Err` gives `channel` back, not
    /// added, if `limit` channels were still active then.
    // The channel comes back by value, as a full queue gives back its value.
    #[allow(clippy::result_large_err)]
    pub fn add_wait_timeout(
        &mut self,
        channel: Channel<S, R>,
        timeout: Duration,
        mut store: impl FnMut(ChannelId, Result<R, ChannelError>),
    ) -> Result<ChannelId, Channel<S, R>> {
        let deadline = Deadline::after(timeout);
        if let Some(limit) = self.limit {
            while self.active() >= limit {
                let ready = self.ready_by(deadline);
                for &id in &ready {
                    self.deliver(id, &mut store);
                }
                if ready.is_empty() && deadline.passed() && self.active() >= limit {
                    return Err(channel);
                }
            }
        }
        Ok(self.add(channel))
    }

    /// Receives everything until every channel has ended, handing each
    /// message to `store(id, message)`.
    pub fn finish(&mut self, store: impl FnMut(ChannelId, Result<R, ChannelError>)) {
        // No deadline: returns only once every channel has ended.
        let _ = self.finish_timeout(Duration::MAX, store);
    }

    /// [`Exchange::finish`], for at most `timeout` (`Duration::MAX`: no
    /// deadline); `Err(Timeout)` if channels were still active then (they
    /// stay watched: call it again to go on).
    pub fn finish_timeout(
        &mut self,
        timeout: Duration,
        mut store: impl FnMut(ChannelId, Result<R, ChannelError>),
    ) -> Result<(), ChannelError> {
        let deadline = Deadline::after(timeout);
        while self.active() > 0 {
            let ready = self.ready_by(deadline);
            for &id in &ready {
                self.deliver(id, &mut store);
            }
            if ready.is_empty() && deadline.passed() && self.active() > 0 {
                return Err(ChannelError::Timeout);
            }
        }
        Ok(())
    }

    /// Ids of the channels with something to receive (a message or their
    /// end), waiting up to `timeout` for one (`Some(ZERO)` polls, `None` or
    /// `Some(Duration::MAX)` waits as long as needed). Ended channels with
    /// nothing left are removed.
    pub fn ready(&mut self, timeout: Option<Duration>) -> Vec<ChannelId> {
        self.ready_by(Deadline::within(timeout))
    }

    fn ready_by(&mut self, deadline: Deadline) -> Vec<ChannelId> {
        let got = wait::in_slices(
            deadline,
            PEER_CHECK,
            |until| {
                self.remove_ended();
                let ready = self.ready_now();
                if !ready.is_empty() || self.active() == 0 {
                    return Step::Done(ready);
                }
                let events: Vec<&crate::sync::Event> = self.watched().map(|(_, c)| c.rx().readable()).collect();
                // Wake for a message, or for a ring closed since we looked
                // (one closed before and not ready yet waits for its
                // outcome: looked at again after the slice).
                let rings: Vec<(&crate::ring::Ring, bool)> =
                    self.watched().map(|(_, c)| (c.rx(), c.rx().is_closed())).collect();
                let woke = crate::sync::wait_any(
                    &events,
                    || rings.iter().any(|(rx, was_closed)| rx.can_pop() || (!was_closed && rx.is_closed())),
                    Some(until),
                );
                let ready = if woke { self.ready_now() } else { Vec::new() };
                if ready.is_empty() {
                    Step::Again
                } else {
                    Step::Done(ready)
                }
            },
            || Ok::<(), ()>(()),
        );
        got.unwrap_or_default()
    }

    /// Receives from channel `id` once, handing the message (or its end) to `store`.
    fn deliver(&mut self, id: ChannelId, store: &mut impl FnMut(ChannelId, Result<R, ChannelError>)) {
        let Some(c) = self.channels.get(id).and_then(Option::as_ref) else { return };
        match c.try_recv() {
            Ok(m) => store(id, Ok(m)),
            Err(ChannelError::Timeout) => {}
            Err(ChannelError::Closed) => self.channels[id] = None,
            Err(e) => {
                store(id, Err(e));
                self.channels[id] = None;
            }
        }
    }
}
