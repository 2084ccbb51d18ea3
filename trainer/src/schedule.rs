//! A run's learning-rate and teacher-momentum schedules, as functions of the step.
//!
//! A run plans one cosine cycle over its total steps, fixed when it starts. A finished
//! run whose curve still rises can be extended (`--resume --extend-steps N`): that adds
//! a further cycle over steps [old total, old total + N), with its own warm-up, peak
//! learning rate and teacher momentum from its start value up to the end value (a warm
//! restart, as in SGDR). The cycles are settings of the run, so that every later resume
//! follows the same schedules step for step, and a step of an earlier cycle is
//! scheduled exactly as it was before the extension.

use crate::optim;
use m3ret_core::model::simdino;

/// The learning rate ends each cycle at this fraction of its peak.
const FINAL_FRACTION: f64 = 0.01;

/// One cosine cycle over steps [start, end).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cycle {
    pub start: i64,
    pub end: i64,
    /// Peak learning rate, reached after `warmup` steps of the cycle.
    pub lr: f64,
    pub warmup: i64,
    /// SimDINO: the teacher momentum at the cycle's first step.
    pub momentum_start: f64,
}

impl Cycle {
    /// A cycle of `steps` steps from `start`: warm-up over 5% of it (at least one step,
    /// or `warmup`), and, without `momentum`, the teacher's start momentum that
    /// [`default_momentum`] gives a cycle of its length.
    pub fn new(
        start: i64,
        steps: i64,
        lr: f64,
        warmup: Option<i64>,
        momentum: Option<f64>,
    ) -> Cycle {
        let steps = steps.max(1);
        Cycle {
            start,
            end: start + steps,
            lr,
            warmup: warmup.unwrap_or((steps / 20).max(1)),
            momentum_start: momentum.unwrap_or_else(|| default_momentum(steps)),
        }
    }

    fn steps(&self) -> i64 {
        self.end - self.start
    }
}

/// 0.996 (DINO), or 1 - 10/steps when that is lower, so that a short cycle's teacher
/// forgets where it started (the product of the momenta is then about e^-10).
pub fn default_momentum(steps: i64) -> f64 {
    0.996f64.min(1.0 - 10.0 / steps.max(1) as f64).max(0.0)
}

/// The cycles of a run, in order, each starting where the one before ends.
#[derive(Clone, Debug)]
pub struct Schedules {
    cycles: Vec<Cycle>,
    momentum_end: f64,
}

impl Schedules {
    /// `first`: the planned run; `extensions`: the cycles it was extended by.
    pub fn new(first: Cycle, extensions: &[Cycle], momentum_end: f64) -> Result<Schedules, String> {
        let mut cycles = vec![first];
        for c in extensions {
            let last = cycles.last().expect("one cycle");
            if c.start != last.end || c.end <= c.start {
                return Err(format!(
                    "the run's extension cycles do not follow each other: steps {}..{} after {}..{}",
                    c.start, c.end, last.start, last.end
                ));
            }
            cycles.push(c.clone());
        }
        Ok(Schedules {
            cycles,
            momentum_end,
        })
    }

    /// The run's last step (exclusive): the end of its last cycle.
    pub fn total(&self) -> i64 {
        self.cycles.last().expect("one cycle").end
    }

    /// The cycle `step` belongs to (steps past the end: the last).
    fn cycle(&self, step: i64) -> &Cycle {
        self.cycles
            .iter()
            .find(|c| step < c.end)
            .unwrap_or_else(|| self.cycles.last().expect("one cycle"))
    }

    pub fn learning_rate(&self, step: i64) -> f64 {
        let c = self.cycle(step);
        optim::learning_rate(step - c.start, c.steps(), c.warmup, c.lr, FINAL_FRACTION)
    }

    pub fn teacher_momentum(&self, step: i64) -> f64 {
        let c = self.cycle(step);
        simdino::teacher_momentum(
            step - c.start,
            c.steps(),
            c.momentum_start,
            self.momentum_end,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cycle_is_the_plain_schedule_and_an_extension_restarts_it() {
        let first = Cycle::new(0, 100, 1e-3, Some(10), Some(0.99));
        let plain = Schedules::new(first.clone(), &[], 1.0).unwrap();
        let second = Cycle::new(100, 40, 5e-4, None, None);
        let extended = Schedules::new(first, &[second], 1.0).unwrap();
        assert_eq!((plain.total(), extended.total()), (100, 140));
        for step in 0..100 {
            assert_eq!(extended.learning_rate(step), plain.learning_rate(step));
            assert_eq!(
                extended.teacher_momentum(step),
                plain.teacher_momentum(step)
            );
            assert_eq!(
                plain.learning_rate(step),
                optim::learning_rate(step, 100, 10, 1e-3, FINAL_FRACTION)
            );
            assert_eq!(
                plain.teacher_momentum(step),
                simdino::teacher_momentum(step, 100, 0.99, 1.0)
            );
        }
        // The second cycle warms up again (2 steps: 5% of 40) from its own peak.
        assert!((extended.learning_rate(100) - 2.5e-4).abs() < 1e-12);
        assert!((extended.learning_rate(101) - 5e-4).abs() < 1e-12);
        assert!(extended.learning_rate(139) < 1e-5);
        assert_eq!(extended.teacher_momentum(100), 0.75);
        assert!(extended.teacher_momentum(139) > 0.99);
    }

    #[test]
    fn cycles_that_do_not_follow_each_other_are_refused() {
        let first = Cycle::new(0, 100, 1e-3, None, None);
        let gap = Cycle::new(120, 40, 1e-3, None, None);
        let err = Schedules::new(first, &[gap], 1.0).unwrap_err();
        assert!(err.contains("120..160 after 0..100"), "{err}");
    }
}
