//! The connection's two tasks: the writer flushing queued requests, and
//! the reader routing backend messages to the FIFO of pending callers
//! (see `conn.rs` for the design). Also how a lost connection fails every
//! waiter at once.

use std::rc::Rc;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use postgres_protocol::message::backend::{DataRowBody, Message, RowDescriptionBody};
use postgres_protocol::message::frontend;

use super::codec;
use super::conn::{log_notice, rows_affected, Inner, Kind, Pending, QueryResult, State};
use super::error::{DbError, FEATURE_NOT_SUPPORTED};
use super::types::{Column, Row, SimpleRow};

impl Inner {
    pub(crate) fn closed_error(&self) -> DbError {
        match &*self.state.borrow() {
            State::Closed(reason) => DbError::Closed(reason.clone()),
            _ => DbError::Closed("connection is shutting down".into()),
        }
    }

    /// Mark the connection dead and answer every waiting caller.
    pub(crate) fn fail_all(&self, reason: String) {
        {
            let mut st = self.state.borrow_mut();
            if matches!(*st, State::Closed(_)) {
                return;
            }
            tracing::warn!(target: "hearth::db", pid = self.process_id, "connection closed: {reason}");
            *st = State::Closed(reason.clone());
        }
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for p in pending {
            let err = || DbError::Closed(reason.clone());
            if let Kind::Simple { reply: Some(r), .. } = p.kind {
                r.send(Err(err()));
            }
            if let Some(r) = p.reply {
                r.send(Err(err()));
            }
        }
        self.out.borrow_mut().clear();
        self.write_ready.notify();
        self.gate_waiters.wake_all();
        self.closed_waiters.wake_all();
    }

    /// Route one backend message. An `Err` is fatal for the connection.
    pub(crate) fn handle(&self, msg: Message) -> Result<(), DbError> {
        match msg {
            Message::NoticeResponse(body) => {
                log_notice(body.fields());
                return Ok(());
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(DbError::protocol)?.to_owned();
                let value = body.value().map_err(DbError::protocol)?.to_owned();
                self.parameters.borrow_mut().insert(name, value);
                return Ok(());
            }
            Message::NotificationResponse(_) => return Ok(()),
            _ => {}
        }
        let mut pending = self.pending.borrow_mut();
        let Some(p) = pending.front_mut() else {
            return Err(DbError::Protocol(
                "message from server with no request pending".into(),
            ));
        };
        match msg {
            Message::ParseComplete
            | Message::BindComplete
            | Message::CloseComplete
            | Message::ParameterDescription(_)
            | Message::CopyInResponse(_) => {}
            Message::RowDescription(body) => {
                let cols = columns_of(&body)?;
                match &mut p.kind {
                    Kind::Extended { describes, .. } => {
                        let stmt = describes
                            .pop_front()
                            .ok_or_else(|| DbError::Protocol("unexpected RowDescription".into()))?;
                        *stmt.columns.borrow_mut() = Some(cols.into());
                    }
                    Kind::Simple { .. } => {}
                }
            }
            Message::NoData => {
                if let Kind::Extended { describes, .. } = &mut p.kind {
                    let stmt = describes
                        .pop_front()
                        .ok_or_else(|| DbError::Protocol("unexpected NoData".into()))?;
                    *stmt.columns.borrow_mut() = Some(Vec::new().into());
                }
            }
            Message::DataRow(body) => match &mut p.kind {
                Kind::Extended { execs, .. } => {
                    let cols = execs.front().and_then(|s| s.columns.borrow().clone());
                    match cols {
                        Some(cols) => match Row::new(cols, body) {
                            Ok(row) => p.rows.push(row),
                            Err(e) => {
                                p.error.get_or_insert(e);
                            }
                        },
                        None => {
                            return Err(DbError::Protocol("row for undescribed statement".into()))
                        }
                    }
                }
                Kind::Simple { rows, .. } => rows.push(simple_row(&body)?),
            },
            Message::CommandComplete(body) => {
                let tag = body.tag().map_err(DbError::protocol)?;
                let rows = std::mem::take(&mut p.rows);
                p.results.push(QueryResult {
                    rows,
                    rows_affected: rows_affected(tag),
                    command: tag.to_owned(),
                });
                if let Kind::Extended { execs, .. } = &mut p.kind {
                    execs.pop_front();
                }
            }
            Message::EmptyQueryResponse => {
                p.results.push(QueryResult::default());
                if let Kind::Extended { execs, .. } = &mut p.kind {
                    execs.pop_front();
                }
            }
            Message::ErrorResponse(body) => {
                let err = DbError::from_fields(body.fields());
                if let Kind::Extended { describes, execs } = &mut p.kind {
                    // Statements whose Parse may have failed, or that the
                    // server no longer accepts, must be prepared afresh.
                    let mut cache = self.stmts.borrow_mut();
                    for s in describes.drain(..) {
                        cache.evict(&s);
                    }
                    if matches!(err.code(), Some(FEATURE_NOT_SUPPORTED | "26000")) {
                        if let Some(s) = execs.front() {
                            cache.evict(s);
                        }
                    }
                }
                p.error.get_or_insert(err);
            }
            Message::ReadyForQuery(_) => {
                let Some(p) = pending.pop_front() else {
                    return Ok(());
                };
                drop(pending);
                complete(p);
            }
            Message::CopyData(_) | Message::CopyDone | Message::PortalSuspended => {}
            _ => return Err(DbError::Protocol("unexpected message from server".into())),
        }
        Ok(())
    }
}

