//! The thread that holds a `c1m` worker's open connections: one `mio`
//! poll, a slot of a few dozen bytes per connection (the socket, the user,
//! the last unicast id, and buffers that stay empty unless a frame arrives
//! in pieces or a write cannot finish), and one heap of heartbeat times.
//!
//! A connection is opened, authenticated and subscribed by a tokio task
//! ([`super::dial`]) and handed over here; when it ends, the holder tells its
//! [`Hooks`], which start the reconnect. Holding a connection this way costs
//! the load generator ~100 B of memory instead of a task, a reactor
//! registration, a read buffer and a WebSocket library's state (6.7 KB per
//! connection with tokio-tungstenite), so that on one machine the load
//! generator does not take the memory the servers under test need.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read as _, Write as _};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use proto::{ClientFrame, MsgId, ServerFrame};

use super::dial::{self, Framing, Item, Opened};
use crate::client::{Closed, Event};
use crate::pace::{first_heartbeat_delay, heartbeat_delay};

/// The waker's token (slots use their index).
const WAKE: Token = Token(usize::MAX);
/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes waiting to be written on one connection before it is given
/// up as stuck (a ping is 20 bytes).
const MAX_OUT: usize = 64 * 1024;
/// Longest wait in the poll, so that a stop is seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// What the holder reports to the worker.
pub(crate) trait Hooks: Send + Sync + 'static {
    /// A pushed message arrived for a connection whose last unicast id is
    /// `last_unicast` (updated by the hook).
    fn message(&self, id: MsgId, data: &[u8], last_unicast: &mut Option<MsgId>);
    /// A heartbeat was sent.
    fn ping_sent(&self);
    /// A heartbeat was answered.
    fn pong(&self);
    /// A connection ended.
    fn dropped(&self, d: Dropped);
    /// Whether the run is over (the holder then closes everything and ends).
    fn stopped(&self) -> bool;
}

/// A connection handed over to be held.
#[derive(Debug)]
pub(crate) struct Arrival {
    /// The open connection.
    pub(crate) opened: Opened,
    /// Its user number.
    pub(crate) user: u64,
    /// The room it is on.
    pub(crate) room: usize,
    /// The last unicast id it has seen.
    pub(crate) last_unicast: Option<MsgId>,
}

/// A connection that ended.
#[derive(Debug)]
pub(crate) struct Dropped {
    /// Its user number.
    pub(crate) user: u64,
    /// The room it was on.
    pub(crate) room: usize,
    /// The last unicast id it had seen (to resume after).
    pub(crate) last_unicast: Option<MsgId>,
    /// How it ended.
    pub(crate) closed: Closed,
    /// When.
    pub(crate) at: Instant,
}

/// Hands connections to the holder thread.
pub(crate) struct Holder {
    // Holds at most every connection of the worker once: a connection is
    // either being opened, waiting here, or held.
    arrivals: mpsc::Sender<Arrival>,
    waker: Arc<Waker>,
}

impl Holder {
    /// Hands `a` over; gives it back when the holder has ended.
    pub(crate) fn hold(&self, a: Arrival) -> Result<(), Arrival> {
        self.arrivals.send(a).map_err(|e| e.0)?;
        // A failed wake is seen at the next poll timeout at the latest.
        let _ = self.waker.wake();
        Ok(())
    }
}

/// One held connection.
struct Slot {
    stream: TcpStream,
    user: u64,
    room: u32,
    /// Heartbeat interval, seconds.
    interval: u32,
    last_unicast: Option<MsgId>,
    /// The start of a frame that has not all arrived.
    partial: Vec<u8>,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
}

/// A slot's place: its generation tells a heartbeat of an earlier holder of
/// the same place from one of the current.
#[derive(Default)]
struct Place {
    generation: u32,
    slot: Option<Slot>,
}

/// The holder thread's state, before and while it runs.
pub(crate) struct Runner {
    poll: Poll,
    arrivals: mpsc::Receiver<Arrival>,
    framing: Framing,
    places: Vec<Place>,
    free: Vec<usize>,
    /// (due, place, generation), soonest first.
    due: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    rbuf: Vec<u8>,
}

