//! Every number in the README's tables, in the guides (`engine/README.md`, `sparsify/README.md`)
//! and in BENCHMARKS.md's current results comes from a committed result: all the decimals of a table row must be, after rounding to their printed
//! digits (or as percentages of fractions), numbers of one file under `results/` (the reports and
//! CSVs the scripts write), and every decimal of their prose a number of some such file. A
//! figure typed by hand, or left behind by a re-run, fails here.

use std::collections::HashSet;
use std::path::Path;

/// The decimals (`12.5`, `0.034`) in `text`, as written.
fn decimals(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.')) {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(&text[start..i]);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn result_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            result_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "md" || x == "csv") {
            out.push(p);
        }
    }
}

/// Each committed result file's numbers, printed with 0 to 4 decimals, and as percentages.
fn known_numbers(repo: &Path) -> Vec<HashSet<String>> {
    let mut files = Vec::new();
    result_files(&repo.join("results"), &mut files);
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let mut set = HashSet::new();
            for d in decimals(&text) {
                let x: f64 = d.parse().unwrap();
                for digits in 0..5 {
                    set.insert(format!("{x:.digits$}"));
                    set.insert(format!("{:.digits$}", x * 100.0));
                }
            }
            set
        })
        .collect()
}

/// Table rows of `text` whose decimals are not all numbers of one result file; and the count of
/// rows.
fn unsourced_rows(text: &str, known: &[HashSet<String>]) -> (Vec<String>, usize) {
    let mut rows = 0;
    let mut unsourced = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("|---")) {
        rows += 1;
        let numbers = decimals(line);
        if !numbers.is_empty() && !known.iter().any(|set| numbers.iter().all(|d| set.contains(*d))) {
            unsourced.push(format!("`{}` ({})", &line[..line.len().min(90)], numbers.join(" ")));
        }
    }
    (unsourced, rows)
}

/// Decimals of `text`'s prose (outside tables and code blocks) that are no number of any result
/// file.
fn unsourced_prose(text: &str, known: &[HashSet<String>]) -> Vec<String> {
    let mut unsourced = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        in_code ^= line.starts_with("```");
        if in_code || line.starts_with('|') || line.starts_with("```") {
            continue;
        }
        for d in decimals(line).into_iter().filter(|d| !known.iter().any(|set| set.contains(*d))) {
            unsourced.push(format!("{d} in `{}`", &line[..line.len().min(90)]));
        }
    }
    unsourced
}

#[test]
fn readme_numbers_come_from_committed_results() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let known = known_numbers(&repo);
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let (mut unsourced, rows) = unsourced_rows(&readme, &known);
    assert!(rows >= 30, "the README's tables were not found ({rows} rows)");
    unsourced.extend(unsourced_prose(&readme, &known));
    assert!(unsourced.is_empty(), "README numbers with no committed result behind them:\n{}", unsourced.join("\n"));
}

#[test]
fn guide_numbers_come_from_committed_results() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let known = known_numbers(&repo);
    for guide in ["engine/README.md", "sparsify/README.md"] {
        let text = std::fs::read_to_string(repo.join(guide)).unwrap();
        let (mut unsourced, _) = unsourced_rows(&text, &known);
        unsourced.extend(unsourced_prose(&text, &known));
        assert!(unsourced.is_empty(), "{guide}: numbers with no committed result behind them:\n{}", unsourced.join("\n"));
    }
}

#[test]
fn benchmarks_current_results_come_from_committed_results() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let known = known_numbers(&repo);
    let text = std::fs::read_to_string(repo.join("BENCHMARKS.md")).unwrap();
    // The current results run up to the notes on what was tried and not kept.
    let current = &text[..text.find("\n## Tried and not kept").expect("BENCHMARKS.md's sections")];
    let (mut unsourced, rows) = unsourced_rows(current, &known);
    assert!(rows >= 30, "BENCHMARKS.md's tables were not found ({rows} rows)");
    unsourced.extend(unsourced_prose(current, &known));
    assert!(unsourced.is_empty(), "BENCHMARKS.md numbers with no committed result behind them:\n{}", unsourced.join("\n"));
}
