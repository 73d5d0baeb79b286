//! Plain-text tables in the style of `kubectl get`: upper-case headers, columns two spaces
//! apart, the last column unpadded. Colour is applied after padding, so escape codes never
//! disturb the alignment.
//!
//! Owns: column widths and line layout. What goes in the cells is the commands' business.

use crate::style::{Palette, Style};

/// Space between columns.
const GAP: &str = "  ";

/// One cell: its text and, optionally, the style to paint it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// What is shown.
    pub text: String,
    /// How it is painted (after padding).
    pub style: Option<Style>,
}

impl Cell {
    /// A cell in the default style.
    pub fn plain(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            style: None,
        }
    }

    /// A cell painted in `style`.
    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Self {
            text: text.into(),
            style: Some(style),
        }
    }
}

/// A table's columns and their widths. Widths only grow, so rows printed later (as in
/// `--watch`) line up with earlier ones unless they are wider.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column headers.
    headers: Vec<&'static str>,
    /// Current width of each column, in characters.
    widths: Vec<usize>,
}

impl Table {
    /// A table with these headers, each column as wide as its header.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            widths: headers.iter().map(|h| h.chars().count()).collect(),
        }
    }

    /// Widens the columns to fit `rows`.
    pub fn fit(&mut self, rows: &[Vec<Cell>]) {
        for row in rows {
            for (width, cell) in self.widths.iter_mut().zip(row) {
                *width = (*width).max(cell.text.chars().count());
            }
        }
    }

    /// The header line.
    pub fn header(&self, palette: Palette) -> String {
        let cells: Vec<Cell> = self
            .headers
            .iter()
            .map(|h| Cell::styled(*h, Style::Strong))
            .collect();
        self.line(&cells, palette)
    }

    /// One row, laid out to the current widths.
    pub fn line(&self, cells: &[Cell], palette: Palette) -> String {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str(GAP);
            }
            let padded = if i == last {
                cell.text.clone()
            } else {
                let width = self.widths.get(i).copied().unwrap_or(0);
                format!("{:<width$}", cell.text)
            };
            match cell.style {
                Some(style) => {
                    // Paint the text, not the padding, then restore the padding.
                    let pad = padded.len() - cell.text.len();
                    out.push_str(&palette.paint(style, &cell.text));
                    out.push_str(&" ".repeat(pad));
                }
                None => out.push_str(&padded),
            }
        }
        out.truncate(out.trim_end().len());
        out
    }

    /// Header and rows, fitted, one line each with a final newline.
    pub fn render(headers: &[&'static str], rows: &[Vec<Cell>], palette: Palette) -> String {
        let mut table = Self::new(headers);
        table.fit(rows);
        let mut out = table.header(palette);
        out.push('\n');
        for row in rows {
            out.push_str(&table.line(row, palette));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_two_spaces_apart_and_the_last_is_not_padded() {
        let rows = vec![
            vec![
                Cell::plain("a"),
                Cell::plain("long value"),
                Cell::plain("x"),
            ],
            vec![Cell::plain("bbbb"), Cell::plain("v"), Cell::plain("yy")],
        ];
        let out = Table::render(&["K", "VALUE", "LAST"], &rows, Palette::plain());
        assert_eq!(
            out,
            "K     VALUE       LAST\n\
             a     long value  x\n\
             bbbb  v           yy\n"
        );
    }

    #[test]
    fn colour_does_not_disturb_alignment() {
        let mut table = Table::new(&["A", "B"]);
        let row = vec![Cell::styled("ok", Style::Good), Cell::plain("z")];
        table.fit(std::slice::from_ref(&row));
        let line = table.line(&row, Palette::new(true));
        assert_eq!(line, "\x1b[32mok\x1b[0m  z");
    }

    #[test]
    fn later_wider_rows_widen_the_table() {
        let mut table = Table::new(&["A", "B"]);
        table.fit(&[vec![Cell::plain("wide-cell"), Cell::plain("z")]]);
        assert_eq!(table.header(Palette::plain()), "A          B");
    }
}
