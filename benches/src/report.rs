//! Benchmark results as a table or as `{"metrics": [...]}` JSON.

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    /// Name, as `ray microbenchmark` names the same workload.
    pub name: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: String,
}

/// The metrics of one run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// Every figure, in the order measured.
    pub metrics: Vec<Metric>,
}

impl Report {
    /// Records a figure.
    pub fn push(&mut self, name: &str, value: f64, unit: &str) {
        tracing_free_log(name, value, unit);
        self.metrics.push(Metric {
            name: name.into(),
            value,
            unit: unit.into(),
        });
    }

    /// `{"metrics": [{"name": ..., "value": ..., "unit": ...}, ...]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// An aligned text table.
    pub fn to_table(&self) -> String {
        let w = self.metrics.iter().map(|m| m.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for m in &self.metrics {
            let v = if m.value >= 100.0 {
                format!("{:.0}", m.value)
            } else {
                format!("{:.2}", m.value)
            };
            out += &format!("{:<w$}  {:>12}  {}\n", m.name, v, m.unit);
        }
        out
    }
}

/// Progress goes to stderr so that `--json` output stays one clean object.
fn tracing_free_log(name: &str, value: f64, unit: &str) {
    eprintln!("  measured {name}: {value:.2} {unit}");
}
