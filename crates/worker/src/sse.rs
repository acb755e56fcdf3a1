//! Reads the `data` payloads of a Server-Sent Events stream (the OpenAI streaming format).
//!
//! Written by hand because it runs once per generated token on the worker's hot path: a
//! line scan over one reused buffer, with no per-line allocation beyond the payload.
//! Other SSE fields (`event`, `id`, `retry`) and comments are ignored.

use std::collections::VecDeque;

/// Incremental SSE reader: feed it bytes as they arrive, take complete events' data out.
#[derive(Debug, Default)]
pub struct SseReader {
    buf: Vec<u8>,
    data: Option<String>,
    ready: VecDeque<String>,
}

impl SseReader {
    /// Adds received bytes; complete events become available from [`SseReader::next_data`].
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    self.ready.push_back(data);
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                let value = String::from_utf8_lossy(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.data = Some(value.into_owned()),
                }
            }
            start = end + 1;
        }
        self.buf.drain(..start);
    }

    /// The next complete event's data, if any.
    pub fn next_data(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    /// At the end of the stream: the data of an event the server did not close with a
    /// blank line.
    pub fn finish(&mut self) -> Option<String> {
        if !self.buf.is_empty() {
            self.feed(b"\n");
        }
        self.data.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(reader: &mut SseReader) -> Vec<String> {
        std::iter::from_fn(|| reader.next_data()).collect()
    }

    #[test]
    fn events_split_across_reads_are_joined() {
        let mut r = SseReader::default();
        r.feed(b"data: {\"a\":");
        assert!(r.next_data().is_none());
        r.feed(b"1}\n\ndata: [DONE]\r\n\r\n");
        assert_eq!(all(&mut r), vec!["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn multi_line_data_comments_and_other_fields() {
        let mut r = SseReader::default();
        r.feed(b": keep-alive\nevent: x\nid: 3\ndata: one\ndata:two\n\n");
        assert_eq!(all(&mut r), vec!["one\ntwo"]);
    }

    #[test]
    fn unterminated_last_event_is_kept_at_the_end() {
        let mut r = SseReader::default();
        r.feed(b"data: [DONE]");
        assert!(r.next_data().is_none());
        assert_eq!(r.finish().as_deref(), Some("[DONE]"));
    }
}
