//! Whether ferryd takes new data now, and why not: open, drained for maintenance (`ferryctl
//! drain`, undone by `ferryctl drain --resume`) or shutting down (SIGTERM, final). Agents see
//! the reason in the 503 `draining` answer and operators in `ferryctl status`; shutting down
//! wins over maintenance, and nothing reopens a server that is shutting down.

use std::sync::atomic::{AtomicU8, Ordering};

const OPEN: u8 = 0;
const MAINTENANCE: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

/// Why new data is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `ferryctl drain`: uploads go on; `ferryctl drain --resume` reopens.
    Maintenance,
    /// SIGTERM: requests in flight finish, then ferryd exits.
    ShuttingDown,
}

impl Refusal {
    /// The 503 `draining` message an agent (or curl) sees.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Maintenance => {
                "draining for maintenance: this server takes no new data until its operator runs \
                 `ferryctl drain --resume`; keep the data and retry"
            }
            Refusal::ShuttingDown => "the server is shutting down; retry against it or another",
        }
    }
}

#[derive(Debug, Default)]
pub struct Admission(AtomicU8);

impl Admission {
    pub fn refusal(&self) -> Option<Refusal> {
        match self.0.load(Ordering::Relaxed) {
            OPEN => None,
            MAINTENANCE => Some(Refusal::Maintenance),
            _ => Some(Refusal::ShuttingDown),
        }
    }

    /// Starts (true) or ends (false) a maintenance drain; returns whether anything changed.
    /// A server that is shutting down stays so.
    pub fn set_maintenance(&self, on: bool) -> bool {
        let (from, to) = if on { (OPEN, MAINTENANCE) } else { (MAINTENANCE, OPEN) };
        self.0
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    pub fn shut_down(&self) {
        self.0.store(SHUTTING_DOWN, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_toggles_and_shutting_down_is_final() {
        let admission = Admission::default();
        assert_eq!(admission.refusal(), None);
        assert!(admission.set_maintenance(true));
        assert!(!admission.set_maintenance(true), "already draining");
        assert_eq!(admission.refusal(), Some(Refusal::Maintenance));
        assert!(admission.set_maintenance(false));
        assert_eq!(admission.refusal(), None);
        admission.set_maintenance(true);
        admission.shut_down();
        assert!(
            !admission.set_maintenance(false),
            "a resume cannot reopen a server shutting down"
        );
        assert_eq!(admission.refusal(), Some(Refusal::ShuttingDown));
    }
}
