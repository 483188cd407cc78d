//! Reading a large local input without holding it: NDJSON handed over in chunks of whole lines,
//! and what an input looks like from its first line. Pure apart from the reader.
//!
//! [`crate::split`] reads an input held in memory; this is its streaming side for NDJSON (one
//! record, log file or array per line), as [`crate::stream`] is for one large log file. The
//! chunks are split by [`crate::split::line`], so a line gives the same records, numbered the
//! same, either way.

use std::io::{BufRead, BufReader, Read};

use crate::limits::{Limits, SplitError};

/// What [`stream_lines`] hands over.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Whole lines, each ending in `\n` but perhaps the input's last; the first is line
    /// `first` (1-based).
    Lines {
        /// The first line's number.
        first: usize,
        /// The lines, as read.
        bytes: Vec<u8>,
    },
    /// A line longer than `max_record`, kept (as read, whitespace at its end trimmed) for an
    /// input nothing can read again ([`stream_lines`]' `keep_long`).
    Long {
        /// Its number.
        line: usize,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// A line longer than `max_record`, read through without being kept.
    TooLong {
        /// Its number.
        line: usize,
        /// Its size in bytes, as read, whitespace at its end aside.
        size: u64,
    },
}

/// What an input's first line says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The first line that is not blank is a JSON value on its own, and more follows it: NDJSON.
    Lines,
    /// One document that is an object (a log file, or a record).
    Object,
    /// Anything else (an array over many lines, text that is not JSON, nothing at all).
    Other,
}

/// Undoes gzip when `reader` starts with its magic bytes, failing with `TooLarge` past
/// `max_decompressed` bytes of output; passes plain input through as it is.
pub fn plain<'a, R: Read + Send + 'a>(
    reader: R,
    limits: Limits,
) -> std::io::Result<Box<dyn Read + Send + 'a>> {
    let mut reader = Labelled { inner: reader };
    // The first bytes, however the reader hands them out (a pipe may give one at a time):
    // gzip's magic, or a byte-order mark, which the first read must show whole.
    let mut first = [0u8; 8];
    let mut got = 0;
    while got < first.len() {
        match reader.read(&mut first[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(e),
        }
    }
    let gzip = crate::limits::is_gzip(&first[..got]);
    let whole = std::io::Cursor::new(first[..got].to_vec()).chain(reader);
    let buffered = BufReader::with_capacity(256 * 1024, whole);
    if gzip {
        Ok(Box::new(Capped {
            inner: flate2::bufread::MultiGzDecoder::new(buffered),
            left: limits.max_decompressed,
        }))
    } else {
        Ok(Box::new(buffered))
    }
}

/// What the errors of reading the input itself (not undoing its gzip) start with.
const READ_FAILED: &str = "reading the input: ";

/// A reader whose errors say they are the input's own, so that they are not taken for a
/// broken gzip.
struct Labelled<R> {
    inner: R,
}

impl<R: Read> Read for Labelled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(std::io::Error::other(format!("{READ_FAILED}{e}"))),
                Ok(n) => return Ok(n),
            }
        }
    }
}

/// Most whole lines a chunk gathers before it is handed over (checked at each read, so a
/// chunk may hold one read's worth more), whatever its size: each becomes a record to locate,
/// and an input of short lines would otherwise make millions of them per chunk.
pub const MOST_LINES: usize = 16 * 1024;

/// The message of the error [`Capped`] fails with.
const PAST_LIMIT: &str = "decompresses to more than publish.max_decompressed_bytes";