/// A holder and the thread state to [`Runner::spawn`].
pub(crate) fn new(framing: Framing) -> io::Result<(Holder, Runner)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        Holder {
            arrivals: tx,
            waker,
        },
        Runner {
            poll,
            arrivals: rx,
            framing,
            places: Vec::new(),
            free: Vec::new(),
            due: BinaryHeap::new(),
            rbuf: Vec::with_capacity(READ_CHUNK * 2),
        },
    ))
}

impl Runner {
    /// Runs the holder on its own thread until `hooks` says stop, at the
    /// scheduling priority `nice` where allowed (raising it needs
    /// CAP_SYS_NICE; without, the thread keeps the process's).
    pub(crate) fn spawn<H: Hooks>(self, hooks: Arc<H>, nice: i32) -> io::Result<()> {
        std::thread::Builder::new()
            .name("c1m-holder".into())
            .spawn(move || {
                // On Linux a nice value is per thread: this sets the
                // holder's only.
                let _ = rustix::process::setpriority_process(None, nice);
                self.run(&*hooks);
            })
            .map(drop)
    }

    fn run<H: Hooks>(mut self, hooks: &H) {
        let mut events = Events::with_capacity(1024);
        while !hooks.stopped() {
            let wait = self.due.peek().map_or(MAX_WAIT, |Reverse((t, _, _))| {
                t.saturating_duration_since(Instant::now()).min(MAX_WAIT)
            });
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("c1m-worker: poll failed: {e}");
                    std::thread::sleep(MAX_WAIT);
                }
                continue;
            }
            for ev in &events {
                if ev.token() == WAKE {
                    continue;
                }
                let place = ev.token().0;
                if ev.is_writable() {
                    if let Err(c) = self.flush(place) {
                        self.close(place, c, hooks);
                        continue;
                    }
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(place, hooks);
                }
            }
            self.take_arrivals(hooks);
            self.heartbeats(hooks);
        }
        // Dropping the slots closes the sockets.
    }

    fn take_arrivals<H: Hooks>(&mut self, hooks: &H) {
        while let Ok(a) = self.arrivals.try_recv() {
            let mut stream = TcpStream::from_std(a.opened.stream);
            let place = self.free.pop().unwrap_or_else(|| {
                self.places.push(Place::default());
                self.places.len() - 1
            });
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(place),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                self.free.push(place);
                hooks.dropped(Dropped {
                    user: a.user,
                    room: a.room,
                    last_unicast: a.last_unicast,
                    closed: Closed::Io(format!("register: {e}")),
                    at: Instant::now(),
                });
                continue;
            }
            let p = &mut self.places[place];
            p.generation = p.generation.wrapping_add(1);
            let interval = a.opened.heartbeat.max(1);
            p.slot = Some(Slot {
                stream,
                user: a.user,
                room: u32::try_from(a.room).unwrap_or(u32::MAX),
                interval,
                last_unicast: a.last_unicast,
                partial: a.opened.leftover,
                out: Vec::new(),
            });
            let first = first_heartbeat_delay(secs(interval), rand::random());
            self.due
                .push(Reverse((Instant::now() + first, place, p.generation)));
            // Frames that came with auth_ok, and whatever arrived since.
            self.read(place, hooks);
        }
    }

    /// Reads until the socket has nothing more, handling every whole frame.
    fn read<H: Hooks>(&mut self, place: usize, hooks: &H) {
        let framing = self.framing;
        let Some(slot) = self.places.get_mut(place).and_then(|p| p.slot.as_mut()) else {
            return;
        };
        let rbuf = &mut self.rbuf;
        rbuf.clear();
        rbuf.append(&mut slot.partial);
        slot.partial = Vec::new();
        let end = loop {
            // Whole frames first (some may have been left by the last read).
            match take_frames(rbuf, framing, slot, hooks) {
                Ok(()) => {}
                Err(c) => break Some(c),
            }
            let start = rbuf.len();
            rbuf.resize(start + READ_CHUNK, 0);
            match slot.stream.read(&mut rbuf[start..]) {
                Ok(0) => {
                    rbuf.truncate(start);
                    break Some(Closed::Eof);
                }
                Ok(n) => rbuf.truncate(start + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    rbuf.truncate(start);
                    break None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => rbuf.truncate(start),
                Err(e) => {
                    rbuf.truncate(start);
                    break Some(Closed::Io(e.to_string()));
                }
            }
        };
        match end {
            None if !rbuf.is_empty() => slot.partial = rbuf.clone(),
            None => {}
            Some(c) => self.close(place, c, hooks),
        }
    }

    /// Writes what waits in the slot's buffer.
    fn flush(&mut self, place: usize) -> Result<(), Closed> {
        let Some(slot) = self.places.get_mut(place).and_then(|p| p.slot.as_mut()) else {
            return Ok(());
        };
        if slot.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut slot.out);
        write(slot, &out)
    }

    /// Sends every heartbeat that is due.
    fn heartbeats<H: Hooks>(&mut self, hooks: &H) {
        let now = Instant::now();
        let mut ping = Vec::with_capacity(32);
        while let Some(&Reverse((t, place, generation))) = self.due.peek() {
            if t > now {
                break;
            }
            self.due.pop();
            let Some(p) = self.places.get_mut(place) else {
                continue;
            };
            if p.generation != generation {
                continue;
            }
            let Some(slot) = p.slot.as_mut() else {
                continue;
            };
            ping.clear();
            dial::encode(&ClientFrame::Ping { seq: None }, self.framing, &mut ping);
            if let Err(c) = write(slot, &ping) {
                self.close(place, c, hooks);
                continue;
            }
            hooks.ping_sent();
            let next = heartbeat_delay(secs(slot.interval), rand::random());
            self.due.push(Reverse((now + next, place, generation)));
        }
    }

    /// Ends a held connection and reports it.
    fn close<H: Hooks>(&mut self, place: usize, closed: Closed, hooks: &H) {
        let Some(mut slot) = self.places.get_mut(place).and_then(|p| p.slot.take()) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut slot.stream);
        self.free.push(place);
        hooks.dropped(Dropped {
            user: slot.user,
            room: slot.room as usize,
            last_unicast: slot.last_unicast,
            closed,
            at: Instant::now(),
        });
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// Handles every whole frame at the start of `rbuf` and removes them.
fn take_frames<H: Hooks>(
    rbuf: &mut Vec<u8>,
    framing: Framing,
    slot: &mut Slot,
    hooks: &H,
) -> Result<(), Closed> {
    let mut at = 0;
    let result = loop {
        let (item, used) = match dial::next(&rbuf[at..], framing) {
            Ok(Some(x)) => x,
            Ok(None) => break Ok(()),
            Err(e) => break Err(Closed::Io(e)),
        };
        at += used;
        match item {
            Item::Event(Event::Frame(ServerFrame::Msg(m))) => {
                hooks.message(m.id, &m.data, &mut slot.last_unicast);
            }
            Item::Event(Event::Frame(ServerFrame::Pong { .. })) => hooks.pong(),
            Item::Event(Event::Frame(_) | Event::Undecodable(_)) | Item::Pong => {}
            Item::Event(Event::Closed(c)) => break Err(c),
            Item::Ping(payload) => {
                let mut out = Vec::with_capacity(payload.len() + 8);
                dial::pong(&payload, &mut out);
                if let Err(c) = write(slot, &out) {
                    break Err(c);
                }
            }
        }
    };
    rbuf.drain(..at);
    result
}

/// Writes `bytes` (after what already waits); what the socket does not take
/// waits in the slot for the next writable event.
fn write(slot: &mut Slot, bytes: &[u8]) -> Result<(), Closed> {
    if !slot.out.is_empty() {
        if slot.out.len() + bytes.len() > MAX_OUT {
            return Err(Closed::Io("the server does not read".into()));
        }
        slot.out.extend_from_slice(bytes);
        return Ok(());
    }
    let mut at = 0;
    while at < bytes.len() {
        match slot.stream.write(&bytes[at..]) {
            Ok(0) => return Err(Closed::Io("write returned 0".into())),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                slot.out.extend_from_slice(&bytes[at..]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Closed::Io(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held connection's whole cost in the load generator, besides the
    /// kernel's socket and a heap entry.
    #[test]
    fn a_held_connection_is_small() {
        let size = std::mem::size_of::<Place>();
        assert!(size <= 112, "a place is {size} B");
    }
}
