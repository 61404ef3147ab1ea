//! Check and draw EventStorming models from the shell.
//!
//! ```text
//! cargo run -p aether-model --example model -- check FILE
//! cargo run -p aether-model --example model -- diagram FILE --format mermaid|dot
//! cargo run -p aether-model --example model -- convert FILE --format yaml|json|toml
//! ```
//! (`cargo xtask model ...` runs the same.) Exit status: 0 when fine, 1 when the model has
//! problems, 2 for bad usage or an unreadable file.

use std::process::ExitCode;

use aether_model::{Format, Model};

const USAGE: &str = "usage: model check FILE | model diagram FILE --format mermaid|dot | model convert FILE --format yaml|json|toml";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let format = args
        .iter()
        .position(|a| a == "--format")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let (Some(command), Some(file)) = (args.first(), args.get(1)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let model = match Model::load(file) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match (command.as_str(), format) {
        ("check", _) => match model.validate() {
            Ok(()) => {
                println!(
                    "{file}: model `{}` is valid ({} elements)",
                    model.name,
                    model.element_count()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{file}: {e}");
                ExitCode::from(1)
            }
        },
        ("diagram", Some("mermaid")) => {
            print!("{}", model.to_mermaid());
            ExitCode::SUCCESS
        }
        ("diagram", Some("dot")) => {
            print!("{}", model.to_dot());
            ExitCode::SUCCESS
        }
        ("convert", Some(to)) => {
            let to = match to {
                "yaml" => Format::Yaml,
                "json" => Format::Json,
                "toml" => Format::Toml,
                other => {
                    eprintln!("unknown format {other}\n{USAGE}");
                    return ExitCode::from(2);
                }
            };
            match model.to_text(to) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