/// A reader that fails once more than `left` bytes came through.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // All that is allowed came through: anything more is past the limit.
            return match self.inner.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(PAST_LIMIT)),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads what an input looks like from its first line that is not blank (a byte-order mark
/// aside), reading at most `max_record` bytes of it.
pub fn shape<R: Read>(reader: R, limits: Limits) -> std::io::Result<Shape> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line = Vec::new();
    let mut start = true;
    // Blank lines before the first: past `max_record` of them the input is not judged (it is
    // read whole, as before), so judging never holds more than that.
    let mut blank = 0usize;
    loop {
        let data = reader.fill_buf()?;
        if data.is_empty() {
            return Ok(shape_of(line.trim_ascii(), false, limits));
        }
        let bom = if start && data.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        start = false;
        let data = &data[bom..];
        let (taken, end) = match memchr::memchr(b'\n', data) {
            Some(i) => (i + 1, Some(i)),
            None => (data.len(), None),
        };
        line.extend_from_slice(&data[..end.unwrap_or(data.len())]);
        reader.consume(bom + taken);
        if end.is_some() {
            let trimmed = line.trim_ascii();
            if !trimmed.is_empty() {
                // A line ending in a newline: more may follow it.
                let more = more_after(&mut reader, 64 * 1024)?;
                return Ok(shape_of(trimmed, more, limits));
            }
            blank += line.len() + 1;
            if blank > limits.max_record {
                return Ok(Shape::Other);
            }
            line.clear();
        } else if line.len() > limits.max_record {
            return Ok(shape_of(line.trim_ascii(), false, limits));
        }
    }
}

/// Whether anything but whitespace is left in `reader` (read through blank runs). After
/// `most` bytes of nothing but whitespace it answers yes without reading further: what it
/// reads may be held (stdin's head), and NDJSON with blank lines reads as the whole would.
fn more_after<R: Read>(reader: &mut BufReader<R>, most: usize) -> std::io::Result<bool> {
    let mut read = 0;
    loop {
        let data = reader.fill_buf()?;
        if data.is_empty() {
            return Ok(false);
        }
        if !data.trim_ascii().is_empty() || read > most {
            return Ok(true);
        }
        let n = data.len();
        read += n;
        reader.consume(n);
    }
}

fn shape_of(first: &[u8], more: bool, limits: Limits) -> Shape {
    if more && crate::split::parses_alone(first, limits) {
        Shape::Lines
    } else if first.first() == Some(&b'{') {
        Shape::Object
    } else {
        Shape::Other
    }
}

