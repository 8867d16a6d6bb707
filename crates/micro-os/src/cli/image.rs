use std::io::{BufRead, BufReader, IsTerminal};

use indicatif::{ProgressBar, ProgressStyle};
use micro_os_api::types::{ImageBuild, ImageEvent, ImageImport, ImageInfo};
use micro_os_core::{Size, Template};

use super::args::{ImageCmd, TemplateCmd};
use super::client::{exit, seg, CliError, CliResult, Client};
use super::output::{ago, print, table};

/// Follows an NDJSON progress stream with a progress bar (plain lines when not a terminal).
fn follow(resp: ureq::Response) -> CliResult<ImageInfo> {
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::new(0);
    if tty {
        bar.set_style(
            ProgressStyle::with_template("{msg:24} [{bar:30}] {percent:>3}% {elapsed}")
                .expect("template is valid")
                .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut stage = String::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.map_err(|e| CliError::new(exit::FAILURE, format!("progress stream broke: {e}")))?;
        let ev: ImageEvent = serde_json::from_str(&line)
            .map_err(|e| CliError::new(exit::FAILURE, format!("daemon sent an invalid progress line: {e}")))?;
        match ev {
            ImageEvent::Progress { stage: s, current, total } => {
                if s != stage {
                    if !tty {
                        println!("{s} ...");
                    }
                    stage = s.clone();
                    bar.set_message(s);
                    bar.set_length(total.max(1));
                }
                bar.set_position(current);
            }
            ImageEvent::Done { image } => {
                bar.finish_and_clear();
                return Ok(image);
            }
            ImageEvent::Error { status, message } => {
                bar.finish_and_clear();
                let code = match status {
                    404 => exit::NOT_FOUND,
                    409 => exit::CONFLICT,
                    400 => exit::USAGE,
                    _ => exit::FAILURE,
                };
                return Err(CliError::new(code, message));
            }
        }
    }
    bar.finish_and_clear();
    Err(CliError::new(exit::FAILURE, "the daemon ended the stream without a result"))
}

fn images_table(v: &[ImageInfo]) -> String {
    table(
        &["NAME", "ID", "SIZE", "LAYERS", "CREATED", "SOURCE"],
        v.iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.id.chars().take(12).collect(),
                    Size(i.size_bytes).to_string(),
                    i.layers.to_string(),
                    ago(i.created_at),
                    i.source.clone(),
                ]
            })
            .collect(),
    )
}

pub fn run(client: &Client, cmd: ImageCmd) -> CliResult<i32> {
    match cmd {
        ImageCmd::Ls { format } => {
            let v: Vec<ImageInfo> = client.call("GET", "/images", None::<&()>)?;
            print(format, &v, |v| images_table(v))?;
        }
        ImageCmd::Build { base, from_dir, name } => {
            let from_dir = from_dir
                .map(|d| {
                    std::fs::canonicalize(&d).map(|p| p.display().to_string()).map_err(|e| {
                        CliError::new(exit::NOT_FOUND, format!("directory {} cannot be opened: {e}", d.display()))
                    })
                })
                .transpose()?;
            let body = serde_json::to_value(ImageBuild { base, from_dir, name }).expect("serialises");
            let img = follow(client.raw("POST", "/images/build", Some(&body))?)?;
            println!("built {} ({}, {})", img.name, &img.id[..12.min(img.id.len())], Size(img.size_bytes));
        }
        ImageCmd::Import { file, name } => {
            let abs = std::fs::canonicalize(&file).map_err(|e| {
                CliError::new(exit::NOT_FOUND, format!("file {} cannot be opened: {e}", file.display()))
            })?;
            let body = serde_json::to_value(ImageImport { path: abs.display().to_string(), name }).expect("serialises");
            let img = follow(client.raw("POST", "/images/import", Some(&body))?)?;
            println!("imported {} ({} layers, {})", img.name, img.layers, Size(img.size_bytes));
        }
        ImageCmd::Rm { name } => {
            client.call_empty("DELETE", &format!("/images/{}", seg(&name)))?;
            println!("{name} removed");
        }
    }
    Ok(0)
}

pub fn run_template(client: &Client, cmd: TemplateCmd) -> CliResult<i32> {
    match cmd {
        TemplateCmd::Ls { format } => {
            let v: Vec<Template> = client.call("GET", "/templates", None::<&()>)?;
            print(format, &v, |v| {
                table(
                    &["NAME", "WORKLOAD", "IMAGE", "SOURCE", "DESCRIPTION"],
                    v.iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                format!("{:?}", t.workload).to_lowercase(),
                                t.image.clone(),
                                t.source.clone(),
                                t.description.clone(),
                            ]
                        })
                        .collect(),
                )
            })?;
        }
        TemplateCmd::Inspect { name, format } => {
            let t: Template = client.call("GET", &format!("/templates/{}", seg(&name)), None::<&()>)?;
            print(format, &t, |t| serde_json::to_string_pretty(t).unwrap_or_default())?;
        }
    }
    Ok(0)
}
