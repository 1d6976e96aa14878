//! Merging the Prometheus text expositions of several processes into one valid exposition.
//!
//! The text format (<https://prometheus.io/docs/instrumenting/exposition_formats/>) allows one
//! `HELP` and one `TYPE` line per metric family, and a family's samples must follow its `TYPE`
//! line as one group. Concatenating two workers' outputs breaks both rules (Prometheus refuses
//! the scrape with "second TYPE line for metric name"), so [`merge`] parses each text into
//! families and renders every family once, with every source's samples under it. Series stay
//! unique through the `worker` label, which is added to a worker's samples that lack it.
//! Histograms merge as they are (summaries would not add up across workers; the workers render
//! real histograms).
//!
//! Pure: no I/O, no clock. [`parse`] is strict (it refuses what Prometheus refuses), so a test
//! can parse a merged text back and know it is valid.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use thiserror::Error;

/// A metric family's type, from its `TYPE` line (`untyped` when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }

    /// Whether a sample called `sample` belongs to a family of this kind called `family`.
    fn owns(self, family: &str, sample: &str) -> bool {
        if sample == family {
            return true;
        }
        let Some(suffix) = sample.strip_prefix(family) else { return false };
        match self {
            Kind::Histogram => matches!(suffix, "_bucket" | "_sum" | "_count"),
            Kind::Summary => matches!(suffix, "_sum" | "_count"),
            _ => false,
        }
    }
}

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Label pairs in their order on the line (values unescaped).
    pub labels: Vec<(String, String)>,
    /// The value as written (a float, `+Inf`, `-Inf` or `NaN`).
    pub value: String,
    pub timestamp: Option<String>,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value as a number (`+Inf`, `NaN`... included).
    pub fn number(&self) -> f64 {
        parse_value(&self.value).unwrap_or(f64::NAN)
    }

    /// Identity of the series: its name and its labels in a canonical order.
    fn key(&self) -> String {
        let mut labels: Vec<_> = self.labels.iter().collect();
        labels.sort();
        let mut k = self.name.clone();
        for (n, v) in labels {
            let _ = write!(k, "\u{0}{n}\u{0}{v}");
        }
        k
    }
}

/// A metric family: its `HELP`, its `TYPE` and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// Why a text is not a valid exposition.
#[derive(Debug, Error, PartialEq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses an exposition, refusing what Prometheus refuses: a second `HELP` or `TYPE` for a
/// family, a `TYPE` after the family's samples, a family's samples split by another family,
/// a duplicate series, and malformed lines.
pub fn parse(text: &str) -> Result<Vec<Family>, ParseError> {
    let mut families: Vec<Family> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    // Whether the family's TYPE line was seen (an untyped family has none).
    let mut typed: Vec<bool> = Vec::new();
    let mut current: Option<usize> = None;
    let mut series: HashSet<String> = HashSet::new();

    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let err = |message: String| ParseError { line, message };
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        if let Some(rest) = l.strip_prefix('#') {
            let rest = rest.trim_start();
            let (keyword, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let rest = rest.trim_start();
            let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?} in {keyword} line")));
            }
            let i = match index.get(name) {
                Some(&i) => {
                    if current != Some(i) {
                        return Err(err(format!(
                            "{keyword} for {name} after another family: its lines must be together"
                        )));
                    }
                    i
                }
                None => {
                    families.push(Family { name: name.to_owned(), help: None, kind: Kind::Untyped, samples: vec![] });
                    typed.push(false);
                    index.insert(name.to_owned(), families.len() - 1);
                    families.len() - 1
                }
            };
            current = Some(i);
            let f = &mut families[i];
            if keyword == "HELP" {
                if f.help.is_some() {
                    return Err(err(format!("second HELP line for metric name {name}")));
                }
                f.help = Some(arg.to_owned());
            } else {
                if typed[i] {
                    return Err(err(format!("second TYPE line for metric name {name}")));
                }
                if !f.samples.is_empty() {
                    return Err(err(format!("TYPE line for {name} after its samples")));
                }
                f.kind = Kind::parse(arg.trim()).ok_or_else(|| err(format!("unknown type {arg:?} for {name}")))?;
                typed[i] = true;
            }
            continue;
        }
        let sample = parse_sample(l).map_err(err)?;
        let owner = match current {
            Some(i) if families[i].kind.owns(&families[i].name, &sample.name) => i,
            _ => match family_of(&families, &index, &sample.name) {
                Some(i) => {
                    if current != Some(i) {
                        return Err(err(format!(
                            "samples of {} are split by another family: a family's lines must be together",
                            families[i].name
                        )));
                    }
                    i
                }
                None => {
                    families.push(Family {
                        name: sample.name.clone(),
                        help: None,
                        kind: Kind::Untyped,
                        samples: vec![],
                    });
                    typed.push(false);
                    index.insert(sample.name.clone(), families.len() - 1);
                    families.len() - 1
                }
            },
        };
        if !series.insert(sample.key()) {
            return Err(err(format!("duplicate series {}", render_sample_line(&sample).trim_end())));
        }
        current = Some(owner);
        families[owner].samples.push(sample);
    }
    Ok(families)
}

