//! The daemon's log: `tracing` events, one line each on stdout (the stream a
//! service manager collects), as text for people or JSON for log pipelines.
//!
//! Text lines read `TIME LEVEL dispatchd: MESSAGE key=value ...`; JSON lines are
//! one object each: `timestamp`, `level`, `message`, the event's fields, and
//! `target` (the module). When stdout is systemd's journal (`JOURNAL_STREAM`
//! is set), text lines lead with the syslog priority (`<4>`) instead of the
//! time: the journal stamps each line itself and files it at that priority,
//! so `journalctl -p warning` finds the warnings.
use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    filter::LevelFilter,
    fmt::{
        format::{self, FormatEvent, FormatFields},
        time::{FormatTime, SystemTime},
        FmtContext,
    },
    registry::LookupSpan,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL dispatchd: MESSAGE key=value ...`
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The least severe level written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// Installs the process's log writer. A second call (a test that runs the
/// daemon twice in one process) keeps the first.
pub fn init(format: LogFormat, level: LogLevel) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::from(level))
        .with_writer(std::io::stdout)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder
            .event_format(TextLine {
                journal: std::env::var_os("JOURNAL_STREAM").is_some(),
            })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// The text line. Not tracing's default: its lines lead with the module path,
/// where ours keep the `dispatchd: ` that people and scripts grep for.
struct TextLine {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journal {
            write!(writer, "<{}>{level} dispatchd: ", syslog_priority(level))?;
        } else {
            SystemTime.format_time(&mut writer)?;
            // Five wide, as wide as the longest level's name.
            write!(writer, " {level:>5} dispatchd: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The process's last line on stderr, for an error that ended it: under
/// systemd (`JOURNAL_STREAM` set) with the err priority in front, as the text
/// log's lines have theirs, so `journalctl -p warning` shows why it stopped
/// (an unprefixed line is filed at the unit's default, info).
pub fn fatal_line(error: &anyhow::Error) -> String {
    fatal_line_for(std::env::var_os("JOURNAL_STREAM").is_some(), error)
}

fn fatal_line_for(journal: bool, error: &anyhow::Error) -> String {
    let priority = if journal {
        format!("<{}>", syslog_priority(Level::ERROR))
    } else {
        String::new()
    };
    format!("{priority}dispatchd: {error:#}")
}

/// sd-daemon(3)'s priority prefixes: err, warning, info, debug.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    /// A writer into memory, for the formatter's lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(journal: bool, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(TextLine { journal })
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_text_line_is_time_level_name_message_and_fields() {
        let text = lines_of(false, || {
            tracing::warn!(daemon = "198.19.0.2:80", "daemon is down")
        });
        let (time, rest) = text.split_once(' ').unwrap();
        assert!(time.ends_with('Z') && time.contains('T'), "{text:?}");
        assert_eq!(
            rest,
            " WARN dispatchd: daemon is down daemon=\"198.19.0.2:80\"\n"
        );
    }

    #[test]
    fn the_last_line_of_a_failed_process_carries_err_priority_for_the_journal() {
        let e = anyhow::anyhow!("no such interface").context("front nosuch0");
        assert_eq!(
            fatal_line_for(false, &e),
            "dispatchd: front nosuch0: no such interface"
        );
        assert_eq!(
            fatal_line_for(true, &e),
            "<3>dispatchd: front nosuch0: no such interface"
        );
    }

    #[test]
    fn journal_lines_lead_with_the_syslog_priority_instead_of_the_time() {
        let text = lines_of(true, || {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!(n = 3, "i");
        });
        assert_eq!(
            text,
            "<3>ERROR dispatchd: e\n<4>WARN dispatchd: w\n<6>INFO dispatchd: i n=3\n"
        );
    }
}
