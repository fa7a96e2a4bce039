//! One disk's commit ledger: where each change set of the disk is between being cut and its
//! batches leaving the cache, and which storage call comes next. Pure and I/O-free; the
//! coordinator ([`super`]) owns one per disk, feeds it events and carries out the
//! [`Step`]s it hands out, so the ordering rules live here and nowhere else:
//!
//! 1. Change sets are cut in seq order ([`Ledger::dispatched`]) and may finish uploading in
//!    any order ([`Ledger::uploaded`]); `uploaded_seq` is the end of the contiguous prefix.
//! 2. A recovery point is written only once the prefix covers its seq (a restore replays
//!    every change set up to the point, so all of them must be in storage first).
//! 3. The cache releases a prefix only after every point inside it is written: a crash
//!    between the two re-uploads and re-writes, never loses a point.
//! 4. At most one storage call (points or release) per disk is out at once, so their
//!    answers apply in order; a failed call is simply handed out again later.
//!
//! A restart is a new ledger from the cache's persisted watermark ([`Ledger::resume`]):
//! everything after it is cut, uploaded and committed again (FORMATS.md allows overlap).
//! Memory: the completed ranges and pending points of change sets in flight, which the
//! memory budget bounds.

use std::collections::BTreeMap;

/// The storage call a disk needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<P> {
    /// Write these recovery points, in this order (seq ascending), then report how many
    /// were written with [`Ledger::points_written`].
    WritePoints(Vec<(u64, P)>),
    /// Release the cache's batches through this seq, then report [`Ledger::released`].
    Release { through: u64 },
}

/// Events the ledger refuses: a driver bug, never data from outside.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("change set {first}..={last} does not follow the dispatched prefix {dispatched_through}")]
    OutOfOrderCut {
        first: u64,
        last: u64,
        dispatched_through: u64,
    },
    #[error("change set {first}..={last} was never cut or is already uploaded")]
    UnknownUpload { first: u64, last: u64 },
    #[error("no storage call of this kind is out")]
    NoCallOut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallOut {
    Points { count: usize },
    Release { through: u64 },
}

/// See the module header.
#[derive(Clone, Debug)]
pub struct Ledger<P> {
    dispatched_through: u64,
    uploaded_seq: u64,
    released_through: u64,
    /// Cut change sets not yet uploaded: first seq -> last seq.
    cut: BTreeMap<u64, u64>,
    /// Uploaded change sets beyond `uploaded_seq`: first seq -> last seq.
    completed: BTreeMap<u64, u64>,
    /// Points of uploaded change sets not yet written, by seq (several bookmarks may share one).
    pending_points: BTreeMap<u64, Vec<P>>,
    call: Option<CallOut>,
}

impl<P: Clone> Ledger<P> {
    /// A disk whose cache has released everything through `released_through`.
    pub fn resume(released_through: u64) -> Self {
        Self {
            dispatched_through: released_through,
            uploaded_seq: released_through,
            released_through,
            cut: BTreeMap::new(),
            completed: BTreeMap::new(),
            pending_points: BTreeMap::new(),
            call: None,
        }
    }

    pub fn dispatched_through(&self) -> u64 {
        self.dispatched_through
    }

    /// The end of the contiguous prefix of uploaded change sets.
    pub fn uploaded_seq(&self) -> u64 {
        self.uploaded_seq
    }

    pub fn released_through(&self) -> u64 {
        self.released_through
    }

    /// Points found in uploaded change sets and not yet written.
    #[cfg(test)]
    pub fn pending_points(&self) -> usize {
        self.pending_points.values().map(Vec::len).sum()
    }

    /// The change set `first..=last` was cut (it must start right after the last one).
    pub fn dispatched(&mut self, first: u64, last: u64) -> Result<(), LedgerError> {
        if first != self.dispatched_through + 1 || last < first {
            return Err(LedgerError::OutOfOrderCut {
                first,
                last,
                dispatched_through: self.dispatched_through,
            });
        }
        self.cut.insert(first, last);
        self.dispatched_through = last;
        Ok(())
    }

    /// The change set `first..=last` is in storage; `points` are the bookmarks it holds.
    pub fn uploaded(&mut self, first: u64, last: u64, points: Vec<(u64, P)>) -> Result<(), LedgerError> {
        if self.cut.get(&first) != Some(&last) {
            return Err(LedgerError::UnknownUpload { first, last });
        }
        self.cut.remove(&first);
        self.completed.insert(first, last);
        for (seq, point) in points {
            self.pending_points.entry(seq).or_default().push(point);
        }
        while let Some(last) = self.completed.remove(&(self.uploaded_seq + 1)) {
            self.uploaded_seq = last;
        }
        Ok(())
    }

