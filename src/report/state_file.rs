//! `--state-file`'s part in a report: once the count line is written (and synced), the
//! journal records the window as reported, so that a restart neither loses the window nor
//! writes its line again. Added to the fan-out right after the count log and before the
//! callbacks and Kafka, so that the journal hears of the report before any of its
//! deliveries is recorded as done.

use crate::report::{Reporter, Scope, WindowReport};
use crate::state::journal::Record;
use crate::state::writer::JournalSender;

pub struct StateFileMark {
    journal: JournalSender,
    /// Whether a Kafka record is due for each window (Kafka is configured).
    kafka: bool,
}

impl StateFileMark {
    pub fn new(journal: JournalSender, kafka: bool) -> Self {
        StateFileMark { journal, kafka }
    }
}

impl Reporter for StateFileMark {
    fn report(&mut self, report: &WindowReport) {
        // A single instance only reports its own global counts (`--state-file` and
        // `--redis` exclude each other).
        if report.scope != Scope::Global {
            return;
        }
        // The count line is written through already; this makes it durable before the
        // record that says it exists.
        log::logger().flush();
        self.journal.record(Record::Reported {
            window_start: report.window_start,
            count: report.unique_count,
            kafka: self.kafka,
        });
    }
}