/// Hands `reader`'s lines to `each` in chunks of whole lines of about `chunk` bytes (or
/// [`MOST_LINES`] lines), in order,
/// with at most `chunk` + `max_record` bytes held; `each` returns false to stop. Buffers are
/// taken from `spare` while it has them. A line larger
/// than `max_record` (as read, spaces around it counted) is read through and handed over as
/// [`Piece::TooLong`] — or, while within `keep_long` bytes, kept and handed over as
/// [`Piece::Long`], for an input nothing can read again. A byte-order mark at the start is dropped. Fails as `TooLarge` when a
/// gzip input ([`plain`]) decompresses past its limit, as `Gzip` when it is cut or corrupt:
/// the lines before are handed over first.
pub fn stream_lines<R: Read>(
    reader: R,
    limits: Limits,
    chunk: usize,
    mut each: impl FnMut(Piece) -> bool,
    mut spare: impl FnMut() -> Option<Vec<u8>>,
    keep_long: u64,
) -> Result<(), SplitError> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    // A buffer handed back by the consumer, emptied, or a new one: reusing them spares the
    // kernel zeroing fresh pages for every chunk. One that grew to hold a line longer than a
    // chunk is let go, so a few long lines do not keep every buffer that large.
    let room = chunk + 256 * 1024;
    let mut fresh = || {
        spare()
            .filter(|b| b.capacity() <= 2 * room)
            .map(|mut b| {
                b.clear();
                b
            })
            .unwrap_or_else(|| Vec::with_capacity(room))
    };
    let mut buf = fresh();
    // The line `buf` starts with, and where in `buf` its last (unfinished) line starts.
    let (mut first, mut tail) = (1usize, 0usize);
    // A line too long to parse, while it is read through.
    let mut long: Option<Long> = None;
    let mut start = true;
    // Whole lines in `buf`.
    let mut pending = 0usize;
    let lines_in = |bytes: &[u8]| memchr::memchr_iter(b'\n', bytes).count();
    // Hands over the whole lines in `buf`, keeping the unfinished one, or stops when nothing
    // takes them.
    macro_rules! hand_over_whole_lines {
        () => {
            let lines = std::mem::take(&mut pending);
            if !each(Piece::Lines {
                first,
                bytes: whole_lines(&mut buf, tail, fresh()),
            }) {
                return Ok(());
            }
            first += lines;
            tail = 0;
        };
    }
    loop {
        let data = match reader.fill_buf() {
            Ok(data) => data,
            Err(e) => {
                // The input broke off: the whole lines before the break are handed over
                // first; only the unfinished one is lost with it.
                if long.is_none() && tail > 0 {
                    buf.truncate(tail);
                    let lines = pending;
                    if each(Piece::Lines { first, bytes: buf }) {
                        first += lines;
                    }
                }
                return Err(read_error(e, first));
            }
        };
        if data.is_empty() {
            break;
        }
        let n = data.len();
        if let Some(line) = long.as_mut() {
            let end = memchr::memchr(b'\n', data);
            let part = &data[..end.unwrap_or(n)];
            line.add(part, keep_long);
            reader.consume(end.map_or(n, |i| i + 1));
            if end.is_some() {
                let piece = long.take().map(|l| l.ended(first));
                first += 1;
                if piece.is_some_and(|piece| !each(piece)) {
                    return Ok(());
                }
            }
            continue;
        }
        let data = if start {
            start = false;
            data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data)
        } else {
            data
        };
        if tail > 0 && buf.len() + data.len() > buf.capacity() {
            // What was read does not fit: hand over the whole lines first rather than grow
            // the buffer (a copy, and fresh pages the kernel zeroes, for every chunk).
            hand_over_whole_lines!();
        }
        let from = buf.len();
        buf.extend_from_slice(data);
        reader.consume(n);
        if let Some(i) = memchr::memrchr(b'\n', &buf[from..]) {
            tail = from + i + 1;
            pending += lines_in(&buf[from..tail]);
        }
        // A line is judged too long here only to bound what is held: `split::line` judges
        // the lines that end within `SLACK` past the limit, trimmed, as when read whole.
        if buf.len() - tail > limits.max_record + SLACK {
            // Spaces before it are dropped (a line of nothing but spaces never grows the
            // buffer).
            let spaces = buf[tail..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            buf.drain(tail..tail + spaces);
        }
        if buf.len() - tail > limits.max_record + SLACK {
            // The unfinished line is too long to keep: hand over the lines before it.
            let mut line = Long {
                size: 0,
                trailing: 0,
                kept: Some(Vec::new()),
            };
            line.add(&buf[tail..], keep_long);
            long = Some(line);
            buf.truncate(tail);
            if !buf.is_empty() {
                let lines = std::mem::take(&mut pending);
                if !each(Piece::Lines {
                    first,
                    bytes: std::mem::replace(&mut buf, fresh()),
                }) {
                    return Ok(());
                }
                first += lines;
            }
            tail = 0;
        } else if tail >= chunk || pending >= MOST_LINES {
            hand_over_whole_lines!();
        }
    }
    if let Some(line) = long {
        each(line.ended(first));
    } else if !buf.is_empty() {
        each(Piece::Lines { first, bytes: buf });
    }
    Ok(())
}

/// The whole lines of `buf` (those before `tail`), taken out of it; `buf` is left holding
/// the unfinished line after them, in `rest`.
fn whole_lines(buf: &mut Vec<u8>, tail: usize, mut rest: Vec<u8>) -> Vec<u8> {
    rest.extend_from_slice(&buf[tail..]);
    buf.truncate(tail);
    std::mem::replace(buf, rest)
}

/// How far past `max_record` a line may run, unfinished, before it is read through rather
/// than held: a record within the limit followed by spaces (or `\r`) is still judged trimmed.
const SLACK: usize = 64 * 1024;

/// A line too long to parse, as it is read through: its size so far, how much of its end is
/// whitespace, and its bytes while they are within `keep_long`.
struct Long {
    size: u64,
    trailing: u64,
    kept: Option<Vec<u8>>,
}

