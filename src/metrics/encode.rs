//! The Prometheus text exposition format, version 0.0.4: `# HELP` and
//! `# TYPE` per family, then one `name{labels} value` line per series;
//! histograms as cumulative `_bucket{le=…}` lines ending with
//! `le="+Inf"`, then `_sum` and `_count`.

use std::fmt::Write as _;

use super::{Families, Family, Kind, Sample, Value};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every family; series sorted by labels so scrapes diff cleanly.
pub fn encode(families: &Families) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for fam in &families.0 {
        family(&mut out, fam);
    }
    out
}

fn family(out: &mut String, fam: &Family) {
    debug_assert!(valid_name(fam.name), "bad metric name {}", fam.name);
    let _ = writeln!(out, "# HELP {} {}", fam.name, escape_help(fam.help));
    let _ = writeln!(out, "# TYPE {} {}", fam.name, fam.kind.as_str());
    let mut samples: Vec<&Sample> = fam.samples.iter().collect();
    samples.sort_by(|a, b| a.labels.cmp(&b.labels));
    for s in samples {
        match (&s.value, fam.kind) {
            (Value::Histogram(h), Kind::Histogram) => {
                let mut cumulative = 0u64;
                for (i, c) in h.counts.iter().enumerate() {
                    cumulative += c;
                    let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| number(*b));
                    line(
                        out,
                        fam.name,
                        "_bucket",
                        &s.labels,
                        Some(&le),
                        &cumulative.to_string(),
                    );
                }
                line(out, fam.name, "_sum", &s.labels, None, &number(h.sum));
                line(
                    out,
                    fam.name,
                    "_count",
                    &s.labels,
                    None,
                    &h.count().to_string(),
                );
            }
            (Value::Scalar(v), Kind::Counter | Kind::Gauge) => {
                line(out, fam.name, "", &s.labels, None, &number(*v));
            }
            // A value of the wrong shape for its family is a programming
            // error; dropping it keeps the exposition parseable.
            _ => debug_assert!(false, "{}: value does not match its type", fam.name),
        }
    }
}

fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let le = le.map(|v| ("le", v));
        for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le) {
            if !first {
                out.push(',');
            }
            first = false;
            debug_assert!(valid_label(k), "bad label name {k}");
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Go-style float text: `1`, `0.25`, `+Inf`, `NaN`.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes `\` and newlines.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
pub fn valid_label(n: &str) -> bool {
    let mut chars = n.chars();
    !n.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::super::LocalHistogram;
    use super::*;

    #[test]
    fn scalars_with_help_type_and_escaped_labels() {
        let mut f = Families::default();
        f.scalar(
            "hearth_x_total",
            "Things.\nMore \\ text",
            Kind::Counter,
            vec![("route", "/a/{b}".into()), ("odd", "q\"\\\n".into())],
            3.0,
        );
        f.scalar("hearth_g", "A gauge.", Kind::Gauge, vec![], 0.5);
        let text = encode(&f);
        assert_eq!(
            text,
            "# HELP hearth_x_total Things.\\nMore \\\\ text\n\
             # TYPE hearth_x_total counter\n\
             hearth_x_total{route=\"/a/{b}\",odd=\"q\\\"\\\\\\n\"} 3\n\
             # HELP hearth_g A gauge.\n\
             # TYPE hearth_g gauge\n\
             hearth_g 0.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let mut h = LocalHistogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        let mut f = Families::default();
        f.family("hearth_h_seconds", "Latency.", Kind::Histogram)
            .samples
            .push(Sample {
                labels: vec![("m", "GET".into())],
                value: Value::Histogram(h.snapshot()),
            });
        let text = encode(&f);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2..],
            [
                "hearth_h_seconds_bucket{m=\"GET\",le=\"0.1\"} 1",
                "hearth_h_seconds_bucket{m=\"GET\",le=\"1\"} 2",
                "hearth_h_seconds_bucket{m=\"GET\",le=\"+Inf\"} 3",
                "hearth_h_seconds_sum{m=\"GET\"} 7.55",
                "hearth_h_seconds_count{m=\"GET\"} 3",
            ]
        );
    }

    #[test]
    fn numbers_and_names() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.0025), "0.0025");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1e21), "1000000000000000000000");
        assert!(valid_name("hearth_a:b_1"));
        assert!(!valid_name("1a") && !valid_name("a-b") && !valid_name(""));
        assert!(valid_label("route") && !valid_label("__x") && !valid_label("a.b"));
    }

    #[test]
    fn series_are_sorted_by_labels() {
        let mut f = Families::default();
        for r in ["b", "a"] {
            f.scalar("c", "c", Kind::Gauge, vec![("r", r.into())], 1.0);
        }
        let text = encode(&f);
        assert!(text.find("r=\"a\"").unwrap() < text.find("r=\"b\"").unwrap());
    }
}
