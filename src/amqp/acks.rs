//! Coalescing acks: one `basic.ack` with `multiple` for a run of settled
//! deliveries instead of one frame (and one trip through lapin's I/O loop)
//! per message.
//!
//! Delivery tags on a channel count up from 1, one per delivery, and each
//! consumer has its own channel. Deliveries settle out of order (a retry
//! waits for the broker, a slow provider call holds one back), so the window
//! keeps the lowest tag not yet told to the broker (the floor) and what became
//! of each settled tag above it. When the floor's own delivery settles, the
//! whole settled run above it goes out as one multiple-ack ending on the
//! highest acked tag of the run. Requeues go out at once, one by one (they
//! are rare, and a multiple-ack must never cover one first). Acks stranded
//! above a floor that does not move are sent one by one by
//! [`AckWindow::flush_stragglers`], so a slow delivery never holds the
//! others' prefetch slots for long.
//!
//! Pure: the settle task in `consumer.rs` feeds it and sends what it says.

use std::collections::BTreeMap;

use herald_actors::ticket::Disposition;

/// One frame to send to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `basic.ack`; with `multiple`, every outstanding tag up to `tag`.
    Ack { tag: u64, multiple: bool },
    /// `basic.nack` with requeue, this tag alone.
    Requeue { tag: u64 },
}

/// What became of a settled tag above the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Acked by herald, not yet told to the broker.
    Ack,
    /// Already told to the broker (a requeue, or a straggler acked alone).
    Sent,
}

/// The settled, not yet coalesced deliveries of one channel.
#[derive(Debug)]
pub struct AckWindow {
    /// The lowest tag not yet settled with the broker.
    floor: u64,
    /// Settled tags at or above the floor.
    held: BTreeMap<u64, Held>,
}

impl Default for AckWindow {
    fn default() -> AckWindow {
        AckWindow::new()
    }
}

impl AckWindow {
    /// A fresh channel: its first delivery tag is 1.
    pub fn new() -> AckWindow {
        AckWindow {
            floor: 1,
            held: BTreeMap::new(),
        }
    }

    /// Takes one settlement; a requeue's frame is pushed at once.
    pub fn settle(&mut self, tag: u64, disposition: Disposition, out: &mut Vec<Frame>) {
        if tag < self.floor {
            // Cannot happen with settle-once tickets; never send a tag twice.
            return;
        }
        match disposition {
            Disposition::Ack => {
                self.held.entry(tag).or_insert(Held::Ack);
            }
            Disposition::Requeue => {
                if self.held.insert(tag, Held::Sent) != Some(Held::Sent) {
                    out.push(Frame::Requeue { tag });
                }
            }
        }
    }

    /// Moves the floor over the settled run above it and pushes one
    /// multiple-ack for the run's acks, if it has any not yet sent.
    pub fn advance(&mut self, out: &mut Vec<Frame>) {
        let mut upto = None;
        while let Some(held) = self.held.remove(&self.floor) {
            if held == Held::Ack {
                upto = Some(self.floor);
            }
            self.floor += 1;
        }
        if let Some(tag) = upto {
            out.push(Frame::Ack {
                tag,
                multiple: true,
            });
        }
    }

    /// Acks above a floor that has not moved are waiting on one slow
    /// delivery.
    pub fn has_stragglers(&self) -> bool {
        self.held.values().any(|h| *h == Held::Ack)
    }