impl Long {
    fn add(&mut self, part: &[u8], keep_long: u64) {
        self.size += part.len() as u64;
        match part.iter().rposition(|b| !b.is_ascii_whitespace()) {
            Some(last) => self.trailing = (part.len() - last - 1) as u64,
            None => self.trailing += part.len() as u64,
        }
        if self
            .kept
            .as_ref()
            .is_some_and(|k| (k.len() + part.len()) as u64 > keep_long)
        {
            self.kept = None;
        }
        if let Some(kept) = self.kept.as_mut() {
            kept.extend_from_slice(part);
        }
    }

    /// What it is once ended, as line `line`: its size and bytes without the whitespace at its
    /// end, as `split::line` trims it.
    fn ended(self, line: usize) -> Piece {
        let size = self.size - self.trailing;
        match self.kept {
            Some(mut bytes) => {
                bytes.truncate(size as usize);
                Piece::Long { line, bytes }
            }
            None => Piece::TooLong { line, size },
        }
    }
}

/// One record (or failed part) of a chunk of lines: what `locate` read of it, and where its
/// bytes are in the chunk.
#[derive(Debug)]
pub struct Located<T> {
    /// The line it is on.
    pub index: usize,
    /// What was read of its JSON text, or why it has none.
    pub text: Result<T, SplitError>,
    /// Where its bytes as read are.
    pub bytes: std::ops::Range<usize>,
}

/// Splits a chunk of lines ([`Piece::Lines`], its first line `first`) into records as
/// [`crate::split::line`] does, handing each to `each` as it is found — its line, its text (or
/// why it has none) and where its bytes are in `chunk` — so that the splitting, and what is
/// done with each record, can be done on another thread than the one that publishes them, in
/// batches of the caller's size however many records a line holds.
pub fn locate(first: usize, chunk: &[u8], limits: Limits, mut each: impl FnMut(Located<&str>)) {
    let base = chunk.as_ptr() as usize;
    let within = |part: &[u8]| -> std::ops::Range<usize> {
        // `line` borrows every part from its line, so it is always found.
        let start = (part.as_ptr() as usize).saturating_sub(base);
        if start + part.len() <= chunk.len() {
            start..start + part.len()
        } else {
            0..0
        }
    };
    for (i, line) in chunk.split(|b| *b == b'\n').enumerate() {
        crate::split::line_each(first + i, line.trim_ascii(), limits, &mut |item| {
            let bytes = within(&item.bytes);
            let index = item.index;
            match item.text {
                Ok(text) => each(Located {
                    index,
                    text: Ok(&text),
                    bytes,
                }),
                Err(why) => each(Located {
                    index,
                    text: Err(why),
                    bytes,
                }),
            }
        });
    }
}

