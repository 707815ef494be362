//! A line buffer filled by a reader thread from one of QEMU's output pipes.

use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    lines: Vec<String>,
    partial: Vec<u8>,
    closed: bool,
}

/// Lines collected from a pipe; waiters are woken on each new line and at end of file.
#[derive(Default)]
pub(crate) struct LineBuffer {
    state: Mutex<State>,
    cond: Condvar,
}

impl std::fmt::Debug for LineBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineBuffer")
            .field("lines", &self.len())
            .finish()
    }
}

/// What [`LineBuffer::wait_for`] found.
pub(crate) enum Wait {
    /// The index and text of the first matching line.
    Found(usize, String),
    /// The pipe was closed (QEMU exited) before a match.
    Closed,
    /// The timeout passed first.
    TimedOut,
}

impl LineBuffer {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a thread that copies `reader` into a new buffer until end of file; with
    /// `echo`, every complete line is also written to this process's stderr, prefixed.
    pub(crate) fn spawn<R: Read + Send + 'static>(
        name: &str,
        mut reader: R,
        echo: Option<String>,
    ) -> io::Result<(Arc<LineBuffer>, JoinHandle<()>)> {
        let buf = Arc::new(LineBuffer::default());
        let b = Arc::clone(&buf);
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => b.push(&chunk[..n], echo.as_deref()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                b.close();
            })?;
        Ok((buf, handle))
    }

    fn push(&self, data: &[u8], echo: Option<&str>) {
        let mut st = self.lock();
        let mut added = false;
        for &byte in data {
            if byte == b'\n' {
                let line = finish_line(std::mem::take(&mut st.partial));
                if let Some(prefix) = echo {
                    let _ = writeln!(io::stderr(), "{prefix}{line}");
                }
                st.lines.push(line);
                added = true;
            } else {
                st.partial.push(byte);
            }
        }
        drop(st);
        if added {
            self.cond.notify_all();
        }
    }

    fn close(&self) {
        let mut st = self.lock();
        if !st.partial.is_empty() {
            let line = finish_line(std::mem::take(&mut st.partial));
            st.lines.push(line);
        }
        st.closed = true;
        drop(st);
        self.cond.notify_all();
    }

    /// A copy of all complete lines so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// The number of complete lines so far.
    pub(crate) fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// Lines from index `start` on.
    pub(crate) fn lines_from(&self, start: usize) -> Vec<String> {
        let st = self.lock();
        st.lines
            .get(start..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    /// Everything so far, including an unterminated last line.
    pub(crate) fn text(&self) -> String {
        let st = self.lock();
        let mut s = st.lines.join("\n");
        if !st.partial.is_empty() {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&String::from_utf8_lossy(&st.partial));
        }
        s
    }

    /// The last `n` lines (plus an unterminated one), for error messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let st = self.lock();
        let start = st.lines.len().saturating_sub(n);
        let mut s = st.lines[start..].join("\n");
        if !st.partial.is_empty() {
            s.push('\n');
            s.push_str(&String::from_utf8_lossy(&st.partial));
        }
        s
    }

    /// Waits until a line at index `start` or later satisfies `matches`.
    pub(crate) fn wait_for(
        &self,
        start: usize,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Wait {
        let deadline = Instant::now() + timeout;
        let mut next = start;
        let mut st = self.lock();
        loop {
            while next < st.lines.len() {
                if matches(&st.lines[next]) {
                    return Wait::Found(next, st.lines[next].clone());
                }
                next += 1;
            }
            if st.closed {
                return Wait::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Wait::TimedOut;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Turns raw console bytes into a line: drops CRs, ANSI escape sequences (SeaBIOS clears
/// the screen) and other control characters except tabs.
fn finish_line(bytes: Vec<u8>) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut it = bytes.into_iter().peekable();
    while let Some(b) = it.next() {
        match b {
            0x1b => {
                if it.next_if_eq(&b'[').is_some() {
                    // CSI: parameters and intermediates, then one final byte 0x40..=0x7e.
                    for c in it.by_ref() {
                        if (0x40..=0x7e).contains(&c) {
                            break;
                        }
                    }
                } else {
                    it.next();
                }
            }
            b'\t' => out.push(b),
            0..=0x1f | 0x7f => {}
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::finish_line;

    #[test]
    fn strips_escapes() {
        let raw = b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1)\r".to_vec();
        assert_eq!(finish_line(raw), "SeaBIOS (version 1)");
        assert_eq!(finish_line(b"a\tb\r\r".to_vec()), "a\tb");
    }
}
