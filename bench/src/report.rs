//! The report: sections of rows, printed as aligned tables or written as JSON.
//!
//! Every measuring module returns [`Section`]s; this module knows nothing of
//! what they measure. A cell carries its value in a base unit (nanoseconds,
//! per second, bytes) so that the JSON holds plain numbers and the table
//! chooses how to show them.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::common::{format_bandwidth, format_bytes, format_nanos, format_rate, Machine, Mode};

/// A column after the name column: its header and its key in the JSON.
#[derive(Clone, Debug)]
pub struct Column {
    pub header: &'static str,
    pub key: &'static str,
}

impl Column {
    pub const fn new(header: &'static str, key: &'static str) -> Self {
        Column { header, key }
    }
}

/// One value of a row.
#[derive(Clone, Debug)]
pub enum Cell {
    /// A time, in nanoseconds.
    Nanos(f64),
    /// Operations per second.
    Rate(f64),
    /// Bytes per second.
    Bandwidth(f64),
    /// Bytes per second, printed in GiB/s (the unit of rows of whole MiB).
    /// Only the net section's streaming rows use it so far.
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    GibBandwidth(f64),
    /// A size in bytes.
    Bytes(u64),
    /// A count.
    Count(u64),
    /// A time relative to a reference row's: above 1 the row is slower.
    /// Printed as "3.20x slower" or "1.50x faster".
    Slower(f64),
    /// Marks the row the others are compared with (1 in the JSON).
    Reference,
    /// A plain factor, printed as "3.2x".
    Factor(f64),
    /// A ratio near 1, printed with two decimals: "0.97x".
    Ratio(f64),
    Text(String),
    /// Not measured (shown as "-", null in the JSON).
    Empty,
}

impl Cell {
    pub fn time(duration: Duration) -> Cell {
        Cell::Nanos(duration.as_secs_f64() * 1e9)
    }

    /// `row / reference` as [`Cell::Slower`], or empty when either is unknown.
    pub fn slower(row: Option<f64>, reference: Option<f64>) -> Cell {
        match (row, reference) {
            (Some(row), Some(reference)) if reference > 0.0 && row.is_finite() => Cell::Slower(row / reference),
            _ => Cell::Empty,
        }
    }

    fn text(&self) -> String {
        match self {
            Cell::Nanos(ns) => format_nanos(*ns),
            Cell::Rate(rate) => format_rate(*rate),
            Cell::Bandwidth(rate) => format_bandwidth(*rate),
            Cell::GibBandwidth(rate) => format!("{:.2} GiB/s", rate / (1u64 << 30) as f64),
            Cell::Bytes(bytes) => format_bytes(*bytes as usize),
            Cell::Count(count) => count.to_string(),
            Cell::Reference => "reference".to_owned(),
            Cell::Slower(ratio) if *ratio >= 1.0 => format!("{ratio:.2}x slower"),
            Cell::Slower(ratio) => format!("{:.2}x faster", 1.0 / ratio),
            Cell::Factor(factor) => format!("{factor:.1}x"),
            Cell::Ratio(ratio) => format!("{ratio:.2}x"),
            Cell::Text(text) => text.clone(),
            Cell::Empty => "-".to_owned(),
        }
    }

    fn json(&self) -> Value {
        let number = |x: f64| if x.is_finite() { json!((x * 1e4).round() / 1e4) } else { Value::Null };
        match self {
            Cell::Nanos(x)
            | Cell::Rate(x)
            | Cell::Bandwidth(x)
            | Cell::GibBandwidth(x)
            | Cell::Slower(x)
            | Cell::Factor(x)
            | Cell::Ratio(x) => number(*x),
            Cell::Bytes(n) | Cell::Count(n) => json!(n),
            Cell::Reference => json!(1.0),
            Cell::Text(text) => json!(text),
            Cell::Empty => Value::Null,
        }
    }
}

/// The verdict of a goal line: "goal: WHAT: FIGURES, MET" (or "MISSED").
pub fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

/// One row: a name and one cell per column.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub cells: Vec<Cell>,
}

impl Row {
    pub fn new(name: impl Into<String>, cells: Vec<Cell>) -> Self {
        Row { name: name.into(), cells }
    }
}

/// One table of the report.
#[derive(Clone, Debug)]
pub struct Section {
    /// Key of the section in the JSON ("latency", "locks", ...).
    pub id: String,
    pub title: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    /// Lines printed under the table: how to read it, goals met or missed.
    pub notes: Vec<String>,
    /// Why the figures cannot stand (a row faster than its floor): the
    /// whole run is refused.
    pub invalid: Vec<String>,
}

impl Section {
    pub fn new(id: impl Into<String>, title: impl Into<String>, columns: Vec<Column>) -> Self {
        Section {
            id: id.into(),
            title: title.into(),
            columns,
            rows: Vec::new(),
            notes: Vec::new(),
            invalid: Vec::new(),
        }
    }

    pub fn row(&mut self, name: impl Into<String>, cells: Vec<Cell>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "a row of section {} has the wrong width", self.id);
        self.rows.push(Row::new(name, cells));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Marks the section's figures INVALID, saying why.
    pub fn invalid(&mut self, why: impl Into<String>) {
        self.invalid.push(why.into());
    }

