//! Every choice the simulator makes comes from here: a seeded generator for
//! latencies and faults, and a [`Chooser`] for which ready event runs next
//! (random, or enumerated depth-first).

/// SplitMix64: small, fast, and the same sequence on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_5EED)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.below(1000) < u64::from(per_mille)
    }
}

/// Picks which of `n` ready events runs next. `current` is the index of the
/// event of the worker that ran last, if it is among them (running another
/// one is a preemption).
pub trait Chooser {
    fn pick(&mut self, n: usize, current: Option<usize>) -> usize;
}

impl Chooser for Rng {
    fn pick(&mut self, n: usize, _current: Option<usize>) -> usize {
        self.below(n as u64) as usize
    }
}

/// Depth-first enumeration of every schedule, optionally with at most
/// `preemptions` switches away from a worker that could have gone on
/// (CHESS-style bounding). Run an execution, then [`Dfs::advance`].
pub struct Dfs {
    /// (choice, options) at each branching point of the current execution.
    path: Vec<(usize, usize)>,
    pos: usize,
    preemptions: Option<u32>,
    used: u32,
}

impl Dfs {
    pub fn new(preemptions: Option<u32>) -> Dfs {
        Dfs {
            path: Vec::new(),
            pos: 0,
            preemptions,
            used: 0,
        }
    }

    /// Moves to the next unexplored schedule; false when all are done.
    pub fn advance(&mut self) -> bool {
        self.pos = 0;
        self.used = 0;
        while let Some((choice, n)) = self.path.pop() {
            if choice + 1 < n {
                self.path.push((choice + 1, n));
                return true;
            }
        }
        false
    }
}

impl Chooser for Dfs {
    fn pick(&mut self, n: usize, current: Option<usize>) -> usize {
        // Option 0 is the current worker when it may go on; the others are
        // preemptions, allowed while the budget lasts.
        let budget_left = self.preemptions.is_none_or(|b| self.used < b);
        let options = match current {
            Some(_) if !budget_left => 1,
            _ => n,
        };
        // Only branching points are recorded.
        let choice = if options == 1 {
            0
        } else if self.pos < self.path.len() {
            let (choice, recorded) = self.path[self.pos];
            assert_eq!(recorded, options, "a replayed schedule diverged");
            self.pos += 1;
            choice
        } else {
            self.path.push((0, options));
            self.pos += 1;
            0
        };
        // Map the choice to an event: 0 is `current` when there is one.
        match current {
            Some(c) => {
                if choice == 0 {
                    c
                } else {
                    self.used += 1;
                    // The remaining events in order, skipping `current`.
                    let i = choice - 1;
                    if i < c { i } else { i + 1 }
                }
            }
            None => choice,
        }
    }
}
