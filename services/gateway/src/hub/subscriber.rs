//! One connection's subscription to one channel, and the rule that decides
//! which frames it is sent: a *pending* subscriber (a presence member waiting
//! for its member list, a cache-channel subscriber waiting for the last
//! event) holds frames; when it goes live it is sent its first frames, then
//! only the held frames newer than what those first frames already reflect.

use super::conn::ConnHandle;
use axum::extract::ws::Utf8Bytes;
use herald_proto::UserId;

/// A frame waiting for a pending subscriber.
struct Held {
    /// Presence events carry their KV revision; others are always delivered.
    revision: Option<u64>,
    /// Stored events carry their stream sequence.
    seq: Option<u64>,
    /// The member the event is about (not sent to that member's own sockets).
    about_user: Option<UserId>,
    frame: Utf8Bytes,
}

/// What a pending subscriber is sent when it goes live.
pub(crate) struct Ready {
    /// Member events at or below this KV revision are not sent.
    pub revision: u64,
    /// Stored events at or below this stream sequence are not sent.
    pub seq: u64,
    /// Sent first, in order (subscription succeeded, the cached event).
    pub frames: Vec<Utf8Bytes>,
}

/// One connection subscribed to one channel.
pub(super) struct Subscriber {
    pub conn: ConnHandle,
    /// On presence channels: the user this socket is a member as.
    user_id: Option<UserId>,
    /// Member events at or below this revision are already reflected in the
    /// member list the socket got.
    since_revision: u64,
    /// Stored events at or below this sequence are older than (or are) the
    /// cached event the socket got.
    since_seq: u64,
    /// `Some` while the subscriber waits to go live.
    pending: Option<Vec<Held>>,
}

impl Subscriber {
    /// A live subscriber, or a pending one when `hold`.
    pub fn new(conn: ConnHandle, user_id: Option<UserId>, hold: bool) -> Self {
        Self {
            conn,
            user_id,
            since_revision: 0,
            since_seq: 0,
            pending: hold.then(Vec::new),
        }
    }

    /// Whether the subscriber is live (counts for occupancy).
    pub fn is_live(&self) -> bool {
        self.pending.is_none()
    }

    /// Offer a frame: held while pending, dropped when it is about this
    /// member itself or older than what the subscriber was first sent,
    /// queued otherwise.
    pub fn offer(
        &mut self,
        revision: Option<u64>,
        seq: Option<u64>,
        about_user: Option<&UserId>,
        frame: &Utf8Bytes,
    ) {
        if let (Some(me), Some(about)) = (&self.user_id, about_user) {
            if me == about {
                return;
            }
        }
        if let Some(held) = &mut self.pending {
            held.push(Held {
                revision,
                seq,
                about_user: about_user.cloned(),
                frame: frame.clone(),
            });
            return;
        }
        if revision.is_some_and(|r| r <= self.since_revision)
            || seq.is_some_and(|s| s <= self.since_seq)
        {
            return;
        }
        self.conn.deliver(frame.clone());
    }

    /// Go live: queue `ready.frames`, then every held frame newer than them.
    pub fn go_live(&mut self, ready: Ready) {
        self.since_revision = ready.revision;
        self.since_seq = ready.seq;
        for frame in ready.frames {
            self.conn.deliver(frame);
        }
        for held in self.pending.take().unwrap_or_default() {
            self.offer(
                held.revision,
                held.seq,
                held.about_user.as_ref(),
                &held.frame,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conn::{Next, Outbox};
    use super::*;
    use std::sync::Arc;

    fn conn() -> (ConnHandle, Arc<Outbox>) {
        ConnHandle::detached(1, 1 << 20)
    }

    fn sent(rx: &mut Arc<Outbox>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Next::Frame(f)) = rx.try_next() {
            out.push(f.as_str().to_owned());
        }
        out
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn a_live_subscriber_gets_every_frame_at_once() {
        let (c, mut rx) = conn();
        let mut sub = Subscriber::new(c, None, false);
        assert!(sub.is_live());
        sub.offer(None, Some(1), None, &"a".into());
        sub.offer(None, None, None, &"b".into());
        assert_eq!(sent(&mut rx), ["a", "b"]);
    }

    #[test]
    fn a_pending_subscriber_holds_frames_until_it_goes_live_then_gets_its_first_frames_first() {
        let (c, mut rx) = conn();
        let mut sub = Subscriber::new(c, None, true);
        assert!(!sub.is_live());
        sub.offer(None, Some(5), None, &"e5".into());
        assert!(sent(&mut rx).is_empty(), "held while pending");
        sub.go_live(Ready {
            revision: 0,
            seq: 0,
            frames: vec!["succeeded".into()],
        });
        assert!(sub.is_live());
        assert_eq!(sent(&mut rx), ["succeeded", "e5"]);
    }

    #[test]
    fn held_frames_already_reflected_in_the_first_frames_are_dropped() {
        let (c, mut rx) = conn();
        let mut sub = Subscriber::new(c, Some(user("me")), true);
        sub.offer(Some(3), None, Some(&user("u")), &"member@3".into());
        sub.offer(Some(4), None, Some(&user("u")), &"member@4".into());
        sub.offer(None, Some(10), None, &"cached-event@10".into());
        sub.offer(None, Some(11), None, &"event@11".into());
        sub.offer(None, None, None, &"client-event".into());
        sub.go_live(Ready {
            revision: 3,
            seq: 10,
            frames: vec!["list@3".into(), "cached@10".into()],
        });
        assert_eq!(
            sent(&mut rx),
            [
                "list@3",
                "cached@10",
                "member@4",
                "event@11",
                "client-event"
            ]
        );
        // Once live, the same rule holds for new frames.
        sub.offer(Some(2), None, Some(&user("u")), &"stale".into());
        sub.offer(None, Some(9), None, &"stale".into());
        assert!(sent(&mut rx).is_empty());
    }

    #[test]
    fn a_member_is_never_sent_events_about_itself() {
        let (c, mut rx) = conn();
        let mut sub = Subscriber::new(c, Some(user("me")), true);
        sub.offer(Some(5), None, Some(&user("me")), &"my-join".into());
        sub.go_live(Ready {
            revision: 1,
            seq: 0,
            frames: vec![],
        });
        sub.offer(Some(6), None, Some(&user("me")), &"my-leave".into());
        sub.offer(Some(7), None, Some(&user("other")), &"other".into());
        assert_eq!(sent(&mut rx), ["other"]);
    }
}
