//! Rows written as JSON one list per column — the body of a `column_major` pipeline answer —
//! while they arrive from PostgreSQL.
//!
//! A grouped pipeline (`pg::burst`) hands each DataRow to a [`ColumnWriter`] as it reads it,
//! so the answer is written while the server still runs the rest of the burst, instead of in
//! one pass after the last statement, when the daemon alone works and PostgreSQL and the
//! client wait. Nothing of a row is kept once it is written.
//!
//! Invariant: a [`ByColumn`] holds exactly the rows of one statement, each column's values
//! comma-separated in row order, so joining the statements' segments column by column (in
//! statement order) gives the lists of the whole pipeline, whichever order they ran in.

use std::borrow::Cow;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::DataRowBody;
use tokio_postgres::types::Type;
use tokio_postgres::Column;

use crate::error::{Code, Error};
use crate::pg::exec::{for_each_row, uneven_row, write_named_cell, Outcome};

/// One statement's rows as JSON values, column by column.
#[derive(Debug, Clone)]
pub struct ByColumn {
    /// Every column's values, one column after the other.
    values: Vec<u8>,
    /// Where each column's values end in `values`.
    ends: Vec<usize>,
    rows: usize,
}

impl ByColumn {
    /// How many rows the statement returned.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Column `k`'s values, comma-separated, without brackets (empty without rows).
    pub fn column(&self, k: usize) -> &[u8] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.values[start..self.ends[k]]
    }

    /// How many bytes the values of all columns take.
    pub fn size(&self) -> usize {
        self.values.len()
    }

    /// `outcome`'s rows by column: as written while they arrived, or written now with `writer`
    /// (one writer serves every statement of an answer).
    pub fn of<'a>(
        outcome: &'a Outcome,
        writer: &mut ColumnWriter<'_>,
    ) -> Result<Cow<'a, ByColumn>, Error> {
        if let Some(written) = &outcome.by_column {
            if written.ends.len() != writer.columns.len() {
                return Err(Error::new(
                    Code::Internal,
                    "rows were written for another number of columns",
                ));
            }
            return Ok(Cow::Borrowed(written));
        }
        let columns = writer.columns.len();
        for_each_row(outcome, columns, |cells| writer.push_cells(cells))?;
        writer.finish().map(Cow::Owned)
    }
}

/// Writes the rows of one statement after another into per-column value lists.
///
/// A value PostgreSQL sent that cannot be written (a malformed row) fails only the statement
/// it belongs to; the error comes out of [`ColumnWriter::finish`].
pub struct ColumnWriter<'a> {
    /// Each column's name (for errors) and type.
    columns: Vec<(&'a str, &'a Type)>,
    lists: Vec<Vec<u8>>,
    rows: usize,
    failed: Option<Error>,
}

impl<'a> ColumnWriter<'a> {
    pub fn new(columns: &'a [Column]) -> ColumnWriter<'a> {
        ColumnWriter::named(columns.iter().map(|c| (c.name(), c.type_())).collect())
    }

    /// A writer for columns given by name and type (what [`ColumnWriter::new`] takes from a
    /// statement's columns).
    pub fn named(columns: Vec<(&'a str, &'a Type)>) -> ColumnWriter<'a> {
        ColumnWriter {
            lists: (0..columns.len())
                .map(|_| Vec::with_capacity(256))
                .collect(),
            columns,
            rows: 0,
            failed: None,
        }
    }

