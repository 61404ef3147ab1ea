//! Loading models from YAML, JSON and TOML (each behind its cargo feature), with errors that
//! name the file, the line and column, and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::model::Model;

/// A model file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// YAML (`.yaml`, `.yml`; feature `yaml`).
    Yaml,
    /// JSON (`.json`; feature `json`).
    Json,
    /// TOML (`.toml`; feature `toml`).
    Toml,
}

impl Format {
    /// The format a file's extension names.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
            Format::Toml => "TOML",
        })
    }
}

/// Where in a file a parse error is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// The file, when the model came from one.
    pub file: Option<PathBuf>,
    /// 1-based line, when the parser reports it.
    pub line: Option<usize>,
    /// 1-based column, when the parser reports it.
    pub column: Option<usize>,
    /// The path of the field being read, e.g. `contexts[0].aggregates[1].name` (`.` when
    /// the error is not inside a field).
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => f.write_str("<input>")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, " (field `{}`)", self.field)
    }
}

/// Loading a model failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading model file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file's extension is not `.yaml`, `.yml`, `.json` or `.toml`.
    #[error("{}: unknown model format (use .yaml, .yml, .json or .toml)", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// Support for the format was not compiled in.
    #[error("{format} models need the `{feature}` feature of aether-model")]
    FormatDisabled {
        /// The format.
        format: Format,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The model could not be written in this format.
    #[error("writing the model as {format}: {message}")]
    Write {
        /// The format.
        format: Format,
        /// What the serializer said.
        message: String,
    },
    /// The text is not a valid model.
    #[error("{location}: {message}")]
    Parse {
        /// The format.
        format: Format,
        /// Where.
        location: Location,
        /// What the parser said.
        message: String,
    },
}

impl LoadError {
    /// Where the parse error is, if it is one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            LoadError::Parse { location, .. } => Some(location),
            _ => None,
        }
    }
}

impl Model {
    /// Reads a model file; the format comes from the extension.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, LoadError> {
        let path = path.as_ref();
        let format = Format::from_path(path).ok_or_else(|| LoadError::UnknownFormat {
            path: path.to_owned(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        parse(&text, format).map_err(|mut e| {
            if let LoadError::Parse { location, .. } = &mut e {
                location.file = Some(path.to_owned());
            }
            e
        })
    }

    /// Parses a model from text in `format`.
    pub fn parse(text: &str, format: Format) -> Result<Model, LoadError> {
        parse(text, format)
    }

    /// The model as text in `format` (for converting between formats).
    pub fn to_text(&self, format: Format) -> Result<String, LoadError> {
        #[allow(unused_variables)] // unused when no format feature is enabled
        let failed = |message: String| LoadError::Write { format, message };
        match format {
            #[cfg(feature = "yaml")]
            Format::Yaml => serde_norway::to_string(self).map_err(|e| failed(e.to_string())),
            #[cfg(feature = "json")]
            Format::Json => serde_json::to_string_pretty(self).map_err(|e| failed(e.to_string())),
            #[cfg(feature = "toml")]
            Format::Toml => toml::to_string(self).map_err(|e| failed(e.to_string())),
            #[allow(unreachable_patterns)]
            other => Err(disabled(other)),
        }
    }
}

fn disabled(format: Format) -> LoadError {
    LoadError::FormatDisabled {
        format,
        feature: match format {
            Format::Yaml => "yaml",
            Format::Json => "json",
            Format::Toml => "toml",
        },
    }
}

/// Builds a parse error from serde_path_to_error's path and the parser's own position.
#[allow(dead_code)] // unused when no format feature is enabled
fn parse_error(
    format: Format,
    field: String,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
) -> LoadError {
    LoadError::Parse {
        format,
        location: Location {
            file: None,
            line,
            column,
            field: if field.is_empty() {
                ".".to_owned()
            } else {
                field
            },
        },
        message,
    }
}

#[allow(unused_variables)] // `text` is unused when no format feature is enabled
fn parse(text: &str, format: Format) -> Result<Model, LoadError> {
    match format {
        #[cfg(feature = "yaml")]
        Format::Yaml => {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let at = inner.location();
                parse_error(
                    format,
                    field,
                    at.as_ref().map(|l| l.line()),
                    at.as_ref().map(|l| l.column()),
                    inner.to_string(),
                )
            })
        }
        #[cfg(feature = "json")]
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                parse_error(
                    format,
                    field,
                    Some(inner.line()),
                    Some(inner.column()),
                    inner.to_string(),
                )
            })
        }
        #[cfg(feature = "toml")]
        Format::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, None, &e))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                toml_error(text, Some(field), e.inner())
            })
        }
        #[allow(unreachable_patterns)]
        other => Err(disabled(other)),
    }
}

#[cfg(feature = "toml")]
fn toml_error(text: &str, field: Option<String>, e: &toml::de::Error) -> LoadError {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    parse_error(
        Format::Toml,
        field.unwrap_or_default(),
        line,
        column,
        e.message().to_owned(),
    )
}
