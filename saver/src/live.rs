//! What a read returns, for both backends: the live (not yet expired)
//! messages after a cursor, in id order, at most a limit. The backends walk
//! their own storage in id order and offer each decoded message here.

use crate::StoredMsg;

/// A message is live until its `expires_at` (exclusive).
pub(crate) fn is_live(msg: &StoredMsg, now_ms: i64) -> bool {
    msg.expires_at > now_ms
}

/// The live messages of one read, collected up to its limit.
pub(crate) struct LiveMsgs {
    out: Vec<StoredMsg>,
    now_ms: i64,
    limit: usize,
}

impl LiveMsgs {
    /// An empty result for a read at `now_ms` of at most `limit` messages.
    pub(crate) fn new(now_ms: i64, limit: u32) -> LiveMsgs {
        LiveMsgs {
            out: Vec::new(),
            now_ms,
            limit: limit as usize,
        }
    }

    /// How many more messages the read wants (0 once full).
    pub(crate) fn wanted(&self) -> usize {
        self.limit.saturating_sub(self.out.len())
    }

    /// Whether the limit is reached.
    pub(crate) fn is_full(&self) -> bool {
        self.wanted() == 0
    }

    /// Keeps `msg` when it is live and the limit is not reached yet; returns
    /// whether more messages are wanted.
    pub(crate) fn offer(&mut self, msg: StoredMsg) -> bool {
        if !self.is_full() && is_live(&msg, self.now_ms) {
            self.out.push(msg);
        }
        !self.is_full()
    }

    /// The messages kept, in the order they were offered.
    pub(crate) fn into_vec(self) -> Vec<StoredMsg> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::MsgId;

    fn msg(id: i64, expires_at: i64) -> StoredMsg {
        StoredMsg {
            id: MsgId(id),
            ts: 0,
            expires_at,
            data: bytes::Bytes::from_static(b"1"),
            sender: None,
        }
    }

    #[test]
    fn keeps_live_messages_up_to_the_limit() {
        let mut live = LiveMsgs::new(100, 2);
        assert_eq!(live.wanted(), 2);
        assert!(live.offer(msg(1, 100)), "expired at 100: skipped");
        assert!(live.offer(msg(2, 101)));
        assert!(!live.offer(msg(3, 200)), "limit reached");
        assert!(!live.offer(msg(4, 200)), "nothing more once full");
        let ids: Vec<i64> = live.into_vec().iter().map(|m| m.id.0).collect();
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn zero_limit_is_full_at_once() {
        let live = LiveMsgs::new(0, 0);
        assert!(live.is_full());
        assert!(live.into_vec().is_empty());
    }
}
