//! COPY … FROM STDIN for bulk loads.
//!
//! The whole COPY (Parse/Bind/Execute, the data, CopyDone, Sync) is queued
//! as one pipelined request without waiting for CopyInResponse: if the COPY
//! statement fails, the server discards the data messages up to the Sync,
//! so the stream stays in sync either way. The data is therefore held in
//! memory; load huge sets in several calls.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

use super::conn::{answer_of, Connection, Kind};
use super::error::DbError;

/// Size of each CopyData message.
const CHUNK: usize = 64 * 1024;

impl Connection {
    /// Run `COPY … FROM STDIN` with `data` (in the COPY's format; see
    /// [`CopyText`] for text format). Returns the number of rows copied.
    pub async fn copy_in(&self, sql: &str, data: &[u8]) -> Result<u64, DbError> {
        self.wait_gate().await;
        let answer = self.enqueue(|out, _| {
            frontend::parse("", sql, [], out)?;
            frontend::bind(
                "",
                "",
                std::iter::empty::<i16>(),
                std::iter::empty::<()>(),
                |(), _| Ok(postgres_protocol::IsNull::Yes),
                std::iter::empty::<i16>(),
                out,
            )
            .map_err(|_| DbError::Type("bind for COPY failed".into()))?;
            frontend::execute("", 0, out)?;
            for chunk in data.chunks(CHUNK) {
                frontend::CopyData::new(chunk)?.write(out);
            }
            frontend::copy_done(out);
            frontend::sync(out);
            Ok(Kind::Extended {
                describes: Default::default(),
                execs: Default::default(),
            })
        })?;
        let results = answer_of(answer).await?;
        Ok(results.iter().map(|r| r.rows_affected).sum())
    }
}

/// Builds COPY text-format data (tab-separated, `\N` for NULL), escaping
/// backslashes, tabs, newlines and carriage returns.
#[derive(Debug, Default)]
pub struct CopyText {
    buf: BytesMut,
    rows: usize,
}

impl CopyText {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one row.
    pub fn row(&mut self, fields: &[Option<&str>]) -> &mut Self {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.buf.put_u8(b'\t');
            }
            match f {
                None => self.buf.put_slice(b"\\N"),
                Some(s) => {
                    for &b in s.as_bytes() {
                        match b {
                            b'\\' => self.buf.put_slice(b"\\\\"),
                            b'\t' => self.buf.put_slice(b"\\t"),
                            b'\n' => self.buf.put_slice(b"\\n"),
                            b'\r' => self.buf.put_slice(b"\\r"),
                            _ => self.buf.put_u8(b),
                        }
                    }
                }
            }
        }
        self.buf.put_u8(b'\n');
        self.rows += 1;
        self
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escaping() {
        let mut c = CopyText::new();
        c.row(&[Some("a\tb"), None, Some("back\\slash\nnl")]);
        assert_eq!(c.as_bytes(), b"a\\tb\t\\N\tback\\\\slash\\nnl\n");
        assert_eq!(c.rows(), 1);
    }
}