    /// Writes one row of the current statement as it came from the server.
    pub fn push(&mut self, row: &DataRowBody) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.write_wire(row) {
            self.failed = Some(e);
        }
    }

    fn write_wire(&mut self, row: &DataRowBody) -> Result<(), Error> {
        let buf = row.buffer();
        let mut ranges = row.ranges();
        let mut k = 0;
        while let Some(range) = ranges.next().map_err(|e| {
            Error::new(
                Code::Internal,
                format!("malformed row from PostgreSQL: {e}"),
            )
        })? {
            if k == self.columns.len() {
                let n = k + 1 + ranges.count().unwrap_or(0);
                return Err(uneven_row(n, self.columns.len()));
            }
            self.value(k, range.map(|r| &buf[r]))?;
            k += 1;
        }
        if k != self.columns.len() {
            return Err(uneven_row(k, self.columns.len()));
        }
        self.rows += 1;
        Ok(())
    }

    /// Writes one row of the current statement, one value per column.
    pub fn push_cells(&mut self, cells: &[Option<&[u8]>]) -> Result<(), Error> {
        if cells.len() != self.columns.len() {
            return Err(uneven_row(cells.len(), self.columns.len()));
        }
        for (k, cell) in cells.iter().enumerate() {
            self.value(k, *cell)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Appends one value to column `k`'s list; `k` is below the number of columns.
    fn value(&mut self, k: usize, cell: Option<&[u8]>) -> Result<(), Error> {
        let (name, ty) = self.columns[k];
        let list = &mut self.lists[k];
        if self.rows > 0 {
            list.push(b',');
        }
        write_named_cell(list, name, ty, cell)
    }

    /// Forgets the current statement's rows (it failed, or they were not its answer).
    pub fn discard(&mut self) {
        self.lists.iter_mut().for_each(Vec::clear);
        self.rows = 0;
        self.failed = None;
    }

    /// The current statement's rows; the writer then starts on the next statement.
    pub fn finish(&mut self) -> Result<ByColumn, Error> {
        if let Some(e) = self.failed.take() {
            self.discard();
            return Err(e);
        }
        let mut written = ByColumn {
            values: Vec::with_capacity(self.lists.iter().map(Vec::len).sum()),
            ends: Vec::with_capacity(self.lists.len()),
            rows: self.rows,
        };
        for list in &mut self.lists {
            written.values.extend_from_slice(list);
            written.ends.push(written.values.len());
            list.clear();
        }
        self.rows = 0;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::{BufMut, BytesMut};
    use postgres_protocol::message::backend::Message;

    fn writer() -> ColumnWriter<'static> {
        ColumnWriter::named(vec![("id", &Type::INT4), ("name", &Type::TEXT)])
    }

    /// A DataRow message with these binary values, parsed as the burst reader gets it.
    fn data_row(cells: &[Option<&[u8]>]) -> DataRowBody {
        let mut body = BytesMut::new();
        body.put_i16(cells.len() as i16);
        for cell in cells {
            match cell {
                None => body.put_i32(-1),
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.put_slice(v);
                }
            }
        }
        let mut msg = BytesMut::new();
        msg.put_u8(b'D');
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        match Message::parse(&mut msg) {
            Ok(Some(Message::DataRow(row))) => row,
            _ => panic!("not a data row"),
        }
    }

    #[test]
    fn statements_are_written_column_by_column() {
        let mut w = writer();
        w.push(&data_row(&[Some(&7i32.to_be_bytes()), Some(b"a\"b")]));
        w.push(&data_row(&[Some(&8i32.to_be_bytes()), None]));
        let first = w.finish().unwrap();
        assert_eq!(first.rows(), 2);
        assert_eq!(first.column(0), b"7,8");
        assert_eq!(first.column(1), br#""a\"b",null"#);
        let empty = w.finish().unwrap();
        assert_eq!(
            (empty.rows(), empty.column(0), empty.column(1)),
            (0, &b""[..], &b""[..])
        );
        w.push_cells(&[Some(&9i32.to_be_bytes()), Some(b"c")])
            .unwrap();
        let third = w.finish().unwrap();
        assert_eq!(
            (third.column(0), third.column(1)),
            (&b"9"[..], &br#""c""#[..])
        );
    }

    #[test]
    fn a_malformed_row_fails_only_its_statement() {
        let mut w = writer();
        // An int4 of three bytes, then a row with one value too many.
        w.push(&data_row(&[Some(&[0, 0, 1]), Some(b"x")]));
        w.push(&data_row(&[Some(&1i32.to_be_bytes()), Some(b"y")]));
        let err = w.finish().unwrap_err();
        assert!(err.to_string().contains("id"), "{err}");
        w.push(&data_row(&[Some(&1i32.to_be_bytes()), Some(b"y"), None]));
        let err = w.finish().unwrap_err();
        assert!(err.to_string().contains("3 values"), "{err}");
        w.push(&data_row(&[Some(&2i32.to_be_bytes()), Some(b"z")]));
        let next = w.finish().unwrap();
        assert_eq!((next.rows(), next.column(0)), (1, &b"2"[..]));
    }

    #[test]
    fn discard_forgets_the_current_statement() {
        let mut w = writer();
        w.push(&data_row(&[Some(&1i32.to_be_bytes()), Some(b"a")]));
        w.discard();
        w.push(&data_row(&[Some(&2i32.to_be_bytes()), Some(b"b")]));
        let kept = w.finish().unwrap();
        assert_eq!((kept.rows(), kept.column(0)), (1, &b"2"[..]));
    }
}
