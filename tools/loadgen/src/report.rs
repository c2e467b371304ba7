//! The output of a run: a human-readable table on stdout, then exactly one
//! machine-readable line `RESULT {json}`.

use serde_json::{Map, Value};

/// Prefix of the machine-readable line.
pub const RESULT_PREFIX: &str = "RESULT ";

/// Results of one scenario, in the order they were added.
#[derive(Debug)]
pub struct Report {
    title: String,
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
}

impl Report {
    /// A report for `scenario`, with a human title.
    pub fn new(scenario: &str, title: impl Into<String>) -> Self {
        let mut json = Map::new();
        json.insert("scenario".into(), Value::String(scenario.into()));
        Self {
            title: title.into(),
            rows: Vec::new(),
            json,
        }
    }

    /// A value that goes both to the table (as `human`) and to the JSON.
    pub fn add(&mut self, key: &str, human: impl Into<String>, value: impl Into<Value>) {
        self.rows.push((key.replace('_', " "), human.into()));
        self.json.insert(key.into(), value.into());
    }

    /// A value for the JSON only.
    pub fn json(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.into(), value.into());
    }

    /// A number for both, shown with `decimals` decimals and an optional unit.
    pub fn num(&mut self, key: &str, value: f64, decimals: usize, unit: &str) {
        let human = if unit.is_empty() {
            format!("{value:.decimals$}")
        } else {
            format!("{value:.decimals$} {unit}")
        };
        let rounded = (value * 10f64.powi(decimals as i32)).round() / 10f64.powi(decimals as i32);
        self.add(key, human, rounded);
    }

    /// A count for both.
    pub fn count(&mut self, key: &str, value: u64) {
        self.add(key, value.to_string(), value);
    }

    /// Look a JSON value up (for exit-status decisions).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key)
    }

    /// Print the table, then the `RESULT` line.
    pub fn print(&self) {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!();
        println!("== {} ==", self.title);
        for (k, v) in &self.rows {
            println!("  {k:<width$}  {v}");
        }
        println!("{RESULT_PREFIX}{}", Value::Object(self.json.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_every_value() {
        let mut r = Report::new("fanout", "t");
        r.count("lost", 0);
        r.num("deliveries_per_sec", 1234.567, 1, "/s");
        r.json("extra", "x");
        assert_eq!(r.get("lost"), Some(&Value::from(0)));
        assert_eq!(r.get("deliveries_per_sec"), Some(&Value::from(1234.6)));
        assert_eq!(r.get("scenario"), Some(&Value::from("fanout")));
    }
}
