//! `aether model check | diagram | convert`: EventStorming models, no server needed.

use aether_model::{Format, Model};
use serde_json::json;

use crate::cli::{DiagramFormat, ModelCommand, ModelFormat};
use crate::failure::Failure;
use crate::output::Output;

pub(crate) fn run(command: ModelCommand, out: &Output) -> Result<(), Failure> {
    match command {
        ModelCommand::Check { file } => {
            let model = load(&file)?;
            match model.validate() {
                Ok(()) => {
                    if out.json {
                        out.json_line(&json!({"file": file, "model": model.name, "valid": true, "elements": model.element_count()}));
                    } else {
                        out.line(format!(
                            "{}: model `{}` is valid ({} elements)",
                            file.display(),
                            model.name,
                            model.element_count()
                        ));
                    }
                    Ok(())
                }
                Err(e) => {
                    if out.json {
                        for p in &e.problems {
                            out.json_line(&json!({"path": p.path, "problem": p.kind.to_string()}));
                        }
                    } else {
                        out.line(format!("{}: {e}", file.display()));
                    }
                    Err(Failure::Problems(format!(
                        "{}: {} problems",
                        file.display(),
                        e.problems.len()
                    )))
                }
            }
        }
        ModelCommand::Diagram { file, format } => {
            let model = load(&file)?;
            let text = match format {
                DiagramFormat::Mermaid => model.to_mermaid(),
                DiagramFormat::Dot => model.to_dot(),
            };
            print!("{text}");
            Ok(())
        }
        ModelCommand::Convert { file, format } => {
            let model = load(&file)?;
            let to = match format {
                ModelFormat::Yaml => Format::Yaml,
                ModelFormat::Json => Format::Json,
                ModelFormat::Toml => Format::Toml,
            };
            let text = model
                .to_text(to)
                .map_err(|e| Failure::Input(format!("{}: {e}", file.display())))?;
            print!("{text}");
            Ok(())
        }
    }
}

fn load(file: &std::path::Path) -> Result<Model, Failure> {
    Model::load(file).map_err(|e| Failure::Input(e.to_string()))
}
