//! A bounded single-producer, single-consumer queue of `Copy` values: how a
//! worker's events reach the management loop.
//!
//! Why not `std::sync::mpsc::sync_channel`: its sender reads a slot's stamp before
//! writing the slot. The slot was last touched by the consumer on another core, so
//! that read misses the cache on every event and the worker waits for it. Here
//! the producer only writes slots (a store that misses does not stall the core),
//! keeps its own copy of the consumer's position, and publishes what it wrote once
//! per batch with a single store.
#![allow(unsafe_code)] // slots shared between two threads; each block says why it is sound

use std::{
    cell::UnsafeCell,
    mem::MaybeUninit,
    sync::{
        atomic::{AtomicUsize, Ordering::Acquire, Ordering::Release},
        Arc,
    },
};

use crossbeam_utils::CachePadded;

/// Positions count pushes and pops since creation (wrapping); a slot is
/// `position & mask`.
struct Shared<T> {
    /// Values below this position have been taken; written by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Values below this position are published; written by the producer.
    tail: CachePadded<AtomicUsize>,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: a slot is written only by the producer while it lies in
// `[head, head + capacity)` and at or past the published tail, and read only by the
// consumer while it lies in `[head, tail)`: never both at once (see `try_push` and
// `try_pop`). Values cross threads, hence `T: Send`.
unsafe impl<T: Send> Sync for Shared<T> {}

/// The sending half; one per worker, owned by one thread.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Next position to write; published up to here by [`publish`](Self::publish).
    tail: usize,
    /// `tail` as last published: a publish with nothing new stores nothing, so
    /// the consumer's cache line is not taken from it for no news.
    published: usize,
    /// The consumer's `head` as last read: at most the real one, so trusting it
    /// can only make the queue look fuller than it is.
    head_seen: usize,
    mask: usize,
}

/// The receiving half; one per worker, owned by one thread.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    head: usize,
    /// The producer's published `tail` as last read: at most the real one.
    tail_seen: usize,
    mask: usize,
}

/// A queue holding `capacity` values, rounded up to a power of two.
pub fn channel<T: Copy + Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let slots = capacity.max(1).next_power_of_two();
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        slots: (0..slots)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect(),
    });
    let mask = slots - 1;
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            published: 0,
            head_seen: 0,
            mask,
        },
        Consumer {
            shared,
            head: 0,
            tail_seen: 0,
            mask,
        },
    )
}

impl<T: Copy> Producer<T> {
    /// Writes `value` unless the queue is full (then gives it back). The consumer
    /// sees it only after the next [`publish`](Self::publish).
    #[inline]
    pub fn try_push(&mut self, value: T) -> Result<(), T> {
        if self.tail.wrapping_sub(self.head_seen) > self.mask {
            self.head_seen = self.shared.head.load(Acquire);
            if self.tail.wrapping_sub(self.head_seen) > self.mask {
                return Err(value);
            }
        }
        let slot = &self.shared.slots[self.tail & self.mask];
        // SAFETY: `tail - head_seen <= mask`, so this slot's previous value (if
        // any) was taken by the consumer, whose Acquire-loaded `head` has passed it:
        // the consumer no longer reads it. The slot is at or past the published
        // tail, so the consumer does not read it until a later publish. Only this
        // producer writes slots.
        unsafe { (*slot.get()).write(value) };
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Makes every value pushed so far visible to the consumer.
    #[inline]
    pub fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // Release: the slot writes above happen before the consumer's Acquire load
        // of `tail` that lets it read them.
        self.shared.tail.store(self.tail, Release);
        self.published = self.tail;
    }
}

impl<T: Copy> Consumer<T> {
    /// The oldest published value, if any.
    #[inline]
    pub fn try_pop(&mut self) -> Option<T> {
        if self.head == self.tail_seen {
            self.tail_seen = self.shared.tail.load(Acquire);
            if self.head == self.tail_seen {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.mask];
        // SAFETY: `head < tail_seen`, a tail the producer published (Release) after
        // writing this slot; the Acquire load above makes the write visible. The
        // producer does not write the slot again until `head` has passed it.
        let value = unsafe { (*slot.get()).assume_init() };
        self.head = self.head.wrapping_add(1);
        // Release: our read of the slot happens before the producer's Acquire load
        // of `head` that lets it overwrite the slot.
        self.shared.head.store(self.head, Release);
        Some(value)
    }

    /// Whether the producer no longer exists (its thread ended, by returning or
    /// by a panic): nothing more will arrive.
    pub fn producer_gone(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }

    /// Takes every value published so far.
    pub fn try_iter(&mut self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.try_pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_arrive_in_order_once_published() {
        let (mut tx, mut rx) = channel::<u32>(3);
        assert_eq!(tx.mask + 1, 4, "capacity rounds up to a power of two");
        for v in 0..4 {
            tx.try_push(v).unwrap();
        }
        assert_eq!(tx.try_push(4), Err(4), "full");
        assert_eq!(rx.try_pop(), None, "nothing published yet");
        tx.publish();
        assert_eq!(rx.try_pop(), Some(0));
        tx.try_push(4).unwrap();
        assert_eq!(tx.try_push(5), Err(5), "full again");
        tx.publish();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(rx.try_pop(), None);
    }

    #[test]
    fn a_producer_that_died_is_noticed() {
        let (tx, rx) = channel::<u8>(4);
        assert!(!rx.producer_gone());
        let died = std::thread::spawn(move || {
            let _tx = tx;
            panic!("worker bug");
        })
        .join();
        assert!(died.is_err());
        assert!(rx.producer_gone());
    }

    #[test]
    fn positions_wrap_around() {
        let (mut tx, mut rx) = channel::<u64>(2);
        tx.tail = usize::MAX - 2;
        tx.head_seen = tx.tail;
        rx.head = tx.tail;
        rx.tail_seen = tx.tail;
        rx.shared.head.store(tx.tail, Release);
        for round in 0..8u64 {
            tx.try_push(round).unwrap();
            tx.try_push(round + 100).unwrap();
            assert!(tx.try_push(0).is_err());
            tx.publish();
            assert_eq!(rx.try_iter().collect::<Vec<_>>(), [round, round + 100]);
        }
    }

    #[test]
    fn across_threads_nothing_is_lost_or_reordered() {
        // Miri (`cargo +nightly miri test --lib protocol::ring`) checks the unsafe code; it runs
        // far slower, so fewer values there.
        const N: u64 = if cfg!(miri) { 2_000 } else { 2_000_000 };
        let (mut tx, mut rx) = channel::<(u64, u64)>(64);
        let producer = std::thread::spawn(move || {
            let mut v = 0;
            while v < N {
                // Publish in batches of up to 16, like a worker per RX batch.
                for _ in 0..16 {
                    if v < N && tx.try_push((v, !v)).is_ok() {
                        v += 1;
                    }
                }
                tx.publish();
            }
        });
        let mut expected = 0;
        while expected < N {
            if let Some((v, check)) = rx.try_pop() {
                assert_eq!((v, check), (expected, !expected));
                expected += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.try_pop(), None);
    }
}