    /// The storage call this disk needs now, if any (and none is out); it is then out until
    /// its answer is reported.
    pub fn next_step(&mut self) -> Option<Step<P>> {
        if self.call.is_some() {
            return None;
        }
        let points: Vec<(u64, P)> = self
            .pending_points
            .range(..=self.uploaded_seq)
            .flat_map(|(seq, points)| points.iter().map(|p| (*seq, p.clone())))
            .collect();
        if !points.is_empty() {
            self.call = Some(CallOut::Points { count: points.len() });
            return Some(Step::WritePoints(points));
        }
        if self.uploaded_seq > self.released_through {
            self.call = Some(CallOut::Release {
                through: self.uploaded_seq,
            });
            return Some(Step::Release {
                through: self.uploaded_seq,
            });
        }
        None
    }

    /// The first `written` points of the out [`Step::WritePoints`] exist in storage (all of
    /// them, or fewer when a write failed: the rest are handed out again).
    pub fn points_written(&mut self, written: usize) -> Result<(), LedgerError> {
        let Some(CallOut::Points { count }) = self.call else {
            return Err(LedgerError::NoCallOut);
        };
        self.call = None;
        // The handed-out points are the smallest pending ones (later uploads only add points
        // beyond the prefix they were taken from), so they are still at the front.
        let mut left = written.min(count);
        while left > 0 {
            let Some(mut entry) = self.pending_points.first_entry() else {
                break;
            };
            let points = entry.get_mut();
            let take = left.min(points.len());
            points.drain(..take);
            left -= take;
            if points.is_empty() {
                entry.remove();
            }
        }
        Ok(())
    }

    /// The out [`Step::Release`] is done.
    pub fn released(&mut self) -> Result<(), LedgerError> {
        let Some(CallOut::Release { through }) = self.call else {
            return Err(LedgerError::NoCallOut);
        };
        self.call = None;
        self.released_through = self.released_through.max(through);
        Ok(())
    }

    /// The out call failed; the same work is handed out again by a later [`Self::next_step`].
    pub fn call_failed(&mut self) {
        self.call = None;
    }
}

