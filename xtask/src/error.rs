//! Errors in the data files (`boards/*.toml`, `scenarios.toml`): where
//! (file, the board, scenario or entry, the field), what is wrong and how to
//! fix it. A leaf module: the board and scenario parsers, the expectation
//! types (`matcher`) and timing validation (`timing`) all report through it.

use std::fmt;

use serde::de::DeserializeOwned;

/// One problem in a data file. Shown as
/// `<file>: <context>: field `<field>`: <message>` and, on the next line,
/// `  fix: <fix>`; the parts that are `None` are left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user knows it (relative to the workspace root when
    /// inside it).
    pub file: String,
    /// Where in the file, outermost first: e.g. `scenario `x``, then
    /// `field `timing` entry 2`. Empty for a board file (one board per file).
    pub context: Vec<String>,
    pub field: Option<String>,
    pub message: String,
    pub fix: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        for c in &self.context {
            write!(f, ": {c}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// All of `errors`, one after the other (each may span two lines).
pub fn join(errors: &[ConfigError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// What is wrong and how to fix it, before it is known where: helpers that
/// check a value return this, and the caller places it with
/// [`Place::problem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub fix: String,
}

impl Problem {
    pub fn new(message: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem { message: message.into(), fix: fix.into() }
    }
}

/// Where errors are found: a file and a path inside it.
#[derive(Clone, Debug)]
pub struct Place {
    file: String,
    context: Vec<String>,
}

impl Place {
    pub fn new(file: impl Into<String>) -> Place {
        Place { file: file.into(), context: Vec::new() }
    }

    /// A place inside this one (`scenario `x``, `field `expect` entry 1`, …).
    pub fn within(&self, segment: impl Into<String>) -> Place {
        let mut p = self.clone();
        p.context.push(segment.into());
        p
    }

    fn make(&self, field: Option<&str>, message: String, fix: Option<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            context: self.context.clone(),
            field: field.map(String::from),
            message,
            fix,
        }
    }

    /// An error about this place as a whole.
    pub fn error(&self, message: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        self.make(None, message.into(), Some(fix.into()))
    }

    /// An error about one field of this place.
    pub fn field(&self, field: &str, message: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        self.make(Some(field), message.into(), Some(fix.into()))
    }

    /// An error with nothing to suggest (unreadable file, invalid TOML).
    pub fn plain(&self, message: impl Into<String>) -> ConfigError {
        self.make(None, message.into(), None)
    }

    /// `p`, placed here (on `field`, if given).
    pub fn problem(&self, field: Option<&str>, p: Problem) -> ConfigError {
        self.make(field, p.message, Some(p.fix))
    }

    /// Deserializes a TOML value into its strict (`deny_unknown_fields`)
    /// shape; serde's message (unknown or missing field, wrong type) with
    /// `fix`.
    pub fn deserialize<T: DeserializeOwned>(&self, value: toml::Value, fix: &str) -> Result<T, ConfigError> {
        T::deserialize(value).map_err(|e| self.error(e.to_string().trim_end(), fix))
    }

    /// [`Place::deserialize`] for the value of one field.
    pub fn deserialize_field<T: DeserializeOwned>(
        &self,
        field: &str,
        value: toml::Value,
        fix: &str,
    ) -> Result<T, ConfigError> {
        T::deserialize(value).map_err(|e| self.field(field, e.to_string().trim_end(), fix))
    }

    /// Parses a whole file's TOML.
    pub fn parse_toml(&self, text: &str) -> Result<toml::Table, ConfigError> {
        text.parse().map_err(|e: toml::de::Error| self.plain(format!("invalid TOML: {}", e.to_string().trim_end())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_file_context_field_message_fix() {
        let p = Place::new("scenarios.toml").within("scenario `x`");
        assert_eq!(
            p.field("end", "unknown run state \"crashed\"", "use one of: running").to_string(),
            "scenarios.toml: scenario `x`: field `end`: unknown run state \"crashed\"\n  fix: use one of: running"
        );
        let e = p.within("field `timing` entry 2").error("`from` and `to` are the same event", "measure");
        assert_eq!(
            e.to_string(),
            "scenarios.toml: scenario `x`: field `timing` entry 2: `from` and `to` are the same event\n  fix: measure"
        );
        let board = Place::new("boards/pc.toml");
        assert_eq!(
            board.field("cpu", "is empty", "remove it").to_string(),
            "boards/pc.toml: field `cpu`: is empty\n  fix: remove it"
        );
        assert_eq!(board.plain("invalid TOML: x").to_string(), "boards/pc.toml: invalid TOML: x");
        assert_eq!(join(&[board.plain("a"), board.plain("b")]), "boards/pc.toml: a\nboards/pc.toml: b");
    }
}