/// The family a sample name belongs to, if one was declared (`x_bucket` belongs to histogram `x`).
fn family_of(families: &[Family], index: &HashMap<String, usize>, sample: &str) -> Option<usize> {
    if let Some(&i) = index.get(sample) {
        return Some(i);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && let Some(&i) = index.get(base)
            && families[i].kind.owns(base, sample)
        {
            return Some(i);
        }
    }
    None
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok().filter(|_| s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| c == '{' || c.is_ascii_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // Skip blanks, then either `}` or `name="value"`.
            while chars.next_if(|(_, c)| c.is_ascii_whitespace()).is_some() {}
            match chars.peek() {
                Some(&(i, '}')) => {
                    end = i + 1;
                    break;
                }
                None => return Err("unterminated label set".into()),
                _ => {}
            }
            let mut lname = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_ascii_whitespace()) {
                lname.push(c);
            }
            while chars.next_if(|(_, c)| c.is_ascii_whitespace()).is_some() {}
            if !is_label_name(&lname) || chars.next().map(|(_, c)| c) != Some('=') {
                return Err(format!("bad label {lname:?}"));
            }
            while chars.next_if(|(_, c)| c.is_ascii_whitespace()).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {lname} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err(format!("bad escape in label {lname}")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated value of label {lname}")),
                }
            }
            if labels.iter().any(|(k, _)| *k == lname) {
                return Err(format!("label {lname} given twice"));
            }
            labels.push((lname, value));
            while chars.next_if(|(_, c)| c.is_ascii_whitespace()).is_some() {}
            match chars.peek() {
                Some(&(_, ',')) => {
                    chars.next();
                }
                Some(&(_, '}')) => {}
                _ => return Err("expected , or } in label set".into()),
            }
        }
        rest = &body[end..];
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("sample has no value")?;
    if parse_value(value).is_none() {
        return Err(format!("bad value {value:?}"));
    }
    let timestamp = fields.next().map(str::to_owned);
    if let Some(t) = &timestamp
        && t.parse::<i64>().is_err()
    {
        return Err(format!("bad timestamp {t:?}"));
    }
    if fields.next().is_some() {
        return Err("trailing text after the sample".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value: value.to_owned(), timestamp })
}

/// One process's exposition and the `worker` label its series carry (`None` for processes
/// that are not a worker, such as the supervisor).
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub worker: Option<String>,
    pub text: &'a str,
}

/// The merged exposition and what was left out of it.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub text: String,
    /// One line per source, family or series left out (invalid text, a type that disagrees
    /// with the first source's, a series two sources both have).
    pub problems: Vec<String>,
}

