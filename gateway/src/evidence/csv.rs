//! CSV files of the bundle: one writer per register, rows streamed to disk as they are found,
//! every field quoted and defused for spreadsheets (`audit::export::csv_field`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::audit::export::csv_field;

/// A CSV file being written: the header first, then rows.
pub struct CsvFile {
    w: BufWriter<File>,
    rows: u64,
}

impl CsvFile {
    pub fn create(path: &Path, header: &[&str]) -> std::io::Result<CsvFile> {
        let mut w = BufWriter::new(File::create(path)?);
        writeln!(w, "{}", header.join(","))?;
        Ok(CsvFile { w, rows: 0 })
    }

    /// Opens an existing CSV file to add rows after the ones it holds.
    pub fn append(path: &Path) -> std::io::Result<CsvFile> {
        let f = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(CsvFile {
            w: BufWriter::new(f),
            rows: 0,
        })
    }

    pub fn row<S: AsRef<str>>(&mut self, fields: &[S]) -> std::io::Result<()> {
        let line = fields
            .iter()
            .map(|f| csv_field(f.as_ref()))
            .collect::<Vec<_>>()
            .join(",");
        self.rows += 1;
        writeln!(self.w, "{line}")
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes and syncs the file.
    pub fn finish(self) -> std::io::Result<u64> {
        let rows = self.rows;
        self.w
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(rows)
    }
}
