//! Reading YAML into Warden's types with errors an operator can act on: the input, the
//! field path and the problem with its line and column, on one line. Parsing is pure
//! safe Rust (serde-saphyr) with its default budgets against alias bombs and deep nesting.

use std::fmt;

use serde::de::DeserializeOwned;

/// A YAML input that does not fit the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// What was read, e.g. a file name.
    pub source: String,
    /// The path of the offending field, e.g. `timeouts.detect` (empty at the top).
    pub field: String,
    /// The problem, with its line and column when known.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: field {}: {}", self.source, self.field, self.message)
        }
    }
}

impl std::error::Error for YamlError {}

/// Parses one YAML document; `source` names it in errors.
pub fn from_str<T: DeserializeOwned>(text: &str, source: &str) -> Result<T, YamlError> {
    let mut options = serde_saphyr::options::Options::default();
    options.with_snippet = false; // one line; the field path and location say where
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| YamlError {
        source: source.to_string(),
        field,
        message: first_line(&e.to_string()),
    })
}

/// The first line of a parser message, without a leading "error: ".
fn first_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
    }

    #[test]
    fn errors_name_the_source_field_and_location() {
        let cases = [
            (
                "name: a\ninner: [{port: 70000}]",
                "f.yaml: field inner[0].port: ",
            ),
            (
                "name: a\ninner: [{port: 1, extra: 2}]",
                "f.yaml: field inner[0].extra: unknown field `extra`",
            ),
            ("inner: []", "f.yaml: "),
            ("name: [unclosed", "f.yaml: "),
        ];
        for (text, prefix) in cases {
            let err = from_str::<Outer>(text, "f.yaml").unwrap_err().to_string();
            assert!(err.starts_with(prefix), "{text:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
        let err = from_str::<Outer>("name: a\ninner: [{port: 70000}]", "f.yaml").unwrap_err();
        assert!(err.message.contains("line 2"), "{err}");
        assert_eq!(
            from_str::<Outer>("name: a", "f").unwrap(),
            Outer {
                name: "a".into(),
                inner: vec![]
            }
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            bomb.push_str(&format!("l{i}: &l{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        bomb.push_str("name: x\n");
        #[derive(Debug, serde::Deserialize)]
        struct Any {
            #[allow(dead_code)]
            name: String,
        }
        let started = std::time::Instant::now();
        let result = from_str::<Any>(&bomb, "bomb.yaml");
        assert!(result.is_err(), "a billion-laughs document is refused");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
