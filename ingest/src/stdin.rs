//! stdin, read on a thread of its own, so that a pipe that stops without ending (a stuck
//! upstream, `tail -f`) cannot hold ingest past a shutdown.
//!
//! A read of stdin that waits on a silent pipe cannot be given up: std offers no way to
//! interrupt it. So one thread reads stdin, a chunk at a time, into a bounded channel, and
//! [`Stdin`] reads from the channel. Once shutdown is requested, the thread reads no more, and a
//! read of [`Stdin`] hands out what the thread has read already (at most [`AHEAD`] chunks,
//! however fast the pipe flows) and then ends, as if stdin had (marking [`Stdin::cut`]):
//! everything read is published or dead-lettered (a line read without its end is not a
//! record), and the process exits with the thread still waiting on the pipe when it was.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How much the reading thread reads at a time.
const CHUNK: usize = 64 << 10;

/// Chunks read ahead at most (with [`CHUNK`], 1 MiB).
const AHEAD: usize = 16;

/// How often a read waiting for the pipe looks for a shutdown.
const LOOK: Duration = Duration::from_millis(100);

/// A reader of stdin that ends at a shutdown; clones read the same stream, in turn.
#[derive(Clone)]
pub(crate) struct Stdin {
    inner: Arc<Mutex<Inner>>,
}

/// What the reading thread hands over.
enum Piece {
    Bytes(Vec<u8>),
    /// stdin failed: every later read fails so too.
    Failed(io::Error),
    /// A shutdown: the thread stopped reading.
    Stopped,
}

struct Inner {
    pieces: Receiver<Piece>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
    cut: bool,
    /// The error stdin failed with, given again to every read after it: a broken stdin
    /// never reads as ended.
    failed: Option<(io::ErrorKind, String)>,
    stop: CancellationToken,
}

impl Stdin {
    /// Starts reading the process's stdin.
    pub fn open(stop: CancellationToken) -> io::Result<Stdin> {
        Stdin::of(io::stdin(), stop)
    }

    /// Starts reading `source` on a thread of its own.
    pub fn of(source: impl Read + Send + 'static, stop: CancellationToken) -> io::Result<Stdin> {
        let (tx, pieces) = std::sync::mpsc::sync_channel(AHEAD);
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || pump(source, &tx, &stopping))?;
        Ok(Stdin {
            inner: Arc::new(Mutex::new(Inner {
                pieces,
                chunk: Vec::new(),
                at: 0,
                ended: false,
                cut: false,
                failed: None,
                stop,
            })),
        })
    }

    /// True when a shutdown ended the reading before stdin ended.
    pub fn cut(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).cut
    }
}