    /// The section as an aligned text table.
    pub fn table(&self) -> String {
        let cells: Vec<Vec<String>> = self.rows.iter().map(|row| row.cells.iter().map(Cell::text).collect()).collect();
        let name_width = self.rows.iter().map(|row| row.name.chars().count()).max().unwrap_or(0);
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let widest = cells.iter().filter_map(|row| row.get(i)).map(|c| c.chars().count()).max();
                widest.unwrap_or(0).max(column.header.chars().count())
            })
            .collect();
        let mut out = format!("\n{}\n", self.title);
        out += &format!("  {:<name_width$}", "");
        for (column, width) in self.columns.iter().zip(&widths) {
            out += &format!("  {:>width$}", column.header);
        }
        out += "\n";
        for (row, cells) in self.rows.iter().zip(&cells) {
            out += &format!("  {:<name_width$}", row.name);
            for (cell, width) in cells.iter().zip(&widths) {
                out += &format!("  {cell:>width$}");
            }
            out += "\n";
        }
        for note in &self.notes {
            out += &format!("  {note}\n");
        }
        for why in &self.invalid {
            out += &format!("  INVALID: {why}\n");
        }
        out
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut object = Map::new();
                object.insert("name".to_owned(), json!(row.name));
                for (column, cell) in self.columns.iter().zip(&row.cells) {
                    object.insert(column.key.to_owned(), cell.json());
                }
                Value::Object(object)
            })
            .collect();
        json!({ "title": self.title, "rows": rows, "notes": self.notes, "invalid": self.invalid })
    }
}

/// The whole report: the machine, the mode and every section in order.
pub struct Report<'a> {
    pub mode: Mode,
    pub machine: &'a Machine,
    pub sections: &'a [Section],
}

impl Report<'_> {
    /// Every reason, over all sections, why the run is refused.
    pub fn invalid(&self) -> Vec<String> {
        self.sections.iter().flat_map(|s| s.invalid.iter().map(move |why| format!("{}: {why}", s.id))).collect()
    }

    pub fn table(&self) -> String {
        let mut out = format!("\nshmpool-bench ({} mode) on {}\n", self.mode.name(), self.machine.describe());
        for section in self.sections {
            out += &section.table();
        }
        out
    }

    pub fn json(&self) -> String {
        let mut sections = Map::new();
        for section in self.sections {
            sections.insert(section.id.clone(), section.json());
        }
        let machine = self.machine;
        let report = json!({
            "mode": self.mode.name(),
            "machine": { "cpu": machine.cpu, "cores": machine.cores, "kernel": machine.kernel },
            "sections": sections,
        });
        serde_json::to_string_pretty(&report).expect("a JSON value serialises") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> Section {
        let mut section = Section::new("s", "Title", vec![Column::new("time", "ns"), Column::new("vs", "ratio")]);
        section.row("fast", vec![Cell::Nanos(1500.0), Cell::Reference]);
        section.row("a slower one", vec![Cell::Nanos(4500.0), Cell::slower(Some(4500.0), Some(1500.0))]);
        section.row("unmeasured", vec![Cell::Empty, Cell::slower(None, Some(1.0))]);
        section.note("a note");
        section
    }

    #[test]
    fn an_invalid_section_says_why_and_refuses_the_report() {
        let mut invalid = section();
        invalid.invalid("row x beats its floor");
        assert!(invalid.table().contains("INVALID: row x beats its floor"));
        assert_eq!(invalid.json()["invalid"][0], "row x beats its floor");
        let sections = [section(), invalid];
        let machine = Machine { cpu: "cpu".into(), cores: 2, kernel: "k".into() };
        let report = Report { mode: Mode::Quick, machine: &machine, sections: &sections };
        assert_eq!(report.invalid(), vec!["s: row x beats its floor".to_owned()]);
    }

    #[test]
    fn table_aligns_columns_and_describes_ratios() {
        let table = section().table();
        let lines: Vec<&str> = table.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "Title");
        assert!(lines[2].contains("1.5 µs") && lines[2].ends_with("reference"), "{table}");
        assert!(lines[3].ends_with("3.00x slower"), "{table}");
        assert!(lines[4].ends_with("-"), "{table}");
        // Every row is as wide as the header: the columns line up.
        let width = lines[1].chars().count();
        assert!(lines[2..5].iter().all(|l| l.chars().count() == width), "{table}");
        assert_eq!(lines[5], "  a note");
    }

    #[test]
    fn json_keys_rows_by_column_in_base_units() {
        let json = section().json();
        let rows = json["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["name"], "fast");
        assert_eq!(rows[0]["ns"], 1500.0);
        assert_eq!(rows[1]["ratio"], 3.0);
        assert!(rows[2]["ns"].is_null() && rows[2]["ratio"].is_null());
        assert_eq!(json["notes"][0], "a note");
    }

    #[test]
    fn gib_bandwidth_is_binary_in_the_table_and_bytes_in_the_json() {
        let cell = Cell::GibBandwidth(1.5 * (1u64 << 30) as f64);
        assert_eq!(cell.text(), "1.50 GiB/s");
        assert_eq!(cell.json(), json!(1.5 * (1u64 << 30) as f64));
    }

    #[test]
    fn slower_below_one_reads_as_faster() {
        assert_eq!(Cell::slower(Some(1.0), Some(4.0)).text(), "4.00x faster");
        assert!(matches!(Cell::slower(Some(1.0), Some(0.0)), Cell::Empty));
    }
}
