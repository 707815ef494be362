//! Sending typed [`Request`]s: one at a time ([`Connection::send`]), many in one
//! `write` ([`Connection::send_all`]), or any number in bounded windows
//! ([`Connection::pipeline`], the one windowed-pipeline loop of the workspace).

use std::time::{Duration, Instant};

use crate::codec;
use crate::connection::{Connection, PendingReply};
use crate::error::{ProtoError, Result};
use crate::request::{Pending, Request};
use kvmi_sys as sys;

/// What [`Connection::pipeline`] does after a reply: go on, or send no further window
/// (the replies of the window in flight are still waited for and reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep sending.
    Continue,
    /// Send nothing more.
    Stop,
}

impl Connection {
    /// Sends `req` in one `write` without waiting; the handle waits for and decodes
    /// the reply.
    pub fn send<T>(&self, req: Request<T>) -> Result<Pending<T>> {
        let p = self.send_request(req.id(), req.payload())?;
        Ok(req.pending(p))
    }

    /// Sends `req` and waits ([`Config::request_timeout`](crate::Config::request_timeout))
    /// for its decoded reply.
    pub fn call<T>(&self, req: Request<T>) -> Result<T> {
        self.send(req)?.wait(self.config.request_timeout)
    }

    /// Sends every request in one `write` (all or none are registered and written);
    /// returns their reply handles in order.
    pub fn send_all<T>(
        &self,
        reqs: impl IntoIterator<Item = Request<T>>,
    ) -> Result<Vec<Pending<T>>> {
        let reqs: Vec<Request<T>> = reqs.into_iter().collect();
        let mut bytes = Vec::with_capacity(
            reqs.iter()
                .map(|r| sys::MSG_HDR_SIZE + r.payload().len())
                .sum(),
        );
        let mut pending = Vec::with_capacity(reqs.len());
        for req in &reqs {
            let seq = self.shared.next_seq();
            codec::encode_into(&mut bytes, req.id(), seq, &[req.payload()])?;
            self.shared.register(seq, req.id())?;
            pending.push(req.pending(PendingReply::new(
                std::sync::Arc::clone(&self.shared),
                seq,
                req.id(),
            )));
        }
        if !bytes.is_empty() {
            // On failure the handles drop, which unregisters them.
            self.shared.write(&bytes)?;
        }
        Ok(pending)
    }

    /// Sends `reqs` with at most `window` in flight (each window in one `write`),
    /// waiting for every reply of a window before the next goes out, and reports each
    /// reply to `on_reply(index, result)` in order. Each wait lasts at most
    /// [`Config::request_timeout`](crate::Config::request_timeout), and never past
    /// `deadline`.
    ///
    /// No further window is sent after `on_reply` returned [`Flow::Stop`], after a
    /// reply was not received (timeout, disconnect: only `KVM_E*` refusals let the
    /// pipeline go on), or once `deadline` has passed. Returns how many requests were
    /// sent (each of which was reported), or the error that kept the next window from
    /// going out (its requests are not reported).
    pub fn pipeline<T>(
        &self,
        reqs: impl IntoIterator<Item = Request<T>>,
        window: usize,
        deadline: Option<Instant>,
        mut on_reply: impl FnMut(usize, Result<T>) -> Flow,
    ) -> Result<usize> {
        let window = window.max(1);
        let timeout = self.config.request_timeout;
        let mut reqs = reqs.into_iter().peekable();
        let mut sent = 0usize;
        while reqs.peek().is_some() {
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Err(ProtoError::Timeout(Duration::ZERO));
                }
            }
            let pending = self.send_all(reqs.by_ref().take(window))?;
            let mut go_on = true;
            for p in pending {
                let t = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()).min(timeout),
                    None => timeout,
                };
                let r = p.wait(t);
                if matches!(
                    r,
                    Err(ProtoError::Timeout(_) | ProtoError::Disconnected(_) | ProtoError::Io(_))
                ) {
                    go_on = false;
                }
                if on_reply(sent, r) == Flow::Stop {
                    go_on = false;
                }
                sent += 1;
            }
            if !go_on {
                break;
            }
        }
        Ok(sent)
    }
}
