//! The architecture invariants of docs/ARCHITECTURE.md that a grep can
//! check, pinned so a change that breaks one fails CI instead of drifting.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(path relative to the crate, text)` of every Rust file under `src/`,
/// with line comments dropped (a doc comment may name what code may not).
fn code() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).expect("source is UTF-8");
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            (rel, code)
        })
        .collect()
}

#[test]
fn only_the_http_edge_knows_errcodes() {
    let offenders: Vec<String> = code()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("src/api/") && !p.starts_with("src/http/"))
        .filter(|(_, c)| c.contains("MatrixError") || c.contains("\"M_"))
        .map(|(p, _)| p)
        .collect();
    assert!(
        offenders.is_empty(),
        "domain modules must return typed errors; map them in src/api/errors.rs: {offenders:?}"
    );
}

#[test]
fn domain_modules_never_import_process_orchestration() {
    let offenders: Vec<String> = code()
        .into_iter()
        .filter(|(p, _)| !matches!(p.as_str(), "src/main.rs" | "src/lib.rs" | "src/server.rs"))
        .filter(|(_, c)| c.contains("crate::server"))
        .map(|(p, _)| p)
        .collect();
    assert!(
        offenders.is_empty(),
        "only main.rs and lib.rs use crate::server: {offenders:?}"
    );
}

#[test]
fn events_never_import_rooms() {
    let offenders: Vec<String> = code()
        .into_iter()
        .filter(|(p, _)| p.starts_with("src/events/"))
        .filter(|(_, c)| c.contains("crate::rooms"))
        .map(|(p, _)| p)
        .collect();
    assert!(
        offenders.is_empty(),
        "events/ is below rooms/ (docs/ARCHITECTURE.md): {offenders:?}"
    );
}
