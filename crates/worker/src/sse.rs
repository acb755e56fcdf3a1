//! Reads the `data` payloads of a Server-Sent Events stream (the OpenAI streaming format).
//!
//! Written by hand because it runs once per generated token on the worker's hot path: the
//! lines of each read are scanned where they arrived, and an event's data is handed out as
//! a slice of them; only the part of a read after its last complete line is kept (copied)
//! for the next, and only an event of several `data` lines is joined into a new string.
//! Other SSE fields (`event`, `id`, `retry`) and comments are ignored.

use std::borrow::Cow;
use std::ops::Range;

/// Incremental SSE reader: feed it bytes as they arrive; it hands out each complete event's
/// data, in order.
#[derive(Debug, Default)]
pub struct SseReader {
    /// The end of the last read after its last complete line.
    rest: Vec<u8>,
    /// The data lines of the event being read that an earlier read carried.
    data: Option<String>,
}

/// The data lines of the event being read, within one read's bytes.
enum Data {
    None,
    /// One line so far: where it is.
    Line(Range<usize>),
    /// Several lines, joined.
    Joined(String),
}

impl SseReader {
    /// Adds received bytes; hands the data of each event they complete to `on_data`, and
    /// stops at its first error.
    pub fn feed<E>(
        &mut self,
        bytes: &[u8],
        mut on_data: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<(), E> {
        let kept;
        let input: &[u8] = if self.rest.is_empty() {
            bytes
        } else {
            self.rest.extend_from_slice(bytes);
            kept = std::mem::take(&mut self.rest);
            &kept
        };
        let mut data = match self.data.take() {
            Some(earlier) => Data::Joined(earlier),
            None => Data::None,
        };
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &input[start..]) {
            let end = start + nl;
            let line = &input[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                match std::mem::replace(&mut data, Data::None) {
                    Data::None => {}
                    Data::Line(at) => on_data(&text(&input[at]))?,
                    Data::Joined(joined) => on_data(&joined)?,
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                let from = start + (line.len() - value.len());
                data = match data {
                    Data::None => Data::Line(from..from + value.len()),
                    Data::Line(at) => {
                        let mut joined = text(&input[at]).into_owned();
                        joined.push('\n');
                        joined.push_str(&text(value));
                        Data::Joined(joined)
                    }
                    Data::Joined(mut joined) => {
                        joined.push('\n');
                        joined.push_str(&text(value));
                        Data::Joined(joined)
                    }
                };
            }
            start = end + 1;
        }
        self.data = match data {
            Data::None => None,
            Data::Line(at) => Some(text(&input[at]).into_owned()),
            Data::Joined(joined) => Some(joined),
        };
        self.rest.extend_from_slice(&input[start..]);
        Ok(())
    }

    /// At the end of the stream: the data of an event the server did not close with a
    /// blank line.
    pub fn finish(&mut self) -> Option<String> {
        if !self.rest.is_empty() {
            // Ends the kept line; a line alone completes no event, so none is handed out.
            let _ = self.feed(b"\n", |_| Ok::<(), ()>(()));
        }
        self.data.take()
    }
}

/// A line's text; invalid UTF-8 is replaced, not refused.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(reader: &mut SseReader, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        reader
            .feed(bytes, |d| {
                out.push(d.to_string());
                Ok::<_, ()>(())
            })
            .unwrap();
        out
    }

    #[test]
    fn events_split_across_reads_are_joined() {
        let mut r = SseReader::default();
        assert!(all(&mut r, b"data: {\"a\":").is_empty());
        assert_eq!(
            all(&mut r, b"1}\n\ndata: [DONE]\r\n\r\n"),
            vec!["{\"a\":1}", "[DONE]"]
        );
        // A line break between reads, and an event whose lines come in two reads.
        assert!(all(&mut r, b"data: x\r").is_empty());
        assert!(all(&mut r, b"\ndata: y\n").is_empty());
        assert_eq!(all(&mut r, b"\n"), vec!["x\ny"]);
    }

    #[test]
    fn multi_line_data_comments_and_other_fields() {
        let mut r = SseReader::default();
        assert_eq!(
            all(
                &mut r,
                b": keep-alive\nevent: x\nid: 3\ndata: one\ndata:two\ndata: three\n\n"
            ),
            vec!["one\ntwo\nthree"]
        );
    }

    #[test]
    fn unterminated_last_event_is_kept_at_the_end() {
        let mut r = SseReader::default();
        assert!(all(&mut r, b"data: [DONE]").is_empty());
        assert_eq!(r.finish().as_deref(), Some("[DONE]"));
    }

    #[test]
    fn an_error_stops_the_reading() {
        let mut r = SseReader::default();
        let mut seen = 0;
        let result = r.feed(b"data: 1\n\ndata: 2\n\n", |_| {
            seen += 1;
            Err("stop")
        });
        assert_eq!((result, seen), (Err("stop"), 1));
    }
}
