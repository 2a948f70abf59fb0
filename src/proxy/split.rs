//! Percentage splits: an independent weighted choice per request. Arms with 0 % are left out of
//! the table entirely, so they can never be picked by chance (only by tag).

/// A precomputed cumulative table over the non-zero arms of a split.
#[derive(Debug, Clone)]
pub struct Split {
    /// Running totals, ascending; `cumulative[i]` is the exclusive upper bound of arm `arms[i]`.
    cumulative: Box<[u32]>,
    /// Index into the caller's target list for each non-zero arm.
    arms: Box<[usize]>,
}

impl Split {
    /// Builds the table from each arm's weight, in the caller's order.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Split {
        let mut total = 0u32;
        let mut cumulative = Vec::new();
        let mut arms = Vec::new();
        for (i, w) in weights.into_iter().enumerate() {
            if w == 0 {
                continue;
            }
            total += w;
            cumulative.push(total);
            arms.push(i);
        }
        Split {
            cumulative: cumulative.into(),
            arms: arms.into(),
        }
    }

    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The weight of the caller's arm `arm` (0 for an arm left out).
    pub fn weight_of(&self, arm: usize) -> u32 {
        self.arms.iter().position(|a| *a == arm).map_or(0, |i| {
            self.cumulative[i] - if i == 0 { 0 } else { self.cumulative[i - 1] }
        })
    }

    /// Picks an arm at random; `None` only if every weight is zero.
    pub fn pick(&self) -> Option<usize> {
        match self.arms.len() {
            0 => None,
            // The common single-revision case costs no random number.
            1 => Some(self.arms[0]),
            _ => Some(self.pick_with(fastrand::u32(0..self.total()))),
        }
    }

    /// Picks the arm that owns `roll` (which must be below [`Split::total`]).
    pub fn pick_with(&self, roll: u32) -> usize {
        let i = self.cumulative.partition_point(|&c| c <= roll);
        self.arms[i.min(self.arms.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_roll_maps_to_its_weight_exactly() {
        let weights = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0];
        let s = Split::new(weights);
        assert_eq!(s.total(), 100);
        let mut counts = [0u32; 10];
        for roll in 0..100 {
            counts[s.pick_with(roll)] += 1;
        }
        assert_eq!(counts, weights);
        for (i, w) in weights.iter().enumerate() {
            assert_eq!(s.weight_of(i), *w);
        }
    }

    #[test]
    fn zero_arms_never_picked() {
        let s = Split::new([0, 100, 0]);
        for _ in 0..1000 {
            assert_eq!(s.pick(), Some(1));
        }
        assert_eq!(Split::new([0, 0]).pick(), None);
    }
}