/// The reading thread: `source` a chunk at a time into `tx`, until its end, an error, or a
/// shutdown (looked for before each read: a read already waiting on a silent pipe is left
/// waiting, and [`Stdin`] ends without it).
fn pump(mut source: impl Read, tx: &SyncSender<Piece>, stop: &CancellationToken) {
    loop {
        if stop.is_cancelled() {
            let _ = tx.send(Piece::Stopped);
            return;
        }
        let mut chunk = vec![0u8; CHUNK];
        match source.read(&mut chunk) {
            // The end: the channel closes when the thread does.
            Ok(0) => return,
            Ok(n) => {
                chunk.truncate(n);
                if tx.send(Piece::Bytes(chunk)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Piece::Failed(e));
                return;
            }
        }
    }
}

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((kind, why)) = &inner.failed {
                return Err(io::Error::new(*kind, why.clone()));
            }
            if inner.at < inner.chunk.len() {
                let n = buf.len().min(inner.chunk.len() - inner.at);
                let at = inner.at;
                buf[..n].copy_from_slice(&inner.chunk[at..at + n]);
                inner.at += n;
                return Ok(n);
            }
            if inner.ended {
                return Ok(0);
            }
            // What the thread has read is handed out before a shutdown ends the reading.
            let next = match inner.pieces.try_recv() {
                Ok(next) => Ok(next),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) if inner.stop.is_cancelled() => Ok(Piece::Stopped),
                Err(TryRecvError::Empty) => inner.pieces.recv_timeout(LOOK),
            };
            match next {
                Ok(Piece::Bytes(chunk)) => {
                    inner.chunk = chunk;
                    inner.at = 0;
                }
                Ok(Piece::Failed(e)) => {
                    inner.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                Ok(Piece::Stopped) => {
                    inner.ended = true;
                    inner.cut = true;
                    return Ok(0);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    inner.ended = true;
                    return Ok(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe that hands out `first` and then waits for ever.
    struct Stalled {
        first: Option<Vec<u8>>,
    }

    impl Read for Stalled {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.first.take() {
                Some(first) => {
                    buf[..first.len()].copy_from_slice(&first);
                    Ok(first.len())
                }
                None => loop {
                    std::thread::park();
                },
            }
        }
    }

    #[test]
    fn a_stalled_pipe_ends_at_a_shutdown_after_what_was_read() {
        let stop = CancellationToken::new();
        let mut stdin = Stdin::of(
            Stalled {
                first: Some(b"one\ntw".to_vec()),
            },
            stop.clone(),
        )
        .expect("a thread");
        let stopper = stop.clone();
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stopper.cancel();
        });
        let mut all = Vec::new();
        stdin.read_to_end(&mut all).expect("ends");
        later.join().expect("joins");
        assert_eq!(all, b"one\ntw");
        assert!(stdin.cut());
    }

    #[test]
    fn an_ended_pipe_is_read_whole_and_not_cut() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let stop = CancellationToken::new();
        let mut stdin = Stdin::of(io::Cursor::new(data.clone()), stop.clone()).expect("a thread");
        let mut all = Vec::new();
        stdin.read_to_end(&mut all).expect("ends");
        assert_eq!(all, data);
        assert!(!stdin.cut());
        // A shutdown after the end changes nothing.
        stop.cancel();
        assert_eq!(stdin.read(&mut [0; 8]).expect("ended"), 0);
        assert!(!stdin.cut());
    }

    #[test]
    fn clones_read_one_stream_in_turn() {
        let stop = CancellationToken::new();
        let mut first = Stdin::of(io::Cursor::new(b"abcdef".to_vec()), stop).expect("a thread");
        let mut second = first.clone();
        let mut two = [0u8; 2];
        first.read_exact(&mut two).expect("two bytes");
        assert_eq!(&two, b"ab");
        let mut rest = Vec::new();
        second.read_to_end(&mut rest).expect("ends");
        assert_eq!(rest, b"cdef");
    }

    #[test]
    fn a_read_error_is_passed_on() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("broken pipe"))
            }
        }
        let mut stdin = Stdin::of(Broken, CancellationToken::new()).expect("a thread");
        assert!(stdin.read(&mut [0; 8]).is_err());
        // Every later read fails too, clones' as well: a broken stdin never reads as ended.
        assert!(stdin.read(&mut [0; 8]).is_err());
        assert!(stdin.clone().read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_flowing_pipe_ends_at_a_shutdown_too() {
        // stdin that never ends and never waits: after the shutdown, at most what the thread
        // had read ahead is handed out.
        let stop = CancellationToken::new();
        let mut stdin = Stdin::of(io::repeat(b'x'), stop.clone()).expect("a thread");
        let mut first = vec![0u8; 1 << 20];
        stdin.read_exact(&mut first).expect("a megabyte");
        stop.cancel();
        let mut rest = Vec::new();
        stdin.read_to_end(&mut rest).expect("ends");
        assert!(
            rest.len() <= (AHEAD + 2) * CHUNK,
            "{} bytes after",
            rest.len()
        );
        assert!(stdin.cut());
        assert_eq!(stdin.read(&mut []).expect("nothing asked"), 0);
    }
}
