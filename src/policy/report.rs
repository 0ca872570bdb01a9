//! What the policy did that an operator counts. The policy only reports: each event it counts
//! goes into the session's [`Reports`] (a fixed array of counts, no allocation), and the shell
//! drains them with [`Policy::take_reports`] after it has applied the actions, turning each into
//! its Prometheus counter (`count_policy_report`, outside the policy). A message stanza reports
//! nothing.

use super::Policy;

/// How many kinds of report there are.
const N: usize = 6;

/// One countable event of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Report {
    /// An invisibility command from the client, whatever it then did.
    InvisibilityCommand {
        protocol: Protocol,
        command: Command,
    },
    /// A presence the client sent that was withheld from the server or refused.
    PresenceSuppressed,
    /// A privacy-list IQ of the proxy's that the server refused (the session falls back to
    /// silent).
    PrivacyListFailed,
}

/// Which protocol carried an invisibility command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// XEP-0186 Invisible Command (an IQ-set).
    Xep0186,
    /// XEP-0018 Invisible Presence (`<presence type='invisible'/>`).
    Xep0018,
}

/// What an invisibility command asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Invisible,
    Visible,
}

impl Protocol {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Xep0186 => "xep0186",
            Protocol::Xep0018 => "xep0018",
        }
    }
}

impl Command {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Command::Invisible => "invisible",
            Command::Visible => "visible",
        }
    }
}

impl Report {
    /// Every report, in the order of its slot in [`Reports`].
    pub const ALL: [Report; N] = [
        Report::InvisibilityCommand {
            protocol: Protocol::Xep0186,
            command: Command::Invisible,
        },
        Report::InvisibilityCommand {
            protocol: Protocol::Xep0186,
            command: Command::Visible,
        },
        Report::InvisibilityCommand {
            protocol: Protocol::Xep0018,
            command: Command::Invisible,
        },
        Report::InvisibilityCommand {
            protocol: Protocol::Xep0018,
            command: Command::Visible,
        },
        Report::PresenceSuppressed,
        Report::PrivacyListFailed,
    ];

    fn slot(self) -> usize {
        match self {
            Report::InvisibilityCommand { protocol, command } => {
                let p = match protocol {
                    Protocol::Xep0186 => 0,
                    Protocol::Xep0018 => 2,
                };
                p + match command {
                    Command::Invisible => 0,
                    Command::Visible => 1,
                }
            }
            Report::PresenceSuppressed => 4,
            Report::PrivacyListFailed => 5,
        }
    }
}

/// The reports not yet drained: how many of each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reports {
    counts: [u32; N],
}

impl Reports {
    pub(super) fn add(&mut self, report: Report) {
        let n = &mut self.counts[report.slot()];
        *n = n.saturating_add(1);
    }

    /// How many times `report` was made.
    pub fn count(&self, report: Report) -> u32 {
        self.counts[report.slot()]
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|n| *n == 0)
    }
}

/// The reports made, each with its count (never zero).
impl IntoIterator for Reports {
    type Item = (Report, u64);
    type IntoIter = std::iter::FilterMap<
        std::iter::Zip<std::array::IntoIter<Report, N>, std::array::IntoIter<u32, N>>,
        fn((Report, u32)) -> Option<(Report, u64)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        Report::ALL
            .into_iter()
            .zip(self.counts)
            .filter_map(|(r, n)| (n > 0).then_some((r, u64::from(n))))
    }
}

impl Policy {
    /// Hands over the reports made since the last call, and starts counting afresh.
    pub fn take_reports(&mut self) -> Reports {
        std::mem::take(&mut self.reports)
    }

    pub(super) fn report(&mut self, report: Report) {
        self.reports.add(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_has_its_own_slot() {
        for (i, r) in Report::ALL.iter().enumerate() {
            assert_eq!(r.slot(), i, "{r:?}");
        }
    }

    #[test]
    fn reports_drain_with_their_counts() {
        let mut reports = Reports::default();
        assert!(reports.is_empty());
        assert_eq!(reports.into_iter().count(), 0);
        reports.add(Report::PresenceSuppressed);
        reports.add(Report::PresenceSuppressed);
        reports.add(Report::PrivacyListFailed);
        assert!(!reports.is_empty());
        assert_eq!(reports.count(Report::PresenceSuppressed), 2);
        let drained: Vec<_> = reports.into_iter().collect();
        assert_eq!(
            drained,
            [
                (Report::PresenceSuppressed, 2),
                (Report::PrivacyListFailed, 1)
            ]
        );
    }
}