/// The columns a RowDescription announces.
fn columns_of(body: &RowDescriptionBody) -> Result<Vec<Column>, DbError> {
    let mut cols = Vec::new();
    let mut fields = body.fields();
    while let Some(f) = fields.next().map_err(DbError::protocol)? {
        cols.push(Column {
            name: f.name().to_owned(),
            type_oid: f.type_oid(),
        });
    }
    Ok(cols)
}

/// A row of the simple (text) protocol: every field as text or NULL.
fn simple_row(body: &DataRowBody) -> Result<SimpleRow, DbError> {
    let mut values = Vec::new();
    let mut ranges = body.ranges();
    while let Some(r) = ranges.next().map_err(DbError::protocol)? {
        values.push(r.map(|r| {
            String::from_utf8_lossy(body.buffer().get(r).unwrap_or_default()).into_owned()
        }));
    }
    Ok(SimpleRow { values })
}

/// Decodes backend messages the way the connection's reader does, with
/// no connection: every field of every message, each binary column read
/// as each Rust type hearth reads columns as. The entry point of the
/// `pg_backend` fuzz target (`fuzz/`): a server or proxy can send any
/// bytes, and none of them may panic a shard.
#[doc(hidden)]
#[derive(Default)]
pub struct BackendInspector {
    /// The last RowDescription's columns: what the next DataRows are read as.
    columns: Option<Rc<[Column]>>,
}

impl BackendInspector {
    /// Decodes `msg`; `Err` where the connection would fail or a read
    /// would return an error.
    pub fn feed(&mut self, msg: Message) -> Result<(), DbError> {
        match msg {
            Message::NoticeResponse(body) => {
                log_notice(body.fields());
            }
            Message::ErrorResponse(body) => {
                let err = DbError::from_fields(body.fields());
                let _ = err.code();
            }
            Message::ParameterStatus(body) => {
                body.name().map_err(DbError::protocol)?;
                body.value().map_err(DbError::protocol)?;
            }
            Message::CommandComplete(body) => {
                rows_affected(body.tag().map_err(DbError::protocol)?);
            }
            Message::RowDescription(body) => {
                self.columns = Some(columns_of(&body)?.into());
            }
            Message::DataRow(body) => {
                simple_row(&body)?;
                if let Some(cols) = self.columns.clone() {
                    read_all(&Row::new(cols, body)?);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads every column of `row` as every type hearth reads columns as;
/// type mismatches are errors, which is all that is asked of them.
fn read_all(row: &Row) {
    for i in 0..row.len() {
        let _ = row.get::<Option<bool>>(i);
        let _ = row.get::<Option<i16>>(i);
        let _ = row.get::<Option<i32>>(i);
        let _ = row.get::<Option<i64>>(i);
        let _ = row.get::<Option<String>>(i);
        let _ = row.get::<Option<Vec<u8>>>(i);
        let _ = row.get::<Option<serde_json::Value>>(i);
        let _ = row.get::<Option<Vec<String>>>(i);
        let _ = row.get::<Option<Vec<i64>>>(i);
        let _ = row.get::<String>(i);
    }
}

fn complete(p: Pending) {
    match p.kind {
        Kind::Simple { rows, reply } => {
            if let Some(r) = reply {
                r.send(match p.error {
                    Some(e) => Err(e),
                    None => Ok(rows),
                });
            }
        }
        Kind::Extended { .. } => {
            if let Some(r) = p.reply {
                r.send(match p.error {
                    Some(e) => Err(e),
                    None => Ok(p.results),
                });
            }
        }
    }
}

pub(crate) async fn reader<R: AsyncReadRent>(inner: Rc<Inner>, mut r: R, mut buf: BytesMut) {
    loop {
        loop {
            match codec::decode(&mut buf) {
                Ok(Some(msg)) => {
                    if let Err(e) = inner.handle(msg) {
                        inner.fail_all(e.to_string());
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    inner.fail_all(e.to_string());
                    return;
                }
            }
        }
        if matches!(*inner.state.borrow(), State::Closed(_)) {
            return;
        }
        buf.reserve(32 * 1024);
        let len = buf.len();
        let (res, slice) = r.read(std::mem::take(&mut buf).slice_mut(len..)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => {
                inner.fail_all("server closed the connection".into());
                return;
            }
            Ok(_) => {}
            Err(e) => {
                inner.fail_all(format!("read failed: {e}"));
                return;
            }
        }
    }
}

pub(crate) async fn writer<W: AsyncWriteRent>(inner: Rc<Inner>, mut w: W) {
    let mut spare = Some(BytesMut::with_capacity(16 * 1024));
    loop {
        let state = inner.state.borrow().clone();
        if let State::Closed(_) = state {
            break;
        }
        if inner.out.borrow().is_empty() {
            if state == State::Closing {
                let mut bye = BytesMut::new();
                frontend::terminate(&mut bye);
                let _ = w.write_all(bye).await;
                break;
            }
            inner.write_ready.notified().await;
            continue;
        }
        let fresh = spare.take().unwrap_or_default();
        let buf = std::mem::replace(&mut *inner.out.borrow_mut(), fresh);
        let (res, mut buf) = w.write_all(buf).await;
        if let Err(e) = res {
            inner.fail_all(format!("write failed: {e}"));
            break;
        }
        buf.clear();
        spare = Some(buf);
    }
    let _ = w.shutdown().await;
}
