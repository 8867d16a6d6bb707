use std::io::{BufRead, BufReader, IsTerminal};

use indicatif::{ProgressBar, ProgressStyle};
use micro_os_api::types::{ImageBuild, ImageEvent, ImageInfo};
use micro_os_core::{Size, Template};

use super::args::{ImageCmd, TemplateCmd};
use super::client::{exit, query, seg, CliError, CliResult, Client};
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

/// Refuses a name an image already has before uploading anything: the daemon checks too,
/// but an answer given before the body is read can be lost while the client still sends.
fn name_free(client: &Client, name: Option<&str>) -> CliResult<()> {
    let Some(name) = name else { return Ok(()) };
    let v: Vec<ImageInfo> = client.call("GET", "/images", None::<&()>)?;
    match v.iter().any(|i| i.name == name) {
        true => Err(CliError::new(
            exit::CONFLICT,
            format!("image {name:?} already exists (remove it first with `micro-os image rm {name}`)"),
        )),
        false => Ok(()),
    }
}

pub fn run(client: &Client, cmd: ImageCmd) -> CliResult<i32> {
    match cmd {
        ImageCmd::Ls { format } => {
            let v: Vec<ImageInfo> = client.call("GET", "/images", None::<&()>)?;
            print(format, &v, |v| images_table(v))?;
        }
        ImageCmd::Build { from_dir: Some(dir), name, .. } => {
            // the directory is tarred here and uploaded as a root filesystem tarball: the
            // daemon reads only what this client could read
            let body = super::upload::tar_dir(&dir)?;
            name_free(client, name.as_deref())?;
            let q = query(&[("name", name), ("source", Some(body.name.clone()))]);
            let img = follow(client.upload("POST", &format!("/images/import{q}"), body)?)?;
            println!("built {} ({}, {})", img.name, &img.id[..12.min(img.id.len())], Size(img.size_bytes));
        }
        ImageCmd::Build { base, from_dir: None, name } => {
            let body = serde_json::to_value(ImageBuild { base, name }).expect("serialises");
            let img = follow(client.raw("POST", "/images/build", Some(&body))?)?;
            println!("built {} ({}, {})", img.name, &img.id[..12.min(img.id.len())], Size(img.size_bytes));
        }
        ImageCmd::Import { file, name } => {
            // a file as it is; a directory (an OCI image layout) tarred on the fly
            let body = match std::fs::metadata(&file) {
                Ok(m) if m.is_dir() => super::upload::tar_dir(&file)?,
                _ => super::upload::file(&file)?,
            };
            name_free(client, name.as_deref())?;
            let q = query(&[("name", name), ("source", Some(body.name.clone()))]);
            let img = follow(client.upload("POST", &format!("/images/import{q}"), body)?)?;
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
