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
    /// Why the workload could not be measured (`value` is then NaN, `null`
    /// in JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
            error: None,
        });
    }

    /// Records a workload that failed, with why, so that the others of the
    /// run are still reported.
    pub fn push_failed(&mut self, name: &str, unit: &str, error: &str) {
        eprintln!("  FAILED {name}: {error}");
        self.metrics.push(Metric {
            name: name.into(),
            value: f64::NAN,
            unit: unit.into(),
            error: Some(error.into()),
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
            if let Some(e) = &m.error {
                out += &format!("{:<w$}  {:>12}  {}\n", m.name, "FAILED", e);
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_metric_is_null_with_its_error() {
        let mut r = Report::default();
        r.push("ok per second", 3.0, "ops/s");
        r.push_failed("broken seconds", "s", "the node died");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["metrics"][0]["value"], 3.0);
        assert!(json["metrics"][0].get("error").is_none());
        assert!(json["metrics"][1]["value"].is_null());
        assert_eq!(json["metrics"][1]["error"], "the node died");
        let table = r.to_table();
        assert!(table.contains("FAILED  the node died"), "{table}");
    }
}
