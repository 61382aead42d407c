//! Weighted choice among a rule's targets.
//!
//! Smooth weighted round-robin (the nginx algorithm): every pick adds each weight to its
//! running score, takes the highest score and subtracts the total from it. Over any window of
//! `sum(weights)` picks each target is chosen exactly `weight` times, interleaved (70/30 gives
//! 7 and 3 in every 10), which is what Kthena's documentation promises. Weighted random is the
//! alternative (Kthena's implementation). Zero-weight targets are never chosen.

use crate::rng::Rng;
use filter_config::TargetSelection;

#[derive(Debug, Clone)]
pub struct Weighted {
    weights: Vec<u32>,
    total: u64,
    current: Vec<i64>,
}

impl Weighted {
    /// `None` when no weight is positive (nothing could ever be chosen).
    pub fn new(weights: Vec<u32>) -> Option<Self> {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let current = vec![0; weights.len()];
        Some(Weighted {
            weights,
            total,
            current,
        })
    }

    pub fn pick(&mut self, how: TargetSelection, rng: &mut Rng) -> usize {
        if self.weights.len() == 1 {
            return 0;
        }
        match how {
            TargetSelection::WeightedRoundRobin => self.pick_smooth(),
            TargetSelection::WeightedRandom => self.pick_random(rng),
        }
    }

    fn pick_smooth(&mut self) -> usize {
        let mut best = 0;
        let mut best_score = i64::MIN;
        for (i, (cur, w)) in self.current.iter_mut().zip(&self.weights).enumerate() {
            *cur += i64::from(*w);
            if *w > 0 && *cur > best_score {
                best_score = *cur;
                best = i;
            }
        }
        if let Some(c) = self.current.get_mut(best) {
            *c -= self.total as i64;
        }
        best
    }

    fn pick_random(&self, rng: &mut Rng) -> usize {
        let mut x = rng.below(self.total);
        for (i, w) in self.weights.iter().enumerate() {
            let w = u64::from(*w);
            if x < w {
                return i;
            }
            x -= w;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(weights: &[u32], how: TargetSelection, n: usize, seed: u64) -> Vec<usize> {
        let mut w = Weighted::new(weights.to_vec()).unwrap();
        let mut rng = Rng::new(seed);
        let mut c = vec![0; weights.len()];
        for _ in 0..n {
            c[w.pick(how, &mut rng)] += 1;
        }
        c
    }

    #[test]
    fn seventy_thirty_is_exact_in_every_window_of_ten() {
        let mut w = Weighted::new(vec![70, 30]).unwrap();
        let mut rng = Rng::new(0);
        for _ in 0..10 {
            let mut c = [0; 2];
            for _ in 0..10 {
                c[w.pick(TargetSelection::WeightedRoundRobin, &mut rng)] += 1;
            }
            assert_eq!(c, [7, 3]);
        }
    }

    #[test]
    fn weights_are_relative_not_percent() {
        // Kthena: 50:30 gives 62.5% / 37.5%.
        assert_eq!(
            counts(&[50, 30], TargetSelection::WeightedRoundRobin, 80, 0),
            vec![50, 30]
        );
    }

    #[test]
    fn zero_weight_targets_are_never_chosen() {
        let c = counts(&[0, 5, 0], TargetSelection::WeightedRoundRobin, 100, 0);
        assert_eq!(c, vec![0, 100, 0]);
        let c = counts(&[0, 5, 0], TargetSelection::WeightedRandom, 100, 3);
        assert_eq!(c, vec![0, 100, 0]);
        assert!(Weighted::new(vec![0, 0]).is_none());
    }

    #[test]
    fn property_smooth_counts_match_weights_over_whole_periods() {
        let mut r = Rng::new(42);
        for _ in 0..200 {
            let n = 1 + r.below(6) as usize;
            let weights: Vec<u32> = (0..n).map(|_| r.below(101) as u32).collect();
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            if total == 0 {
                continue;
            }
            let periods = 3;
            let c = counts(
                &weights,
                TargetSelection::WeightedRoundRobin,
                (total * periods) as usize,
                0,
            );
            for (got, w) in c.iter().zip(&weights) {
                assert_eq!(*got as u64, u64::from(*w) * periods, "weights {weights:?}");
            }
        }
    }

    #[test]
    fn property_random_converges_to_weights() {
        let c = counts(&[70, 30], TargetSelection::WeightedRandom, 100_000, 9);
        let share = c[0] as f64 / 100_000.0;
        assert!((share - 0.7).abs() < 0.01, "share {share}");
    }
}
