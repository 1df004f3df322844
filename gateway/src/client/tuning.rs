//! The client settings that change while the gateway runs (the settings
//! file, [`tally_runtime::live`]), read where they are used: attempts per
//! call, the retry budget and the coalescing bounds. The others live with
//! what they tune: the policy, breaker thresholds and pool size in
//! [`super::backends::Backends`], call slots in [`super::batching::CallSlots`].

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::ClientSettings;
use super::retry::RetryBudget;

pub struct Tuning {
    max_attempts: AtomicU32,
    /// The budget and the settings it was made with: a new budget (which
    /// starts empty) only when they change.
    budget: ArcSwap<RetryBudget>,
    budget_settings: Mutex<(f32, u32)>,
    coalesce_max_ops: AtomicUsize,
    coalesce_max_queue: AtomicUsize,
}

impl Tuning {
    pub fn new(settings: &ClientSettings) -> Tuning {
        let budget = (settings.retry_budget_percent, settings.retry_min_per_second);
        Tuning {
            max_attempts: AtomicU32::new(settings.retry_attempts.max(1)),
            budget: ArcSwap::from_pointee(RetryBudget::new(budget.0, budget.1)),
            budget_settings: Mutex::new(budget),
            coalesce_max_ops: AtomicUsize::new(settings.coalesce_max_ops.max(1)),
            coalesce_max_queue: AtomicUsize::new(settings.coalesce_max_queue.max(1)),
        }
    }

    /// Takes the live values of `settings`.
    pub fn retune(&self, settings: &ClientSettings) {
        self.max_attempts.store(settings.retry_attempts.max(1), Ordering::Relaxed);
        self.coalesce_max_ops.store(settings.coalesce_max_ops.max(1), Ordering::Relaxed);
        self.coalesce_max_queue.store(settings.coalesce_max_queue.max(1), Ordering::Relaxed);
        let wanted = (settings.retry_budget_percent, settings.retry_min_per_second);
        let mut current = self.budget_settings.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != wanted {
            self.budget.store(Arc::new(RetryBudget::new(wanted.0, wanted.1)));
            *current = wanted;
        }
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> arc_swap::Guard<Arc<RetryBudget>> {
        self.budget.load()
    }

    /// Most items one coalesced call carries.
    pub fn coalesce_max_ops(&self) -> usize {
        self.coalesce_max_ops.load(Ordering::Relaxed)
    }

    /// Items waiting in one coalescing queue at most.
    pub fn coalesce_max_queue(&self) -> usize {
        self.coalesce_max_queue.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retuning_changes_what_callers_read_and_renews_the_budget_only_on_change() {
        let settings = ClientSettings {
            retry_budget_percent: 0.0,
            retry_min_per_second: 1,
            ..crate::config::Config::defaults().client()
        };
        let tuning = Tuning::new(&settings);
        assert_eq!(tuning.max_attempts(), 3);
        assert_eq!((0..20).filter(|_| tuning.budget().withdraw()).count(), 10, "1 a second over 10 s");

        let same = ClientSettings { retry_attempts: 1, coalesce_max_ops: 7, coalesce_max_queue: 9, ..settings.clone() };
        tuning.retune(&same);
        assert_eq!((tuning.max_attempts(), tuning.coalesce_max_ops(), tuning.coalesce_max_queue()), (1, 7, 9));
        assert!(!tuning.budget().withdraw(), "an unchanged budget keeps what was spent");

        tuning.retune(&ClientSettings { retry_min_per_second: 2, ..same });
        assert_eq!((0..40).filter(|_| tuning.budget().withdraw()).count(), 20, "a new floor, 2 a second");
    }
}