/// Merges several expositions into one: one `HELP`/`TYPE` per family, in the order families
/// are first seen, with every source's samples, in source order.
pub fn merge(sources: &[Source<'_>]) -> Merged {
    let mut out: Vec<Family> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut series: HashSet<String> = HashSet::new();
    let mut problems = Vec::new();
    for src in sources {
        let who = src.worker.as_deref().map_or_else(|| "supervisor".to_owned(), |w| format!("worker {w}"));
        let families = match parse(src.text) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{who}: invalid exposition, left out: {e}"));
                continue;
            }
        };
        for fam in families {
            let i = match index.get(&fam.name) {
                Some(&i) => i,
                None => {
                    out.push(Family { samples: vec![], ..fam.clone() });
                    index.insert(fam.name.clone(), out.len() - 1);
                    out.len() - 1
                }
            };
            let target = &mut out[i];
            if target.kind != fam.kind {
                problems.push(format!(
                    "{who}: {} is a {} here but a {} before, left out",
                    fam.name,
                    fam.kind.as_str(),
                    target.kind.as_str()
                ));
                continue;
            }
            if target.help.is_none() {
                target.help = fam.help;
            }
            for mut s in fam.samples {
                if let Some(w) = &src.worker
                    && s.label("worker").is_none()
                {
                    s.labels.insert(0, ("worker".to_owned(), w.clone()));
                }
                if series.insert(s.key()) {
                    target.samples.push(s);
                } else {
                    problems.push(format!("{who}: duplicate series {}", render_sample_line(&s).trim_end()));
                }
            }
        }
    }
    Merged { text: render(&out), problems }
}

/// Renders families as an exposition.
pub fn render(families: &[Family]) -> String {
    let mut text = String::new();
    for f in families {
        if let Some(help) = &f.help {
            let _ = writeln!(text, "# HELP {} {}", f.name, help);
        }
        let _ = writeln!(text, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            text.push_str(&render_sample_line(s));
        }
    }
    text
}