fn read_error(e: std::io::Error, line: usize) -> SplitError {
    let message = e.to_string();
    if message == PAST_LIMIT {
        SplitError::TooLarge(format!("{PAST_LIMIT}, at line {line}"))
    } else if let Some(why) = message.strip_prefix(READ_FAILED) {
        SplitError::Read(format!("at line {line}: {why}"))
    } else {
        SplitError::Gzip(format!("at line {line}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::{split, RawItem};

    fn limits(max_record: usize) -> Limits {
        Limits {
            max_decompressed: 1 << 30,
            max_record,
        }
    }

    /// Hands out its input `.1` bytes at a time, as a pipe or a decoder may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// What `split` makes of each item, comparable across the two ways of reading.
    fn view(items: Vec<RawItem<'_>>) -> Vec<(usize, Result<String, &'static str>)> {
        items
            .into_iter()
            .map(|i| {
                (
                    i.index,
                    i.text.map(|t| t.into_owned()).map_err(|e| e.kind()),
                )
            })
            .collect()
    }

    /// Streams `input`, read `step` bytes at a time, in chunks of `chunk` bytes and splits
    /// each piece by line, as `ingest files` does.
    fn streamed_by(
        input: &[u8],
        limits: Limits,
        chunk: usize,
        step: usize,
    ) -> Vec<(usize, Result<String, &'static str>)> {
        let mut out = Vec::new();
        let result = stream_lines(
            Trickle(input, step),
            limits,
            chunk,
            |piece| {
                match piece {
                    Piece::Lines { first, bytes } => {
                        let mut items = Vec::new();
                        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                            crate::split::line(first + i, line.trim_ascii(), limits, &mut items);
                        }
                        out.extend(view(items));
                    }
                    Piece::TooLong { line, .. } | Piece::Long { line, .. } => {
                        out.push((line, Err("too_large")))
                    }
                }
                true
            },
            || None,
            0,
        );
        assert_eq!(result, Ok(()));
        out
    }

    fn ndjson_inputs() -> Vec<Vec<u8>> {
        let record =
            |n: usize| format!("{{\"eventID\":\"{n}\",\"pad\":\"{}\"}}", "x".repeat(n % 97));
        let mut inputs = Vec::new();
        let mut plain = String::new();
        for n in 0..300 {
            plain.push_str(&record(n));
            plain.push('\n');
        }
        inputs.push(plain.clone().into_bytes());
        // No newline at the end, CRLF, blank lines, spaces around lines, a BOM.
        inputs.push(plain.trim_end().as_bytes().to_vec());
        inputs.push(plain.replace('\n', "\r\n").into_bytes());
        inputs.push(
            format!(
                "\u{feff}{}",
                plain.replace("\n{\"eventID\":\"7", "\n\n  \n {\"eventID\":\"7")
            )
            .into_bytes(),
        );
        // Bad lines among good ones: not JSON, not UTF-8, too large, log files and arrays.
        let mut mixed: Vec<u8> = Vec::new();
        for n in 0..200 {
            match n % 9 {
                0 => mixed.extend_from_slice(b"not json"),
                1 => mixed.extend_from_slice(b"{\"a\":\"\xff\"}"),
                2 => mixed
                    .extend_from_slice(format!("{{\"big\":\"{}\"}}", "y".repeat(3000)).as_bytes()),
                3 => mixed.extend_from_slice(
                    format!("{{\"Records\":[{},{}]}}", record(n), record(n + 1)).as_bytes(),
                ),
                4 => {
                    mixed.extend_from_slice(format!("[{},{}]", record(n), record(n + 2)).as_bytes())
                }
                5 => mixed.extend_from_slice(b"   "),
                _ => mixed.extend_from_slice(record(n).as_bytes()),
            }
            mixed.push(b'\n');
        }
        inputs.push(mixed);
        inputs
    }

    #[test]
    fn streamed_lines_split_as_the_whole_input_does() {
        let limits = limits(2048);
        for input in ndjson_inputs() {
            let whole = view(split(&input, limits));
            assert!(whole.len() > 100);
            for chunk in [1, 100, 1000, 4096, 1 << 20] {
                for step in [7, 100, 4096, usize::MAX] {
                    let got = streamed_by(&input, limits, chunk, step);
                    assert_eq!(got, whole, "chunk {chunk}, read {step} at a time");
                }
            }
        }
    }

    #[test]
    fn located_records_are_the_split_records() {
        let limits = limits(2048);
        for input in ndjson_inputs() {
            let seen = |index: usize, text: Result<String, &SplitError>, bytes: &[u8]| {
                (index, text.map_err(|e| e.to_string()), bytes.to_vec())
            };
            // The byte-order mark is dropped by `stream_lines` before `locate` sees it.
            let chunk = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&input);
            let whole: Vec<_> = split(chunk, limits)
                .iter()
                .map(|i| seen(i.index, i.text.as_deref().map(str::to_string), &i.bytes))
                .collect();
            let mut located = Vec::new();
            locate(1, chunk, limits, |l| {
                let bytes = chunk.get(l.bytes).unwrap_or_default();
                located.push(seen(l.index, l.text.as_ref().map(|t| t.to_string()), bytes));
            });
            assert_eq!(located, whole);
            assert!(whole.len() > 100);
        }
    }

    /// The capacities of the buffers `stream_lines` hands over for `input` in chunks of 64
    /// bytes, taking `spares` (the last first) before new ones.
    fn capacities(input: impl Read, mut spares: Vec<Vec<u8>>) -> Vec<usize> {
        let mut caps = Vec::new();
        let result = stream_lines(
            input,
            limits(1024),
            64,
            |piece| {
                if let Piece::Lines { bytes, .. } = piece {
                    caps.push(bytes.capacity());
                }
                true
            },
            || spares.pop(),
            0,
        );
        assert_eq!(result, Ok(()));
        caps
    }

    #[test]
    fn spare_buffers_are_used_before_new_ones() {
        let input = "{\"a\":1}\n".repeat(1000);
        let spares = vec![Vec::with_capacity(7), Vec::with_capacity(9)];
        let caps = capacities(Trickle(input.as_bytes(), 100), spares);
        assert!(caps.len() > 3, "{caps:?}");
        // The two spares hold the first two chunks; then buffers are new.
        assert!(caps[0] < 1024 && caps[1] < 1024, "{caps:?}");
        assert!(caps[2] >= 64 + 256 * 1024, "{caps:?}");
    }

    /// A buffer handed back that grew to hold a long line is let go, not kept for every chunk.
    #[test]
    fn an_overgrown_buffer_is_let_go() {
        let input = "{\"a\":1}\n".repeat(1000);
        let caps = capacities(input.as_bytes(), vec![Vec::with_capacity(10 << 20)]);
        assert!(
            !caps.is_empty() && caps.iter().all(|c| *c < 1 << 20),
            "{caps:?}"
        );
    }

    /// Buffers handed back are used again as they are: none grows (a copy of the chunk, and
    /// fresh pages to zero, each time) when a read runs past the chunk's end.
    #[test]
    fn recycled_buffers_never_grow() {
        let line = format!("{{\"a\":\"{}\"}}\n", "x".repeat(1190));
        let input = line.repeat(8_000);
        let chunk = 1 << 20;
        let pool = std::cell::RefCell::new(Vec::<Vec<u8>>::new());
        let (mut caps, mut lines) = (Vec::new(), 0);
        let result = stream_lines(
            input.as_bytes(),
            limits(256 * 1024),
            chunk,
            |piece| {
                if let Piece::Lines { bytes, .. } = piece {
                    caps.push(bytes.capacity());
                    lines += bytes
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .count();
                    pool.borrow_mut().push(bytes);
                }
                true
            },
            || pool.borrow_mut().pop(),
            0,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(lines, 8_000);
        assert!(caps.len() > 5, "{caps:?}");
        assert!(caps.iter().all(|c| *c == chunk + 256 * 1024), "{caps:?}");
    }

    #[test]
    fn a_long_line_is_read_through_and_counted_not_kept() {
        let limits = limits(1024);
        let long = "z".repeat(300_000);
        let input = format!("{{\"a\":1}}\n{{\"b\":\"{long}\"}}\n{{\"c\":3}}\n{long}");
        let mut pieces = Vec::new();
        let mut most = 0;
        let result = stream_lines(
            input.as_bytes(),
            limits,
            10,
            |piece| {
                if let Piece::Lines { bytes, .. } = &piece {
                    most = most.max(bytes.capacity());
                }
                pieces.push(piece);
                true
            },
            || None,
            0,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            pieces,
            vec![
                Piece::Lines {
                    first: 1,
                    bytes: b"{\"a\":1}\n".to_vec()
                },
                Piece::TooLong {
                    line: 2,
                    size: long.len() as u64 + 8
                },
                Piece::Lines {
                    first: 3,
                    bytes: b"{\"c\":3}\n".to_vec()
                },
                Piece::TooLong {
                    line: 4,
                    size: long.len() as u64
                },
            ]
        );
        // Memory stays within a chunk, a record and one read's buffer.
        assert!(most <= 10 + 2 * 256 * 1024, "held {most}");
    }

    #[test]
    fn a_long_line_is_kept_up_to_keep_long() {
        let limits = limits(1024);
        // Longer than the limit and its slack; the first ends in spaces, as `split::line`
        // trims them.
        let (kept, dropped) = ("k".repeat(70_000), "d".repeat(600_000));
        let input = format!("{kept}  \r\n{{\"a\":1}}\n{dropped}\n{kept}");
        // Read in parts smaller than the lines, so each is seen unfinished and too long.
        for step in [100, 1000, 4096] {
            let mut pieces = Vec::new();
            let result = stream_lines(
                Trickle(input.as_bytes(), step),
                limits,
                10,
                |piece| {
                    pieces.push(match piece {
                        Piece::Long { line, bytes } => {
                            ("long", line, bytes.len(), bytes == kept.as_bytes())
                        }
                        Piece::TooLong { line, size } => ("too long", line, size as usize, false),
                        Piece::Lines { first, bytes } => ("lines", first, bytes.len(), false),
                    });
                    true
                },
                || None,
                100_000,
            );
            assert_eq!(result, Ok(()));
            assert_eq!(
                pieces,
                vec![
                    ("long", 1, 70_000, true),
                    ("lines", 2, 8, false),
                    ("too long", 3, 600_000, false),
                    ("long", 4, 70_000, true),
                ],
                "read {step} at a time"
            );
        }
    }

    #[test]
    fn spaces_do_not_make_a_line_too_long() {
        let limits = limits(1024);
        let spaces = " ".repeat(600_000);
        let short = " ".repeat(2000);
        let input = format!(
            "{{\"a\":1}}\n{spaces}\n{spaces}{{\"b\":2}}\n{{\"c\":3}}\n{{\"d\":4}}{short}\r\n"
        );
        let whole = view(split(input.as_bytes(), limits));
        assert_eq!(whole.len(), 4, "{whole:?}");
        for step in [7, 100, 4096, usize::MAX] {
            assert_eq!(
                streamed_by(input.as_bytes(), limits, 10, step),
                whole,
                "{step}"
            );
        }
    }

    #[test]
    fn a_chunk_of_short_lines_is_cut_at_most_lines() {
        let input = "x\n".repeat(MOST_LINES * 10);
        let mut most = 0;
        let mut total = 0;
        let result = stream_lines(
            Trickle(input.as_bytes(), 4096),
            limits(1024),
            1 << 30,
            |piece| {
                if let Piece::Lines { bytes, .. } = piece {
                    let lines = bytes.iter().filter(|b| **b == b'\n').count();
                    most = most.max(lines);
                    total += lines;
                }
                true
            },
            || None,
            0,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(total, MOST_LINES * 10);
        // One read's worth (4,096 bytes, 2,048 lines) past the cap at most.
        assert!(most <= MOST_LINES + 2048, "{most}");
    }

    #[test]
    fn a_failing_read_is_the_inputs_not_a_gzip_error() {
        /// Gives a line, then fails.
        struct Failing(&'static [u8]);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("the disk went away"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let all = limits(1024);
        let mut handed = 0;
        let reader = plain(Failing(b"{\"a\":1}\n"), all).map(|r| {
            stream_lines(
                r,
                all,
                1 << 20,
                |_| {
                    handed += 1;
                    true
                },
                || None,
                0,
            )
        });
        let result = reader.map_err(|e| e.to_string());
        assert!(
            matches!(&result, Ok(Err(SplitError::Read(why))) if why.contains("the disk went away")),
            "{result:?}"
        );
        assert_eq!(handed, 1);
    }

    #[test]
    fn stopping_early_hands_over_nothing_more() {
        let input = "{\"a\":1}\n".repeat(1000);
        let mut calls = 0;
        let result = stream_lines(
            input.as_bytes(),
            limits(1024),
            64,
            |_| {
                calls += 1;
                false
            },
            || None,
            0,
        );
        assert_eq!((result, calls), (Ok(()), 1));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(bytes);
        enc.finish().unwrap_or_default()
    }

    #[test]
    fn gzip_is_undone_within_the_limit_and_a_cut_is_an_error_after_the_lines_before(
    ) -> std::io::Result<()> {
        let input = "{\"a\":1}\n".repeat(10_000);
        let packed = gzip(input.as_bytes());
        let count = |reader: Box<dyn Read + Send>, limits: Limits| {
            let mut lines = 0;
            let result = stream_lines(
                reader,
                limits,
                1 << 20,
                |piece| {
                    if let Piece::Lines { bytes, .. } = piece {
                        lines += bytes.iter().filter(|b| **b == b'\n').count();
                    }
                    true
                },
                || None,
                0,
            );
            (lines, result.map_err(|e| e.kind()))
        };
        let all = limits(1024);
        assert_eq!(
            count(plain(std::io::Cursor::new(packed.clone()), all)?, all),
            (10_000, Ok(()))
        );
        let capped = Limits {
            max_decompressed: 40_000,
            max_record: 1024,
        };
        let (lines, result) = count(plain(std::io::Cursor::new(packed.clone()), capped)?, capped);
        assert_eq!(result, Err("too_large"));
        assert!(lines > 0 && lines <= 5_000, "{lines}");
        let cut = packed[..packed.len() / 2].to_vec();
        let (lines, result) = count(plain(std::io::Cursor::new(cut.clone()), all)?, all);
        assert_eq!(result, Err("bad_gzip"));
        // Every whole line before the cut is handed over, not only those of whole chunks.
        let mut before = Vec::new();
        let _ = flate2::read::MultiGzDecoder::new(&cut[..]).read_to_end(&mut before);
        let whole_lines = before.iter().filter(|b| **b == b'\n').count();
        assert!(whole_lines > 1000, "{whole_lines}");
        assert_eq!(lines, whole_lines);
        // The magic bytes one at a time, as a pipe may give them.
        let trickled = plain(
            std::io::Cursor::new(packed.clone())
                .take(1)
                .chain(std::io::Cursor::new(packed[1..].to_vec())),
            all,
        )?;
        assert_eq!(count(trickled, all), (10_000, Ok(())));
        // Plain input passes through untouched.
        assert_eq!(
            count(plain(std::io::Cursor::new(input.into_bytes()), all)?, all),
            (10_000, Ok(()))
        );
        Ok(())
    }

    #[test]
    fn the_first_line_tells_the_shape() -> std::io::Result<()> {
        let limits = limits(1024);
        let shape = |text: &str| shape(text.as_bytes(), limits);
        assert_eq!(shape("{\"a\":1}\n{\"b\":2}\n")?, Shape::Lines);
        assert_eq!(shape("\u{feff}\n\n  {\"a\":1}\r\n\n[1]")?, Shape::Lines);
        assert_eq!(shape("[{\"a\":1}]\n[{\"b\":2}]")?, Shape::Lines);
        // One record or log file, alone or with only blank lines after it.
        assert_eq!(shape("{\"Records\":[{\"a\":1}]}\n\n  \n")?, Shape::Object);
        assert_eq!(shape("{\"Records\":[{\"a\":1}]}")?, Shape::Object);
        // A log file over several lines, one on a line too long to judge, arrays over lines.
        assert_eq!(
            shape("{\n \"Records\": [\n {\"a\":1}\n ]\n}\n")?,
            Shape::Object
        );
        assert_eq!(
            shape(&format!("{{\"Records\":[\"{}\"]}}\n{{}}", "q".repeat(2000)))?,
            Shape::Object
        );
        assert_eq!(shape("[\n {\"a\":1}\n]\n")?, Shape::Other);
        assert_eq!(shape("not json\n{\"a\":1}\n")?, Shape::Other);
        assert_eq!(shape("")?, Shape::Other);
        // Past `max_record` of blank lines, the input is not judged.
        assert_eq!(
            shape(&format!("{}{{\"a\":1}}\n{{}}\n", " \n".repeat(600)))?,
            Shape::Other
        );
        // A byte-order mark handed out a byte at a time, through `plain`.
        let marked = "\u{feff}{\"a\":1}\n{\"b\":2}\n";
        let trickled = || plain(Trickle(marked.as_bytes(), 1), limits);
        assert_eq!(super::shape(trickled()?, limits)?, Shape::Lines);
        let mut lines = Vec::new();
        let result = stream_lines(
            trickled()?,
            limits,
            1 << 20,
            |p| {
                lines.push(p);
                true
            },
            || None,
            0,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            lines,
            vec![Piece::Lines {
                first: 1,
                bytes: b"{\"a\":1}\n{\"b\":2}\n".to_vec()
            }]
        );
        Ok(())
    }
}