    /// Sends each straggling ack on its own.
    pub fn flush_stragglers(&mut self, out: &mut Vec<Frame>) {
        for (tag, held) in self.held.iter_mut() {
            if *held == Held::Ack {
                *held = Held::Sent;
                out.push(Frame::Ack {
                    tag: *tag,
                    multiple: false,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// What the broker would make of the frames: each tag's fate, and an
    /// error for a frame naming a tag that is not outstanding.
    fn replay(n: u64, frames: &[Frame]) -> Result<BTreeMap<u64, Disposition>, String> {
        let mut outstanding: BTreeSet<u64> = (1..=n).collect();
        let mut fate = BTreeMap::new();
        for f in frames {
            match *f {
                Frame::Ack { tag, multiple } => {
                    if !outstanding.contains(&tag) {
                        return Err(format!("unknown delivery tag {tag}"));
                    }
                    let covered: Vec<u64> = if multiple {
                        outstanding.range(..=tag).copied().collect()
                    } else {
                        vec![tag]
                    };
                    for t in covered {
                        outstanding.remove(&t);
                        fate.insert(t, Disposition::Ack);
                    }
                }
                Frame::Requeue { tag } => {
                    if !outstanding.remove(&tag) {
                        return Err(format!("unknown delivery tag {tag}"));
                    }
                    fate.insert(tag, Disposition::Requeue);
                }
            }
        }
        Ok(fate)
    }

    #[test]
    fn an_in_order_run_is_one_multiple_ack() {
        let mut w = AckWindow::new();
        let mut out = Vec::new();
        for tag in 1..=50 {
            w.settle(tag, Disposition::Ack, &mut out);
        }
        w.advance(&mut out);
        assert_eq!(
            out,
            vec![Frame::Ack {
                tag: 50,
                multiple: true
            }]
        );
        assert!(!w.has_stragglers());
    }

    #[test]
    fn a_slow_delivery_holds_the_run_until_it_settles_or_they_are_flushed() {
        let mut w = AckWindow::new();
        let mut out = Vec::new();
        for tag in 2..=5 {
            w.settle(tag, Disposition::Ack, &mut out);
        }
        w.advance(&mut out);
        assert!(out.is_empty());
        assert!(w.has_stragglers());
        w.flush_stragglers(&mut out);
        assert_eq!(out.len(), 4);
        out.clear();
        w.settle(1, Disposition::Ack, &mut out);
        w.advance(&mut out);
        assert_eq!(
            out,
            vec![Frame::Ack {
                tag: 1,
                multiple: true
            }]
        );
    }

    #[test]
    fn a_requeue_goes_out_before_any_ack_that_could_cover_it() {
        let mut w = AckWindow::new();
        let mut out = Vec::new();
        w.settle(1, Disposition::Ack, &mut out);
        w.settle(2, Disposition::Requeue, &mut out);
        w.settle(3, Disposition::Ack, &mut out);
        w.advance(&mut out);
        assert_eq!(
            out,
            vec![
                Frame::Requeue { tag: 2 },
                Frame::Ack {
                    tag: 3,
                    multiple: true
                }
            ]
        );
        assert_eq!(replay(3, &out).unwrap()[&2], Disposition::Requeue);
    }

    proptest! {
        /// Whatever the order of settlements and flushes, the broker sees
        /// every tag settled exactly as herald settled it, and never a tag
        /// that is not outstanding.
        #[test]
        fn every_tag_gets_its_own_fate_once(
            fates in proptest::collection::vec(any::<bool>(), 1..60),
            flush_every in 1usize..10,
            seed in any::<u64>(),
        ) {
            let n = fates.len() as u64;
            let mut tags: Vec<u64> = (1..=n).collect();
            // A deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..tags.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                tags.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut w = AckWindow::new();
            let mut out = Vec::new();
            for (i, tag) in tags.iter().enumerate() {
                let d = if fates[*tag as usize - 1] { Disposition::Ack } else { Disposition::Requeue };
                w.settle(*tag, d, &mut out);
                if i % 3 == 0 {
                    w.advance(&mut out);
                }
                if i % flush_every == 0 {
                    w.flush_stragglers(&mut out);
                }
            }
            w.advance(&mut out);
            prop_assert!(!w.has_stragglers());
            let fate = replay(n, &out).map_err(TestCaseError::fail)?;
            prop_assert_eq!(fate.len() as u64, n);
            for (tag, d) in fate {
                let want = if fates[tag as usize - 1] { Disposition::Ack } else { Disposition::Requeue };
                prop_assert_eq!(d, want);
            }
        }
    }
}