fn render_sample_line(s: &Sample) -> String {
    let mut line = s.name.clone();
    if !s.labels.is_empty() {
        line.push('{');
        for (i, (k, v)) in s.labels.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(line, "{k}=\"{v}\"");
        }
        line.push('}');
    }
    let _ = write!(line, " {}", s.value);
    if let Some(t) = &s.timestamp {
        let _ = write!(line, " {t}");
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What metrics-exporter-prometheus renders for one worker (labels as the recorder's
    /// global label puts them).
    fn worker_text(w: u32, conns: u32, deliveries: u32) -> String {
        format!(
            "# HELP switchboard_connections Open WebSocket connections.\n\
             # TYPE switchboard_connections gauge\n\
             switchboard_connections{{worker=\"{w}\"}} {conns}\n\
             \n\
             # TYPE switchboard_drops_total counter\n\
             switchboard_drops_total{{reason=\"queue_full\",worker=\"{w}\"}} 3\n\
             switchboard_drops_total{{reason=\"closed\",worker=\"{w}\"}} 1\n\
             \n\
             # HELP switchboard_delivery_latency_seconds Envelope ts to socket write.\n\
             # TYPE switchboard_delivery_latency_seconds histogram\n\
             switchboard_delivery_latency_seconds_bucket{{worker=\"{w}\",le=\"0.001\"}} {deliveries}\n\
             switchboard_delivery_latency_seconds_bucket{{worker=\"{w}\",le=\"0.01\"}} {deliveries}\n\
             switchboard_delivery_latency_seconds_bucket{{worker=\"{w}\",le=\"+Inf\"}} {deliveries}\n\
             switchboard_delivery_latency_seconds_sum{{worker=\"{w}\"}} 0.0125\n\
             switchboard_delivery_latency_seconds_count{{worker=\"{w}\"}} {deliveries}\n"
        )
    }

    #[test]
    fn concatenation_is_refused_and_merge_fixes_it() {
        let (a, b) = (worker_text(0, 5, 10), worker_text(1, 7, 20));
        let naive = format!("{a}{b}");
        let e = parse(&naive).unwrap_err();
        assert!(e.message.contains("connections"), "{e}");

        let m = merge(&[Source { worker: Some("0".into()), text: &a }, Source { worker: Some("1".into()), text: &b }]);
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        // One TYPE (and at most one HELP) line per family.
        for fam in ["switchboard_connections", "switchboard_drops_total", "switchboard_delivery_latency_seconds"] {
            assert_eq!(m.text.matches(&format!("# TYPE {fam} ")).count(), 1, "{}", m.text);
            assert!(m.text.matches(&format!("# HELP {fam} ")).count() <= 1);
        }
        // Parse back: valid, every series kept.
        let fams = parse(&m.text).unwrap();
        assert_eq!(fams.len(), 3);
        let by = |n: &str| fams.iter().find(|f| f.name == n).unwrap();
        let conns = by("switchboard_connections");
        assert_eq!(conns.kind, Kind::Gauge);
        assert_eq!(conns.samples.iter().map(|s| s.number()).sum::<f64>(), 12.0);
        assert_eq!(by("switchboard_drops_total").samples.len(), 4);
        let h = by("switchboard_delivery_latency_seconds");
        assert_eq!(h.kind, Kind::Histogram);
        assert_eq!(h.samples.len(), 10);
        // Histograms add up across workers: the +Inf buckets sum to the total count.
        let inf: f64 = h.samples.iter().filter(|s| s.label("le") == Some("+Inf")).map(Sample::number).sum();
        assert_eq!(inf, 30.0);
        let workers: HashSet<_> = h.samples.iter().filter_map(|s| s.label("worker")).collect();
        assert_eq!(workers, HashSet::from(["0", "1"]));
    }

    #[test]
    fn worker_label_is_added_where_missing_and_supervisor_series_kept() {
        let w = "# TYPE switchboard_connections gauge\nswitchboard_connections 4\n";
        let sup = "# HELP switchboard_workers Workers.\n# TYPE switchboard_workers gauge\nswitchboard_workers 2\n\
                   # TYPE switchboard_worker_restarts_total counter\n\
                   switchboard_worker_restarts_total{worker=\"0\"} 1\n";
        let m = merge(&[
            Source { worker: None, text: sup },
            Source { worker: Some("0".into()), text: w },
            Source { worker: Some("1".into()), text: w },
        ]);
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        let fams = parse(&m.text).unwrap();
        let conns = fams.iter().find(|f| f.name == "switchboard_connections").unwrap();
        let ws: Vec<_> = conns.samples.iter().map(|s| s.label("worker").unwrap()).collect();
        assert_eq!(ws, ["0", "1"]);
        assert!(m.text.contains("switchboard_workers 2\n"));
        assert!(m.text.contains("switchboard_worker_restarts_total{worker=\"0\"} 1\n"));
    }

    #[test]
    fn conflicts_and_invalid_sources_are_left_out_not_fatal() {
        let a = "# TYPE x_total counter\nx_total{worker=\"0\"} 1\n";
        let gauge = "# TYPE x_total gauge\nx_total{worker=\"1\"} 1\n";
        let dup = "# TYPE x_total counter\nx_total{worker=\"0\"} 9\n";
        let broken = "x_total{worker=\"3\" 1\n";
        let m = merge(&[
            Source { worker: Some("0".into()), text: a },
            Source { worker: Some("1".into()), text: gauge },
            Source { worker: Some("2".into()), text: dup },
            Source { worker: Some("3".into()), text: broken },
        ]);
        assert_eq!(m.problems.len(), 3, "{:?}", m.problems);
        assert_eq!(m.text, "# TYPE x_total counter\nx_total{worker=\"0\"} 1\n");
        parse(&m.text).unwrap();
    }

    #[test]
    fn parser_refuses_what_prometheus_refuses() {
        let bad = [
            ("# TYPE a gauge\n# TYPE a gauge\na 1\n", "second TYPE"),
            ("# HELP a x\n# HELP a y\n", "second HELP"),
            ("a 1\n# TYPE a gauge\n", "after"),
            ("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n", "split"),
            ("a{x=\"1\"} 1\na{x=\"1\"} 2\n", "duplicate"),
            ("a{x=\"1} 1\n", "unterminated"),
            ("a one\n", "bad value"),
            ("# TYPE a gauges\n", "unknown type"),
        ];
        for (text, want) in bad {
            let e = parse(text).unwrap_err();
            assert!(e.message.contains(want), "{text:?}: {e}");
        }
        let ok = "# HELP h A \\\"quoted\\\" help.\n# TYPE h histogram\n\
                  h_bucket{le=\"+Inf\",path=\"a\\\"b\\\\c\\nd\"} 1 1700000000000\nh_sum 0.5\nh_count 1\n";
        let fams = parse(ok).unwrap();
        assert_eq!(fams[0].samples[0].label("path"), Some("a\"b\\c\nd"));
        // Render escapes again, so the text survives a round trip.
        assert_eq!(parse(&render(&fams)).unwrap(), fams);
    }
}
