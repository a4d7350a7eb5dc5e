//! The CSV trace format: `seconds,queueDepth[,activeUsers[,preQueueDepth]]`. With a header row
//! the columns are found by name (`seconds`, `queueDepth`, `activeUsers`, `preQueueDepth`; the
//! last two optional, in any order); without one they are positional.

use std::path::Path;

/// One sample of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePoint {
    /// Seconds since the start of the trace.
    pub secs: f64,
    /// Users waiting in the queue.
    pub queue_depth: f64,
    /// Users admitted and shopping, if the trace has the column.
    pub active_users: Option<f64>,
    /// Users in the pre-queue (before the on-sale), if the trace has the column.
    pub pre_queue_depth: Option<f64>,
}

/// A whole trace, sorted by time.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub points: Vec<TracePoint>,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read the trace file")]
    Io(#[source] std::io::Error),
    #[error("line {line}: {message}")]
    Row { line: u64, message: String },
    #[error("the trace has no samples")]
    Empty,
}

impl Trace {
    /// Reads a trace from a CSV file.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        let text = std::fs::read_to_string(path).map_err(TraceError::Io)?;
        Self::parse(&text)
    }

    /// Parses CSV text. A first row whose first field is not a number is taken as a header.
    /// Rows must be in strictly increasing time order; values must be finite and non-negative.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut points: Vec<TracePoint> = Vec::new();
        // Column index of queueDepth, activeUsers, preQueueDepth (seconds is always first).
        let mut columns: (usize, Option<usize>, Option<usize>) = (1, Some(2), Some(3));
        let mut named = false;
        for (index, record) in reader.records().enumerate() {
            let record = record.map_err(|e| TraceError::Row {
                line: e.position().map_or(0, |p| p.line()),
                message: e.to_string(),
            })?;
            let line = record.position().map_or(index as u64 + 1, |p| p.line());
            let row_err = |message: String| TraceError::Row { line, message };
            let first = record.get(0).unwrap_or_default();
            if index == 0 && first.parse::<f64>().is_err() {
                let find = |name: &str| record.iter().position(|h| h == name);
                let queue = find("queueDepth")
                    .ok_or_else(|| row_err("the header has no `queueDepth` column".into()))?;
                if first != "seconds" {
                    return Err(row_err("the first column must be `seconds`".into()));
                }
                if let Some(unknown) = record
                    .iter()
                    .find(|h| !["seconds", "queueDepth", "activeUsers", "preQueueDepth"].contains(h))
                {
                    return Err(row_err(format!("unknown column `{unknown}`")));
                }
                columns = (queue, find("activeUsers"), find("preQueueDepth"));
                named = true;
                continue; // header
            }
            let width = if named {
                1 + usize::from(columns.1.is_some()) + usize::from(columns.2.is_some()) + 1
            } else {
                record.len()
            };
            if record.len() < 2 || record.len() > 4 || record.len() != width {
                return Err(row_err(format!(
                    "expected `seconds,queueDepth[,activeUsers[,preQueueDepth]]` ({width} fields), got {} fields",
                    record.len()
                )));
            }
            let num = |i: usize, name: &str| -> Result<f64, TraceError> {
                let raw = record.get(i).unwrap_or_default();
                let v: f64 = raw
                    .parse()
                    .map_err(|_| row_err(format!("{name} `{raw}` is not a number")))?;
                if !v.is_finite() || v < 0.0 {
                    return Err(row_err(format!(
                        "{name} `{raw}` must be a finite, non-negative number"
                    )));
                }
                Ok(v)
            };
            let optional = |i: Option<usize>, name: &str| -> Result<Option<f64>, TraceError> {
                match i {
                    Some(i) if i < record.len() => num(i, name).map(Some),
                    _ => Ok(None),
                }
            };
            let secs = num(0, "seconds")?;
            let queue_depth = num(columns.0, "queueDepth")?;
            let active_users = optional(columns.1, "activeUsers")?;
            let pre_queue_depth = optional(columns.2, "preQueueDepth")?;
            if let Some(prev) = points.last()
                && secs <= prev.secs
            {
                return Err(row_err(format!(
                    "seconds {secs} does not increase (previous row: {})",
                    prev.secs
                )));
            }
            points.push(TracePoint {
                secs,
                queue_depth,
                active_users,
                pre_queue_depth,
            });
        }
        if points.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(Self { points })
    }

    /// Seconds from the first to the last sample.
    pub fn duration_secs(&self) -> f64 {
        match (self.points.first(), self.points.last()) {
            (Some(a), Some(b)) => b.secs - a.secs,
            _ => 0.0,
        }
    }

    /// The trace at `secs`, linearly interpolated between samples (held flat outside them).
    pub fn at(&self, secs: f64) -> TracePoint {
        let idx = self.points.partition_point(|p| p.secs <= secs);
        let (Some(a), Some(b)) = (self.points.get(idx.wrapping_sub(1)), self.points.get(idx)) else {
            let p = if idx == 0 {
                self.points.first()
            } else {
                self.points.last()
            };
            return p.map_or(
                TracePoint {
                    secs,
                    queue_depth: 0.0,
                    active_users: None,
                    pre_queue_depth: None,
                },
                |p| TracePoint { secs, ..*p },
            );
        };
        let f = (secs - a.secs) / (b.secs - a.secs);
        let lerp = |x: f64, y: f64| x + (y - x) * f;
        TracePoint {
            secs,
            queue_depth: lerp(a.queue_depth, b.queue_depth),
            active_users: match (a.active_users, b.active_users) {
                (Some(x), Some(y)) => Some(lerp(x, y)),
                (x, y) => x.or(y),
            },
            pre_queue_depth: match (a.pre_queue_depth, b.pre_queue_depth) {
                (Some(x), Some(y)) => Some(lerp(x, y)),
                (x, y) => x.or(y),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_comments_and_optional_column() {
        let t = Trace::parse("# a flash surge\nseconds,queueDepth,activeUsers\n0,0,0\n10,100,5\n").unwrap();
        assert_eq!(t.points.len(), 2);
        assert_eq!(
            t.points[1],
            TracePoint {
                secs: 10.0,
                queue_depth: 100.0,
                active_users: Some(5.0),
                pre_queue_depth: None,
            }
        );
        // Named columns in any order, preQueueDepth included.
        let t = Trace::parse("seconds,preQueueDepth,queueDepth\n0,30000,0\n60,0,30000\n").unwrap();
        assert_eq!(
            (
                t.points[0].pre_queue_depth,
                t.points[1].queue_depth,
                t.points[1].active_users
            ),
            (Some(30_000.0), 30_000.0, None)
        );
        assert!(
            Trace::parse("seconds,depth\n0,1\n")
                .unwrap_err()
                .to_string()
                .contains("queueDepth")
        );
        assert!(
            Trace::parse("seconds,queueDepth,users\n0,1,2\n")
                .unwrap_err()
                .to_string()
                .contains("unknown column `users`")
        );
        let t = Trace::parse("0,5\n1,6").unwrap();
        assert_eq!(t.points[1].active_users, None);
        assert_eq!(t.duration_secs(), 1.0);
    }

    #[test]
    fn bad_rows_name_the_line_and_the_problem() {
        let err = Trace::parse("seconds,queueDepth\n0,1\n5,lots\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("lots"), "{err}");
        let err = Trace::parse("0,1\n0,2\n").unwrap_err().to_string();
        assert!(err.contains("does not increase"), "{err}");
        let err = Trace::parse("0,-1\n").unwrap_err().to_string();
        assert!(err.contains("non-negative"), "{err}");
        assert!(matches!(
            Trace::parse("seconds,queueDepth\n"),
            Err(TraceError::Empty)
        ));
    }

    #[test]
    fn interpolates_between_samples_and_holds_outside() {
        let t = Trace::parse("10,0\n20,100\n").unwrap();
        assert_eq!(t.at(15.0).queue_depth, 50.0);
        assert_eq!(t.at(0.0).queue_depth, 0.0);
        assert_eq!(t.at(99.0).queue_depth, 100.0);
        assert_eq!(t.at(20.0).queue_depth, 100.0);
    }
}