#[cfg(test)]
mod tests {
    //! Property tests against a model: a disk of `n` batches cut into change sets, bookmarks
    //! on random seqs, uploads finishing in random order (a failed upload is retried by the
    //! driver and only finishes later, which random order covers), storage calls failing at
    //! random, some after writing part of their points, and restarts from the cache's
    //! watermark. After every event the ledger's prefix, points and
    //! releases are checked against what the model knows is in storage.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Event {
        /// Cut the next change set of this many batches (if any are left).
        Cut(u64),
        /// Finish the upload of the in-flight change set at this index (modulo their count).
        Upload(usize),
        /// Carry out the next step; `true` = its storage call succeeds, else it fails
        /// (a points call may fail after writing some of them).
        Step(bool, usize),
        /// ferryd restarts: in-flight work is lost, the cache keeps its watermark.
        Restart,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => (1u64..5).prop_map(Event::Cut),
            4 => any::<usize>().prop_map(Event::Upload),
            4 => (proptest::bool::weighted(0.8), 0usize..4).prop_map(|(ok, n)| Event::Step(ok, n)),
            1 => Just(Event::Restart),
        ]
    }

    /// What the world outside the ledger holds.
    struct World {
        batches: u64,
        bookmarks: BTreeSet<u64>,
        /// Seqs whose change set is in storage.
        stored: BTreeSet<u64>,
        /// Points in storage, by seq.
        points: BTreeSet<u64>,
        /// The cache's persisted watermark.
        released: u64,
        /// Change sets cut and not yet uploaded (first, last).
        in_flight: Vec<(u64, u64)>,
    }

    impl World {
        fn points_in(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
            self.bookmarks.range(first..=last).map(|s| (*s, *s)).collect()
        }

        fn check(&self, ledger: &Ledger<u64>) {
            // The prefix is exactly what storage holds contiguously.
            let prefix = (self.released + 1..=self.batches)
                .take_while(|s| self.stored.contains(s))
                .last()
                .unwrap_or(self.released);
            assert!(ledger.uploaded_seq() <= prefix, "prefix ahead of storage");
            // Nothing released whose change set or point is missing from storage.
            for seq in 1..=self.released {
                assert!(self.stored.contains(&seq), "released {seq} never stored");
                if self.bookmarks.contains(&seq) {
                    assert!(self.points.contains(&seq), "released past unwritten point {seq}");
                }
            }
            // No point written before its whole prefix was stored.
            for seq in &self.points {
                assert!(
                    (1..=*seq).all(|s| self.stored.contains(&s)),
                    "point {seq} before its data"
                );
            }
            assert!(ledger.released_through() <= ledger.uploaded_seq());
            assert!(ledger.uploaded_seq() <= ledger.dispatched_through());
        }
    }

    fn run(batches: u64, bookmarks: BTreeSet<u64>, events: Vec<Event>) {
        let mut world = World {
            batches,
            bookmarks,
            stored: BTreeSet::new(),
            points: BTreeSet::new(),
            released: 0,
            in_flight: Vec::new(),
        };
        let mut ledger: Ledger<u64> = Ledger::resume(0);
        let mut out: Option<Step<u64>> = None;
        let apply = |world: &mut World, ledger: &mut Ledger<u64>, out: &mut Option<Step<u64>>, ok: bool, n: usize| {
            if out.is_none() {
                *out = ledger.next_step();
            }
            match out.take() {
                None => {}
                Some(Step::WritePoints(points)) => {
                    let written = if ok { points.len() } else { n.min(points.len()) };
                    for (seq, _) in &points[..written] {
                        world.points.insert(*seq);
                    }
                    // A failed call reports the points it wrote before failing (maybe none).
                    ledger.points_written(written).unwrap();
                }
                Some(Step::Release { through }) => {
                    if ok {
                        world.released = world.released.max(through);
                        ledger.released().unwrap();
                    } else {
                        ledger.call_failed();
                    }
                }
            }
        };
        for event in events {
            match event {
                Event::Cut(len) => {
                    let first = ledger.dispatched_through() + 1;
                    if first <= batches {
                        let last = (first + len - 1).min(batches);
                        ledger.dispatched(first, last).unwrap();
                        world.in_flight.push((first, last));
                    }
                }
                Event::Upload(i) if !world.in_flight.is_empty() => {
                    let (first, last) = world.in_flight.remove(i % world.in_flight.len());
                    world.stored.extend(first..=last);
                    let points = world.points_in(first, last);
                    ledger.uploaded(first, last, points).unwrap();
                }
                Event::Upload(_) => {}
                Event::Step(ok, n) => apply(&mut world, &mut ledger, &mut out, ok, n),
                Event::Restart => {
                    ledger = Ledger::resume(world.released);
                    world.in_flight.clear();
                    out = None;
                }
            }
            world.check(&ledger);
        }
        // Then the storms pass: everything is cut, uploaded and committed.
        loop {
            let first = ledger.dispatched_through() + 1;
            if first <= batches {
                ledger.dispatched(first, batches).unwrap();
                world.in_flight.push((first, batches));
            }
            while let Some((first, last)) = world.in_flight.pop() {
                world.stored.extend(first..=last);
                let points = world.points_in(first, last);
                ledger.uploaded(first, last, points).unwrap();
            }
            apply(&mut world, &mut ledger, &mut out, true, 0);
            world.check(&ledger);
            if ledger.next_step().is_none() {
                break;
            }
            ledger.call_failed(); // peeked: hand it out again on the next round
        }
        assert_eq!(ledger.uploaded_seq(), batches);
        assert_eq!(ledger.released_through(), batches);
        assert_eq!(world.released, batches, "the cache released everything");
        assert_eq!(ledger.pending_points(), 0);
        assert!(
            world.bookmarks.is_subset(&world.points),
            "every bookmark became a point"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn commits_follow_the_rules_in_any_order(
            batches in 1u64..40,
            bookmarks in proptest::collection::btree_set(1u64..40, 0..10),
            events in proptest::collection::vec(event(), 0..120),
        ) {
            let bookmarks = bookmarks.into_iter().filter(|s| *s <= batches).collect();
            run(batches, bookmarks, events);
        }
    }

    #[test]
    fn release_waits_for_the_points_inside_it() {
        let mut ledger: Ledger<&str> = Ledger::resume(10);
        ledger.dispatched(11, 12).unwrap();
        ledger.dispatched(13, 15).unwrap();
        ledger.uploaded(13, 15, vec![(15, "b")]).unwrap();
        assert_eq!(ledger.next_step(), None, "15's point waits for 11..=12");
        ledger.uploaded(11, 12, vec![(12, "a")]).unwrap();
        assert_eq!(ledger.uploaded_seq(), 15);
        assert_eq!(ledger.next_step(), Some(Step::WritePoints(vec![(12, "a"), (15, "b")])));
        assert_eq!(ledger.next_step(), None, "one call out at a time");
        ledger.points_written(1).unwrap();
        assert_eq!(ledger.next_step(), Some(Step::WritePoints(vec![(15, "b")])));
        ledger.call_failed();
        assert_eq!(ledger.next_step(), Some(Step::WritePoints(vec![(15, "b")])));
        ledger.points_written(1).unwrap();
        assert_eq!(ledger.next_step(), Some(Step::Release { through: 15 }));
        ledger.released().unwrap();
        assert_eq!(ledger.released_through(), 15);
        assert_eq!(ledger.next_step(), None);
    }

    #[test]
    fn driver_mistakes_are_refused() {
        let mut ledger: Ledger<()> = Ledger::resume(0);
        assert!(matches!(
            ledger.dispatched(2, 3),
            Err(LedgerError::OutOfOrderCut { .. })
        ));
        ledger.dispatched(1, 3).unwrap();
        assert!(matches!(
            ledger.uploaded(1, 2, vec![]),
            Err(LedgerError::UnknownUpload { .. })
        ));
        ledger.uploaded(1, 3, vec![]).unwrap();
        assert!(matches!(
            ledger.uploaded(1, 3, vec![]),
            Err(LedgerError::UnknownUpload { .. })
        ));
        assert_eq!(ledger.points_written(1), Err(LedgerError::NoCallOut));
        assert_eq!(ledger.released(), Err(LedgerError::NoCallOut));
    }
}
